"""Tiled prediction over a 2-D latent: tile layout, blend weights, weighted blending (MultiDiffusion).

A model too large for the whole latent (memory, or a positional embedding with a size cap) is run on
overlapping tiles and the tile predictions are fused per latent pixel p:

    ε(p) = Σ_t w_t(p) · ε_t(p) / Σ_t w_t(p),        sum over the tiles t that contain p

with ``w_t > 0`` everywhere inside its tile, so every covered pixel has a positive denominator. The
normalised weights ``w_t(p) / Σ_t w_t(p)`` sum to 1 at every pixel. Two weightings:

- ``"average"``: ``w_t ≡ 1`` (MultiDiffusion, Bar-Tal et al. 2023): a plain mean where tiles overlap.
- ``"feathered"``: a linear ramp over ``overlap`` pixels at each tile edge that lies inside the latent,
  ``w(i) = min(1, (i + 1) / (overlap + 1))`` at distance ``i`` from the edge, multiplied over both axes.
  It never reaches 0, edges on the latent border are not ramped, and across an overlap of exactly
  ``overlap`` pixels the two ramps sum to 1, so seams fade linearly.

Shapes are ``[B, C, H, W]``; tiles are in latent pixels. Pure torch: no host imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch

BLEND_MODES = ("average", "feathered")

TensorOrList = Union[torch.Tensor, Sequence[torch.Tensor]]


@dataclass(frozen=True)
class Tile:
    """A rectangle of the latent: rows ``y:y+h``, columns ``x:x+w``."""

    y: int
    x: int
    h: int
    w: int

    @property
    def size(self) -> tuple[int, int]:
        return self.h, self.w

    def crop(self, t: torch.Tensor) -> torch.Tensor:
        """[..., H, W] → [..., h, w] (a view)."""
        return t[..., self.y:self.y + self.h, self.x:self.x + self.w]


def axis_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with at least ``overlap`` shared.

    The stride is ``tile - overlap``; the last tile is shifted back to end exactly at ``length``
    (never padded), so its overlap with the previous tile can be larger. A tile larger than the
    axis is clamped to it: one tile.
    """
    if length < 1:
        raise ValueError(f"cannot tile an empty axis (length {length})")
    if tile < 1:
        raise ValueError(f"tile size must be at least 1, got {tile}")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    tile = min(tile, length)
    if tile == length:
        return [0]
    if overlap >= tile:
        raise ValueError(f"overlap {overlap} must be smaller than the tile ({tile}): lower the overlap")
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def plan_tiles(height: int, width: int, tile_h: int, tile_w: int, overlap: int,
               min_side_sum: int = 0) -> list[Tile]:
    """Row-major tiles covering a ``height × width`` latent exactly (see ``axis_starts``).

    Every tile has the same size ``(min(tile_h, height), min(tile_w, width))``, so all of them can be
    stacked in one batch; every latent pixel lies in at least one tile. ``min_side_sum``: a model that
    needs ``h + w`` of at least this (PixArt's positional embedding) gets tiles grown to it where one side
    was clamped to a thin latent (the wide side first); a latent smaller than that is refused.
    """
    th, tw = min(tile_h, height), min(tile_w, width)
    if th + tw < min_side_sum:
        if height + width < min_side_sum:
            raise ValueError(f"a {height}×{width} latent is too small for this model: its height + width must "
                             f"be at least {min_side_sum} latent px")
        deficit = min_side_sum - th - tw  # ≤ the room left on both axes together
        if width - tw >= height - th:
            grow = min(deficit, width - tw)
            tw, th = tw + grow, th + deficit - grow
        else:
            grow = min(deficit, height - th)
            th, tw = th + grow, tw + deficit - grow
        tile_h, tile_w = th, tw
    rows = axis_starts(height, tile_h, overlap)
    cols = axis_starts(width, tile_w, overlap)
    return [Tile(y, x, th, tw) for y in rows for x in cols]


def _ramp(n: int, overlap: int, ramp_start: bool, ramp_end: bool) -> torch.Tensor:
    """1-D feather, [n]: ``min(1, (i+1)/(overlap+1))`` from each ramped end, 1 elsewhere."""
    w = torch.ones(n, dtype=torch.float32)
    if overlap <= 0:
        return w
    i = torch.arange(n, dtype=torch.float32)
    if ramp_start:
        w = torch.minimum(w, (i + 1) / (overlap + 1))
    if ramp_end:
        w = torch.minimum(w, (n - i) / (overlap + 1))
    return w


def tile_weights(tile: Tile, blend: str = "average", overlap: int = 0,
                 latent_size: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """Blend weight of each pixel of ``tile``, [h, w] float32, every entry > 0.

    ``latent_size = (H, W)`` tells which edges lie on the latent border; those are not feathered
    (nothing to fade into). Without it every edge is feathered. ``"average"`` ignores both.
    """
    if blend not in BLEND_MODES:
        raise ValueError(f"unknown blend {blend!r}: choose one of {', '.join(BLEND_MODES)}")
    if blend == "average":
        return torch.ones(tile.h, tile.w, dtype=torch.float32)
    H, W = latent_size if latent_size is not None else (None, None)
    wy = _ramp(tile.h, overlap, ramp_start=tile.y > 0 or H is None,
               ramp_end=H is None or tile.y + tile.h < H)
    wx = _ramp(tile.w, overlap, ramp_start=tile.x > 0 or W is None,
               ramp_end=W is None or tile.x + tile.w < W)
    return wy[:, None] * wx[None, :]


class TileBlender:
    """Accumulates ``Σ w·ε`` and ``Σ w`` over tiles in float32; ``result()`` divides.

    ``shape`` is the full prediction, [B, C, H, W]. Tiles may be added in any order.
    """

    def __init__(self, shape: Sequence[int], device=None, dtype: Optional[torch.dtype] = None):
        self.shape = tuple(shape)
        self.dtype = dtype
        self.acc = torch.zeros(self.shape, dtype=torch.float32, device=device)
        self.weight_sum = torch.zeros(self.shape[-2:], dtype=torch.float32, device=device)

    def add(self, tile: Tile, prediction: torch.Tensor, weight: torch.Tensor) -> None:
        """``prediction``: [B, C, h, w] for ``tile``; ``weight``: [h, w]."""
        if tuple(prediction.shape[-2:]) != tile.size:
            raise ValueError(f"prediction is {tuple(prediction.shape[-2:])}, tile is {tile.size}")
        if self.dtype is None:
            self.dtype = prediction.dtype
        weight = weight.to(device=self.acc.device, dtype=torch.float32)
        tile.crop(self.acc).add_(prediction.to(device=self.acc.device, dtype=torch.float32) * weight)
        tile.crop(self.weight_sum).add_(weight)

    def coverage(self) -> torch.Tensor:
        """[H, W] bool: pixels that at least one tile has covered."""
        return self.weight_sum > 0

    def result(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """``Σ w·ε / Σ w``, in ``dtype`` (default: the first prediction's dtype)."""
        if not bool(self.coverage().all()):
            missing = int((~self.coverage()).sum())
            raise ValueError(f"{missing} latent pixels are covered by no tile: the tile plan leaves gaps")
        out = self.acc / self.weight_sum
        return out.to(dtype or self.dtype or torch.float32)


def blend(predictions: Sequence[torch.Tensor], tiles: Sequence[Tile], weights: Sequence[torch.Tensor],
          shape: Sequence[int]) -> torch.Tensor:
    """Fuse per-tile predictions ([B, C, h, w] each) into one [B, C, H, W]: ``Σ w·ε / Σ w``."""
    if not (len(predictions) == len(tiles) == len(weights)):
        raise ValueError(f"{len(predictions)} predictions, {len(tiles)} tiles, {len(weights)} weights")
    device = predictions[0].device if predictions else None
    blender = TileBlender(shape, device=device)
    for prediction, tile, weight in zip(predictions, tiles, weights):
        blender.add(tile, prediction, weight)
    return blender.result()


def tile_batches(tiles: Sequence[Tile], batch_size: int) -> list[list[Tile]]:
    """Groups of at most ``batch_size`` equal-sized tiles (stackable), in plan order within a size."""
    if batch_size < 1:
        raise ValueError(f"tile batch size must be at least 1, got {batch_size}")
    by_size: dict[tuple[int, int], list[Tile]] = {}
    for tile in tiles:
        by_size.setdefault(tile.size, []).append(tile)
    return [group[i:i + batch_size] for group in by_size.values() for i in range(0, len(group), batch_size)]


def tiled_apply(fn: Callable[[torch.Tensor, list[Tile]], TensorOrList], x: torch.Tensor,
                tiles: Sequence[Tile], batch_size: int = 1, blend: str = "average", overlap: int = 0,
                progress: Optional[Callable[[int, int], None]] = None,
                check_interrupt: Optional[Callable[[], None]] = None) -> TensorOrList:
    """Run ``fn`` tile batch by tile batch over ``x`` [B, C, H, W] and blend the outputs.

    ``fn(x_tiles, batch)`` gets the crops of the ``k`` tiles in ``batch`` stacked tile-major in the
    batch dimension, [k·B, C, h, w] (tile j holds rows ``j·B:(j+1)·B``), and returns a tensor
    [k·B', C', h, w] or a list of them (e.g. one per conditioning); each is blended into [B', C', H, W]
    and the same structure is returned. ``check_interrupt()`` runs before each batch (raise to stop);
    ``progress(done, total)`` after each.
    """
    if x.ndim < 3:
        raise ValueError(f"x must be [B, C, H, W], got shape {tuple(x.shape)}")
    H, W = x.shape[-2:]
    batches = tile_batches(tiles, batch_size)
    weight_cache: dict[Tile, torch.Tensor] = {}
    blenders: Optional[list[Optional[TileBlender]]] = None
    single = False
    for done, batch in enumerate(batches, start=1):
        if check_interrupt is not None:
            check_interrupt()
        x_tiles = batch[0].crop(x) if len(batch) == 1 else torch.cat([t.crop(x) for t in batch])
        out = fn(x_tiles, batch)
        if blenders is None:
            single = isinstance(out, torch.Tensor)
            blenders = [None] * (1 if single else len(out))
        outs = [out] if single else list(out)
        if len(outs) != len(blenders):
            raise ValueError(f"fn returned {len(outs)} outputs for one tile batch and {len(blenders)} for another")
        for j, o in enumerate(outs):
            if o.shape[0] % len(batch):
                raise ValueError(f"output batch {o.shape[0]} is not a multiple of the {len(batch)} tiles stacked")
            chunks = o.chunk(len(batch)) if len(batch) > 1 else (o,)
            if blenders[j] is None:
                blenders[j] = TileBlender((chunks[0].shape[0], o.shape[1], H, W), device=o.device, dtype=o.dtype)
            for tile, chunk in zip(batch, chunks):
                if tile not in weight_cache:
                    weight_cache[tile] = tile_weights(tile, blend, overlap, (H, W)).to(o.device)
                blenders[j].add(tile, chunk, weight_cache[tile])
        if progress is not None:
            progress(done, len(batches))
    if blenders is None:
        raise ValueError("no tiles to run")
    results = [b.result() for b in blenders]
    return results[0] if single else results
