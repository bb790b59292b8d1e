"""What the graph editor shows about an adapter file, read from its safetensors header alone.

``resolve_adapter_file`` turns a name from the UI into a file inside one of the adapter folders and refuses
anything else: ``..``, absolute paths, drive letters, and symlinks whose target lies outside the folder.
``adapter_facts`` reads only the header (``adapter.read_adapter_config``): no tensor is loaded, nothing is
unpickled. Both are host-free; ``nodes/routes.py`` serves them.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Sequence

from .adapter import FINETUNE_NAMES, AdapterError, read_adapter_config
from .families import family_title
from .variants import get_variant

EXTENSION = ".safetensors"
_DRIVE = re.compile(r"^[A-Za-z]:")


class AdapterLookupError(ValueError):
    """A name the adapter routes refuse; ``status`` is the HTTP status (400 malformed, 404 not there)."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def resolve_adapter_file(folders: Sequence[str], name: str) -> str:
    """The real path of adapter ``name`` (relative, ``/``-separated, ``.safetensors``) inside one of ``folders``.

    Raises AdapterLookupError: 400 for a name that is not a plain relative file name, 404 when no folder has
    that file or it resolves (through a symlink) to a place outside its folder."""
    name = (name or "").replace("\\", "/")
    if not name or "\x00" in name:
        raise AdapterLookupError(400, "an adapter name is required")
    if name.startswith("/") or _DRIVE.match(name):
        raise AdapterLookupError(400, f"{name!r} is an absolute path; name a file inside models/edit")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise AdapterLookupError(400, f"{name!r} leaves or skips folders; name a file inside models/edit")
    if not name.lower().endswith(EXTENSION):
        raise AdapterLookupError(400, f"{name!r} is not a {EXTENSION} file")
    for folder in folders:
        root = os.path.realpath(folder)
        real = os.path.realpath(os.path.join(root, *parts))
        if _inside(real, root) and os.path.isfile(real):
            return real
    raise AdapterLookupError(404, f"no adapter {name!r} in models/edit")


def _parameters(header: dict) -> int:
    return sum(math.prod(entry.get("shape", [])) for entry in header.values() if isinstance(entry, dict))


def adapter_facts(path: str, name: str) -> dict:
    """A JSON-ready description of the adapter at ``path`` (shown as ``name``). A file that is not a usable
    adapter gives ``valid: False`` and its ``problems`` instead of raising."""
    facts = {"name": name, "size_bytes": os.path.getsize(path)}
    try:
        config, header = read_adapter_config(path)
    except AdapterError as e:
        return {**facts, "valid": False, "problems": e.problems}
    training = config.training if isinstance(config.training, dict) else {}
    trained = training.get("stage") == "distilled"
    finetuned = sorted({key.split(".")[3] for key in header
                        if key.count(".") >= 4 and key.split(".")[3] in FINETUNE_NAMES})
    resolutions = training.get("resolutions")
    if resolutions is None and training.get("size"):
        resolutions = [training["size"]]
    return {**facts, "valid": True, "family": config.family, "family_title": family_title(config.family),
            "variant": config.variant, "variant_title": get_variant(config.variant).title, "num_blocks": config.num_blocks,
            "converted_blocks": len(config.converted_blocks), "attn2_blocks": len(config.attn2_blocks),
            "hidden_size": config.hidden_size, "num_heads": config.num_heads, "head_dim": config.head_dim,
            "reduction": config.reduction, "eta": config.eta, "trained": trained,
            "state": "trained" if trained else "untrained init",
            "steps": training.get("steps", 0) if trained else 0, "target_steps": training.get("target_steps"),
            "stopped_early": bool(training.get("stopped_early", False)), "resolutions": resolutions or [],
            "finetuned": finetuned, "parameters": _parameters(header),
            "training": json.loads(json.dumps(training, default=str))}


__all__ = ["AdapterLookupError", "resolve_adapter_file", "adapter_facts"]
