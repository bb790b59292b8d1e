"""Tiled Diffusion (EDiT): the model's prediction is computed tile by tile over the latent and blended.

Two composable wrappers on a clone of the MODEL (never the single-slot ``model_function_wrapper``):

- ``CALC_COND_BATCH``: split ``x_in`` into overlapping tiles (``edit_core.tiling``), run the rest of
  the chain (other wrappers, then ``_calc_cond_batch``, then ``apply_model`` with its own wrappers,
  object patches, LoRA, SLG…) once per tile batch with the spatial parts of the conds cropped to the
  tiles, and blend. The model only ever sees tile-sized latents, so positional embeddings with a size
  cap (SD3's ``cropped_pos_embed``) and attention memory stay at tile size.
- ``PREPARE_SAMPLING``: the memory estimate used to load the model is made at tile size.
- ``OUTER_SAMPLE``: the per-tile ControlNet copies of one sampling run are made once and dropped at its end.

ControlNet / T2I-Adapter hints are cropped per tile: ComfyUI resizes a hint to the latent × the control's
compression (× the VAE's when it encodes the hint); the tile's control is a shallow copy of the chain whose
hint (and spatial ``extra_concat`` masks) is that full-size hint's crop under the tile, stacked tile-major,
so each tile sees exactly the part of the hint an untiled run would put there.

The layout and blending math live in ``edit_core.tiling``; this file only adapts ComfyUI's conds.
"""

from __future__ import annotations

import copy
import logging

import torch

import comfy.conds
import comfy.model_base
import comfy.model_management
import comfy.patcher_extension
import comfy.utils
from comfy_api.latest import io

from ..edit_core import tiling

WRAPPER_KEY = "edit_tiled_diffusion"
# latent px: PixArt computes pe_interpolation = round(((H+W)//2) / 64), 0 when (H+W)//2 ≤ 32 →
# ZeroDivisionError. So a tile needs H + W ≥ 66; a requested side is at least 34 (34 + 34 ≥ 66) and a side
# clamped to a thin latent is made up for by the other (``tiling.plan_tiles``'s ``min_side_sum``).
PIXART_MIN_TILE = 34
PIXART_MIN_SIDE_SUM = 66
MAX_TILE_PX = 16384

log = logging.getLogger("ComfyUI-EDiT")


def latent_downscale(model) -> int:
    """Pixels per latent pixel: the latent format's ``spacial_downscale_ratio`` when it has one, else 8."""
    latent_format = model.get_model_object("latent_format")
    return max(1, int(getattr(latent_format, "spacial_downscale_ratio", 8) or 8))


def min_side_sum(model) -> int:
    """The least tile height + width (latent px) the model can run: PixArt's, else 0."""
    return PIXART_MIN_SIDE_SUM if isinstance(model.model, comfy.model_base.PixArt) else 0


def tile_size_limits(model) -> tuple[int, int | None, str, str]:
    """(min, max) tile side in latent px that this model can run, with the reason for each."""
    low, low_why, high, high_why = 1, "", None, ""
    if isinstance(model.model, comfy.model_base.PixArt):
        low = PIXART_MIN_TILE
        low_why = ("PixArt's positional embedding divides by round(tile side / 64 latent px), which is 0 for "
                   f"tiles under {PIXART_MIN_TILE} latent px")
    diffusion_model = model.get_model_object("diffusion_model")
    cap = getattr(diffusion_model, "pos_embed_max_size", None)
    if cap:
        patch = getattr(diffusion_model, "patch_size", 2)
        patch = patch[0] if isinstance(patch, (tuple, list)) else int(patch)
        high = int(cap) * patch
        high_why = f"the model's positional embedding covers at most {cap} patches ({high} latent px) per side"
    return low, high, low_why, high_why


def _repeat_to(t: torch.Tensor, batch: int) -> torch.Tensor:
    return comfy.utils.repeat_to_batch_size(t, batch)


def _is_spatial(t, x_in: torch.Tensor) -> bool:
    return isinstance(t, torch.Tensor) and t.ndim == x_in.ndim and t.shape[-2:] == x_in.shape[-2:]


def _crop_stack(t: torch.Tensor, tiles: list[tiling.Tile], batch: int) -> torch.Tensor:
    """Crop ``t`` [Bt, ..., H, W] to each tile and stack tile-major, as the latent tiles are stacked."""
    if len(tiles) == 1:
        return tiles[0].crop(t)
    return torch.cat([_repeat_to(tile.crop(t), batch) for tile in tiles])


def _shift_area(area, tile: tiling.Tile):
    """A cond area (h, w, y, x) in latent px, intersected with the tile and moved to tile coordinates."""
    h, w, y, x = (int(v) for v in area)
    y0, y1 = max(y, tile.y), min(y + h, tile.y + tile.h)
    x0, x1 = max(x, tile.x), min(x + w, tile.x + tile.w)
    if y1 <= y0 or x1 <= x0:
        return None
    return (y1 - y0, x1 - x0, y0 - tile.y, x0 - tile.x)


def control_pixels_per_latent(control) -> int:
    """Hint pixels per latent pixel, as ``ControlNet.get_control`` sizes the hint: its compression ratio, times
    the VAE's when the hint is VAE-encoded (SD3 ControlNets)."""
    ratio = int(getattr(control, "compression_ratio", 8) or 1)
    vae = getattr(control, "vae", None)
    return ratio * int(vae.spacial_compression_encode()) if vae is not None else ratio


def _crop_stack_px(t: torch.Tensor, tiles: list[tiling.Tile], scale: int, batch: int) -> torch.Tensor:
    """Like ``_crop_stack`` for a tensor at ``scale`` × the latent's resolution."""
    crops = [t[..., tile.y * scale:(tile.y + tile.h) * scale, tile.x * scale:(tile.x + tile.w) * scale]
             for tile in tiles]
    return crops[0] if len(crops) == 1 else torch.cat([_repeat_to(c, batch) for c in crops])


def tile_control(control, tiles: list[tiling.Tile], latent_hw: tuple[int, int], batch: int, cache: dict):
    """A shallow copy of ``control`` (and of every control chained before it) whose hint is, per tile, the
    crop of the hint ComfyUI would make for the whole ``latent_hw`` latent. Cached in ``cache`` per
    (control, tiles, latent size, batch), so a VAE-encoded hint is encoded once per tile and run."""
    if control is None:
        return None
    key = (id(control), tuple(tiles), tuple(latent_hw), batch)
    if key in cache:
        return cache[key][1]
    tiled = copy.copy(control)
    scale = control_pixels_per_latent(control)
    height, width = latent_hw[0] * scale, latent_hw[1] * scale
    algorithm = getattr(control, "upscale_algorithm", "nearest-exact")
    if getattr(control, "cond_hint_original", None) is not None:
        full = comfy.utils.common_upscale(control.cond_hint_original, width, height, algorithm, "center")
        tiled.cond_hint_original = _crop_stack_px(full, tiles, scale, batch)
    extras = []
    for extra in getattr(control, "extra_concat_orig", []) or []:
        if extra.ndim == 4 and extra.shape[-2:] != (1, 1):  # a spatial mask/image (1×1: a constant)
            extra = _crop_stack_px(comfy.utils.common_upscale(extra, width, height, algorithm, "center"), tiles,
                                   scale, batch)
        extras.append(extra)
    tiled.extra_concat_orig = extras
    for cached_result in ("cond_hint", "extra_concat", "control_input"):  # made from the hint at first use
        if hasattr(tiled, cached_result):
            setattr(tiled, cached_result, None)
    tiled.previous_controlnet = tile_control(getattr(control, "previous_controlnet", None), tiles, latent_hw,
                                             batch, cache)
    cache[key] = (control, tiled)  # keeps ``control`` alive, so its id stays unique while cached
    return tiled


def crop_conds(conds: list, tiles: list[tiling.Tile], x_in: torch.Tensor, control_cache: dict | None = None) -> list:
    """The conds ``calc_cond_batch`` gets, cropped to ``tiles`` (stacked tile-major in the batch dim).

    Spatial model conds (``CONDNoiseShape`` such as inpainting ``c_concat``, or any cond tensor with the
    latent's H×W) and cond masks are cropped; an area cond is intersected with the tile (one tile only)
    and dropped where they do not meet; a ControlNet's hint is cropped (``tile_control``, cached in
    ``control_cache``). Everything else (text, pooled, hooks, uuid) is shared.
    """
    control_cache = {} if control_cache is None else control_cache
    batch = x_in.shape[0]
    out = []
    for cond_list in conds:
        if cond_list is None:
            out.append(None)
            continue
        cropped = []
        for cond in cond_list:
            cond = cond.copy()
            if "area" in cond:
                if len(tiles) != 1:
                    raise ValueError("area conds are cropped one tile at a time")
                if len(cond["area"]) != 4:
                    raise ValueError(f"Tiled Diffusion (EDiT) handles 2-D area conds, got {cond['area']}")
                area = _shift_area(cond["area"], tiles[0])
                if area is None:
                    continue
                cond["area"] = area
            if cond.get("control") is not None:
                cond["control"] = tile_control(cond["control"], tiles, tuple(x_in.shape[-2:]), batch, control_cache)
            if "mask" in cond and cond["mask"].shape[-2:] == x_in.shape[-2:]:
                cond["mask"] = _crop_stack(cond["mask"], tiles, batch)
            model_conds = {}
            for name, value in cond.get("model_conds", {}).items():
                if isinstance(value, comfy.conds.CONDRegular) and _is_spatial(getattr(value, "cond", None), x_in):
                    value = value._copy_with(_crop_stack(value.cond, tiles, batch))
                model_conds[name] = value
            if "model_conds" in cond:
                cond["model_conds"] = model_conds
            cropped.append(cond)
        out.append(cropped)
    return out


def _has_area(conds) -> bool:
    return any("area" in c for cond_list in conds if cond_list for c in cond_list)


def _progress_callback(model_options: dict, timestep: torch.Tensor, total: int):
    """Tile progress folded into the sampler's step bar: (step·n + done) / (steps·n), same node."""
    if total <= 1:
        return None
    sigmas = model_options.get("transformer_options", {}).get("sample_sigmas", None)
    if sigmas is None or len(sigmas) < 2:
        bar = comfy.utils.ProgressBar(total)
        return lambda done, n: bar.update_absolute(done, n)
    steps = len(sigmas) - 1
    sigma = float(timestep.reshape(-1)[0])
    step = int((sigmas[:-1].float().cpu() >= sigma * (1 - 1e-5)).sum()) - 1
    step = min(max(step, 0), steps - 1)
    bar = comfy.utils.ProgressBar(steps * total)
    return lambda done, n: bar.update_absolute(step * n + done, steps * n)


class TiledDiffusionPatch:
    """Settings (latent px) and the two wrappers. Holds no tensors, so clones share it cheaply."""

    def __init__(self, tile_h: int, tile_w: int, overlap: int, tile_batch_size: int, blend: str,
                 min_side_sum: int = 0):
        if blend not in tiling.BLEND_MODES:
            raise ValueError(f"unknown blend {blend!r}: choose one of {', '.join(tiling.BLEND_MODES)}")
        self.tile_h, self.tile_w, self.overlap = int(tile_h), int(tile_w), int(overlap)
        self.min_side_sum = int(min_side_sum)
        self.tile_batch_size, self.blend = int(tile_batch_size), blend
        self._control_tiles: dict = {}  # one sampling run's per-tile ControlNet copies (see outer_sample)

    def plan(self, height: int, width: int) -> list[tiling.Tile]:
        try:
            return tiling.plan_tiles(height, width, self.tile_h, self.tile_w, self.overlap, self.min_side_sum)
        except ValueError as e:
            raise ValueError(f"Tiled Diffusion (EDiT): {e} (PixArt's positional embedding divides by "
                             "round((height + width) / 128 latent px)); use a larger image") from None

    def prepare_sampling(self, executor, model, noise_shape, *args, **kwargs):
        """Estimate memory for one tile batch, not the whole latent."""
        if len(noise_shape) == 4:
            tiles = self.plan(noise_shape[2], noise_shape[3])
            k = min(self.tile_batch_size, len(tiles))
            noise_shape = [noise_shape[0] * k, noise_shape[1], tiles[0].h, tiles[0].w]
        return executor(model, noise_shape, *args, **kwargs)

    def outer_sample(self, executor, *args, **kwargs):
        """The per-tile ControlNet copies live for one sampling run."""
        self._control_tiles = {}
        try:
            return executor(*args, **kwargs)
        finally:
            self._control_tiles = {}

    def calc_cond_batch(self, executor, model, conds, x_in, timestep, model_options):
        if x_in.ndim != 4:  # video / audio latents: not tiled
            return executor(model, conds, x_in, timestep, model_options)
        tiles = self.plan(x_in.shape[2], x_in.shape[3])
        batch_size = 1 if _has_area(conds) else self.tile_batch_size

        def run(x_tiles, batch):
            k = len(batch)
            t = timestep if k == 1 else torch.cat([timestep] * k)
            return executor(model, crop_conds(conds, batch, x_in, self._control_tiles), x_tiles, t, model_options)

        n_batches = len(tiling.tile_batches(tiles, batch_size))
        return tiling.tiled_apply(
            run, x_in, tiles, batch_size=batch_size, blend=self.blend, overlap=self.overlap,
            progress=_progress_callback(model_options, timestep, n_batches),
            check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted)


def apply_tiled_diffusion(model, tile_width: int, tile_height: int, overlap: int, tile_batch_size: int,
                          blend: str):
    """Clone ``model`` and add the tiling wrappers. Sizes in pixels; returns (clone, notes)."""
    scale = latent_downscale(model)
    low, high, low_why, high_why = tile_size_limits(model)
    notes = []
    sides = {"tile_width": tile_width // scale, "tile_height": tile_height // scale}
    for name, side in sides.items():
        if side < low:
            notes.append(f"{name} {side * scale} px is below {low * scale} px: {low_why}; using {low * scale} px")
            sides[name] = low
        elif high is not None and side > high:
            notes.append(f"{name} {side * scale} px is above {high * scale} px: {high_why}; using {high * scale} px")
            sides[name] = high
        sides[name] = max(sides[name], 1)
    tile_w, tile_h = sides["tile_width"], sides["tile_height"]
    lat_overlap = overlap // scale
    limit = max(0, min(tile_w, tile_h) // 2)
    if lat_overlap > limit:
        notes.append(f"overlap {overlap} px is more than half the tile; using {limit * scale} px")
        lat_overlap = limit
    for note in notes:
        log.warning("Tiled Diffusion (EDiT): %s", note)

    patch = TiledDiffusionPatch(tile_h, tile_w, lat_overlap, tile_batch_size, blend, min_side_sum(model))
    wrappers = comfy.patcher_extension.WrappersMP
    m = model.clone()
    for kind, fn in ((wrappers.CALC_COND_BATCH, patch.calc_cond_batch),
                     (wrappers.PREPARE_SAMPLING, patch.prepare_sampling),
                     (wrappers.OUTER_SAMPLE, patch.outer_sample)):
        m.remove_wrappers_with_key(kind, WRAPPER_KEY)  # applying the node again replaces its settings
        m.add_wrapper_with_key(kind, WRAPPER_KEY, fn)
    return m, notes


class EDiTTiledDiffusion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EDiTTiledDiffusion",
            display_name="Tiled Diffusion (EDiT)",
            category="EDiT",
            description=(
                "Computes the model's prediction tile by tile over the latent and blends the tiles "
                "(MultiDiffusion), so 4K/8K latents fit in memory and within the positional embedding's range. "
                "Works with any image model and stacks with EDiT, LoRA and other patches. Each tile sees the "
                "whole prompt: from pure noise large images can repeat subjects, so it is best for refining an "
                "upscaled image (denoise 0.3-0.6)."),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to run tile by tile (EDiT-patched or not)."),
                io.Int.Input("tile_width", default=1024, min=64, max=MAX_TILE_PX, step=16,
                             tooltip="Tile width in pixels (latent px × 8). Tiles wider than the image are "
                                     "clamped to it; use the model's native resolution."),
                io.Int.Input("tile_height", default=1024, min=64, max=MAX_TILE_PX, step=16,
                             tooltip="Tile height in pixels (latent px × 8). Tiles taller than the image are "
                                     "clamped to it."),
                io.Int.Input("overlap", default=128, min=0, max=MAX_TILE_PX // 2, step=16,
                             tooltip="Pixels shared by neighbouring tiles; larger hides seams better but runs "
                                     "more tiles. At most half the tile."),
                io.Int.Input("tile_batch_size", default=1, min=1, max=64,
                             tooltip="Tiles run together in one model call: faster on a big GPU, more memory."),
                io.Combo.Input("blend", options=list(tiling.BLEND_MODES), default="feathered",
                               tooltip="How overlapping tiles are merged: 'average' is the plain MultiDiffusion "
                                       "mean; 'feathered' fades each tile out linearly across the overlap."),
            ],
            outputs=[io.Model.Output(tooltip="A clone of the model whose predictions are computed tile by tile.")],
        )

    @classmethod
    def execute(cls, model, tile_width: int, tile_height: int, overlap: int, tile_batch_size: int,
                blend: str) -> io.NodeOutput:
        patched, _ = apply_tiled_diffusion(model, tile_width, tile_height, overlap, tile_batch_size, blend)
        return io.NodeOutput(patched)


NODES = [EDiTTiledDiffusion]
