"""The tile layout of Tiled Diffusion (EDiT) in the units a user picks: pixels in, tiles and tokens out.

``tile_grid`` converts pixel sizes to latent pixels (÷ ``downscale``), clamps the overlap to half the tile
as the node does, and asks ``tiling.plan_tiles`` — the same planner the sampler uses — for the tiles.
``tokens_per_tile`` is what one transformer call sees: the tile's latent grid in ``patch × patch`` patches.
"""

from __future__ import annotations

import math

from . import tiling


def tile_grid(width: int, height: int, tile_width: int, tile_height: int, overlap: int, *, downscale: int = 8,
              patch: int = 2) -> dict:
    """JSON-ready plan for an image of ``width × height`` px tiled by ``tile_width × tile_height`` px tiles
    sharing ``overlap`` px. Raises ValueError for sizes that cannot be tiled."""
    values = {"width": width, "height": height, "tile_width": tile_width, "tile_height": tile_height}
    for key, value in values.items():
        if int(value) < downscale:
            raise ValueError(f"{key} must be at least {downscale} px, got {value}")
    if int(overlap) < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    lat_h, lat_w = int(height) // downscale, int(width) // downscale
    tile_h, tile_w = int(tile_height) // downscale, int(tile_width) // downscale
    lat_overlap = min(int(overlap) // downscale, min(tile_w, tile_h) // 2)  # the node's half-tile limit
    tiles = tiling.plan_tiles(lat_h, lat_w, tile_h, tile_w, lat_overlap)
    rows = len(tiling.axis_starts(lat_h, tile_h, lat_overlap))
    cols = len(tiling.axis_starts(lat_w, tile_w, lat_overlap))
    th, tw = tiles[0].size
    return {"latent": [lat_w, lat_h], "rows": rows, "cols": cols, "count": len(tiles),
            "tile": [tw * downscale, th * downscale], "tile_latent": [tw, th], "overlap": lat_overlap * downscale,
            "tokens_per_tile": math.ceil(th / patch) * math.ceil(tw / patch),
            "tokens_whole": math.ceil(lat_h / patch) * math.ceil(lat_w / patch),
            "tiles": [[t.x, t.y, t.w, t.h] for t in tiles]}


__all__ = ["tile_grid"]
