"""The pack's HTTP routes on ComfyUI's server, for the graph editor (``web/edit.js``).

- ``GET /edit/adapters``: every adapter in ``models/edit`` with its facts (``edit_core.adapter_info``).
- ``GET /edit/adapters/{name}``: one adapter's facts; ``name`` is relative to ``models/edit``. A name that
  leaves the folder (``..``, an absolute path, a symlink pointing outside) is refused with 400/404.
- ``GET /edit/tiles?width=&height=&tile_width=&tile_height=&overlap=``: Tiled Diffusion's layout for an image
  size (``edit_core.tile_grid``, the sampler's own planner).

Only safetensors headers are read. Every error is JSON ``{"error": message}``. ComfyUI (``/api`` too)
serves them once ``register_routes`` has added them to ``PromptServer.instance.routes``, which must happen
before the server starts (node loading time); without a server it does nothing.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable, Sequence

from aiohttp import web

from ..edit_core.adapter_info import AdapterLookupError, adapter_facts, resolve_adapter_file
from ..edit_core.tile_grid import tile_grid

log = logging.getLogger("ComfyUI-EDiT")

PREFIX = "/edit"
_TILE_PARAMS = ("width", "height", "tile_width", "tile_height", "overlap")
_registered = False


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def add_routes(routes: web.RouteTableDef, folders: Callable[[], Sequence[str]],
               names: Callable[[], Sequence[str]]) -> None:
    """Add the routes to ``routes``. ``folders()``: the adapter folders; ``names()``: the adapter names (as the
    Load EDiT Adapter list shows them)."""

    @routes.get(PREFIX + "/adapters")
    async def list_adapters(request: web.Request) -> web.Response:
        adapters = []
        for name in names():
            try:
                adapters.append(adapter_facts(resolve_adapter_file(folders(), name), name))
            except (AdapterLookupError, OSError):
                continue  # an escaping symlink or a file that vanished is not listed
        return web.json_response({"adapters": adapters})

    @routes.get(PREFIX + "/adapters/{name:.+}")
    async def get_adapter(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            return web.json_response(adapter_facts(resolve_adapter_file(folders(), name), name))
        except AdapterLookupError as e:
            return _error(e.status, str(e))
        except OSError as e:
            return _error(404, f"adapter {name!r} cannot be read: {e.strerror or e}")

    @routes.get(PREFIX + "/tiles")
    async def get_tiles(request: web.Request) -> web.Response:
        try:
            values = {key: int(request.query[key]) for key in _TILE_PARAMS}
        except KeyError as e:
            return _error(400, f"missing query parameter {e.args[0]!r} (needs {', '.join(_TILE_PARAMS)}, in pixels)")
        except ValueError:
            return _error(400, f"{', '.join(_TILE_PARAMS)} must be integers (pixels)")
        try:
            return web.json_response(tile_grid(**values))
        except ValueError as e:
            return _error(400, str(e))


def register_routes() -> bool:
    """Add the routes to the running ComfyUI server's table, once; False when there is no server."""
    global _registered
    if _registered:
        return True
    server = sys.modules.get("server")
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    if instance is None or not hasattr(instance, "routes"):
        return False
    import folder_paths

    from .model_folder import FOLDER_NAME, adapter_files, register_model_folder

    def folders() -> list[str]:
        register_model_folder()
        return list(folder_paths.get_folder_paths(FOLDER_NAME))

    add_routes(instance.routes, folders, adapter_files)
    _registered = True
    return True


__all__ = ["add_routes", "register_routes", "PREFIX"]
