"""ComfyUI nodes of ComfyUI-EDiT (the only part of the pack that imports ComfyUI).

Node modules are imported when ComfyUI asks for the node list. A module whose optional dependency is
missing is skipped with a log line saying what to install; the others still load.
"""

from __future__ import annotations

import importlib
import logging

from comfy_api.latest import ComfyExtension, io

log = logging.getLogger("ComfyUI-EDiT")

# module → its node classes
NODE_MODULES = {
    "nodes_training_free": ("EDiTTrainingFree",),
    "nodes_adapter": ("EDiTAdapterLoader", "EDiTApply"),
    "nodes_checkpoint": ("EDiTCheckpointLoader", "EDiTCheckpointSave"),
    "tiled_diffusion": ("EDiTTiledDiffusion",),
    "nodes_distill": ("EDiTDistill",),
}
_INSTALL_HINTS = {"safetensors": "safetensors>=0.4.2", "einops": "einops"}


def _fix_for(error: ImportError) -> str:
    name = getattr(error, "name", None) or ""
    if name.startswith(__name__.rsplit(".", 1)[0]):
        return "A file of ComfyUI-EDiT is missing or out of date: reinstall or update the pack."
    top = name.split(".")[0]
    if top in ("comfy", "comfy_api", "folder_paths", "comfy_extras"):
        return "This ComfyUI is too old for ComfyUI-EDiT: update ComfyUI to 0.3.64 or newer."
    if top:
        return f"Install it with: pip install {_INSTALL_HINTS.get(top, top)}"
    return "Reinstall ComfyUI-EDiT's requirements: pip install -r requirements.txt"


def load_node_classes() -> list[type[io.ComfyNode]]:
    from .model_folder import register_model_folder

    register_model_folder()
    _register_routes()
    classes = []
    for module_name, class_names in NODE_MODULES.items():
        try:
            module = importlib.import_module(f".{module_name}", __name__)
        except ImportError as e:
            log.warning("ComfyUI-EDiT: %s disabled: %s. %s", ", ".join(class_names), e, _fix_for(e))
            continue
        except Exception:  # a broken module disables its own nodes, not the pack (nor ComfyUI's start-up)
            log.exception("ComfyUI-EDiT: %s disabled: nodes/%s.py failed to import", ", ".join(class_names),
                          module_name)
            continue
        for name in class_names:
            if hasattr(module, name):
                classes.append(getattr(module, name))
            else:
                log.error("ComfyUI-EDiT: nodes/%s.py defines no %s", module_name, name)
    return classes


def _register_routes() -> None:
    """The graph editor's routes (nodes/routes.py); a failure costs only the editor's extras, never the nodes."""
    try:
        from .routes import register_routes

        register_routes()
    except Exception:  # noqa: BLE001
        log.exception("ComfyUI-EDiT: the graph editor's routes (/edit/...) are disabled")


class EDiTExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return load_node_classes()
