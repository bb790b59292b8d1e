"""Training data for distillation: resolution stages, aspect-ratio buckets and a deterministic batch plan.

A ``LatentDataset`` holds clean latents with their conditioning, grouped in buckets of one latent size
(in memory: ``TensorDataset``; on disk: ``cache.CachedDataset``). ``BatchPlan`` turns a dataset into an
endless sequence of global batches, each from one bucket: batch ``k`` depends only on (seed, k), so a
resumed run sees exactly the batches an uninterrupted one would, and every rank of a distributed run
agrees on the global batch and reads only its own rows. ``stage_plan`` splits the step budget into the
progressive-resolution stages (paper-spec §3: 512 → 1024 → 2048, by default 6 : 3 : 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Protocol, Sequence

import torch

PIXELS_PER_LATENT = 8  # the VAE factor of PixArt-Σ and SD3.5
DEFAULT_STAGE_WEIGHTS = (6.0, 3.0, 1.0)


class DistillDataError(ValueError):
    """Bad data settings (resolutions, buckets, empty datasets); the message says what to change."""


# ---------------------------------------------------------------------------------------------- stages

@dataclass(frozen=True)
class Stage:
    resolution: int  # pixels of the square side; buckets keep about resolution² pixels
    start: int  # first optimizer step of the stage
    stop: int  # one past its last step


def parse_resolutions(text: str | Sequence[int]) -> list[int]:
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise DistillDataError(f"--resolution must be comma-separated pixel sizes like 512,1024, got {text!r}") \
                from None
    else:
        values = [int(v) for v in text]
    if not values or any(v <= 0 for v in values):
        raise DistillDataError(f"resolutions must be positive pixel sizes, got {text!r}")
    return values


def check_resolution(resolution: int, patch_size: int = 2, what: str = "resolution") -> None:
    multiple = PIXELS_PER_LATENT * patch_size
    if resolution % multiple:
        low, high = resolution - resolution % multiple, resolution - resolution % multiple + multiple
        raise DistillDataError(f"{what} {resolution} is not a multiple of {multiple} (VAE factor "
                               f"{PIXELS_PER_LATENT} × patch {patch_size}); use {low or high} or {high}")


def stage_plan(steps: int, resolutions: Sequence[int], fractions: Optional[Sequence[float]] = None) -> list[Stage]:
    """Split ``steps`` over the resolutions (in order). ``fractions`` default to 6:3:1 (then 1 each)."""
    if steps < 1:
        raise DistillDataError(f"steps must be at least 1, got {steps}")
    n = len(resolutions)
    weights = list(fractions) if fractions is not None else \
        [DEFAULT_STAGE_WEIGHTS[i] if i < len(DEFAULT_STAGE_WEIGHTS) else 1.0 for i in range(n)]
    if len(weights) != n or any(w <= 0 for w in weights):
        raise DistillDataError(f"need one positive stage fraction per resolution ({n}), got {list(weights)}")
    total, stages, start = sum(weights), [], 0
    for i, (resolution, weight) in enumerate(zip(resolutions, weights)):
        stop = steps if i == n - 1 else min(steps, start + max(1, round(steps * weight / total)))
        stages.append(Stage(int(resolution), start, stop))
        start = stop
    return [s for s in stages if s.stop > s.start]


def stage_at(stages: Sequence[Stage], step: int) -> int:
    for i, stage in enumerate(stages):
        if stage.start <= step < stage.stop:
            return i
    return len(stages) - 1


# ---------------------------------------------------------------------------------------------- buckets

def parse_aspect_ratios(text: str) -> list[float]:
    """"1:1,4:3,3:4" → [1.0, 1.333, 0.75] (width : height)."""
    ratios = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            w, h = (float(v) for v in part.split(":")) if ":" in part else (float(part), 1.0)
        except ValueError:
            raise DistillDataError(f"aspect ratios look like 1:1,4:3,3:4; got {part!r}") from None
        if w <= 0 or h <= 0:
            raise DistillDataError(f"aspect ratio {part!r} must be positive")
        ratios.append(w / h)
    return ratios or [1.0]


def aspect_buckets(resolution: int, ratios: Sequence[float] = (1.0,), patch_size: int = 2) -> list[tuple[int, int]]:
    """(height, width) in pixels, multiples of 8 × patch, each about ``resolution²`` pixels, no duplicates."""
    multiple = PIXELS_PER_LATENT * patch_size
    buckets = []
    for ratio in ratios:
        width = max(multiple, round(resolution * ratio ** 0.5 / multiple) * multiple)
        height = max(multiple, round(resolution / ratio ** 0.5 / multiple) * multiple)
        if (height, width) not in buckets:
            buckets.append((height, width))
    return buckets


# ---------------------------------------------------------------------------------------------- datasets

class LatentDataset(Protocol):
    """Clean latents and their conditioning, by item id; every item of a bucket has the same latent size."""

    has_images: bool  # True: real data (the task loss applies); False: teacher samples
    null_cond: Optional[Mapping[str, torch.Tensor]]  # the empty prompt's conditioning, batch 1 (or None)

    def buckets(self) -> dict[tuple[int, int], list[int]]:
        """Latent (h, w) → item ids."""
        ...

    def load(self, ids: Sequence[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(x0 [n, C, h, w] fp32, conditioning batch of n) for items of one bucket, in ``ids`` order."""
        ...


class TensorDataset:
    """An in-memory dataset: x0 [N, C, h, w] and conditioning tensors [N, ...] (one bucket), or a list of
    such groups (one bucket each)."""

    def __init__(self, groups, null_cond: Optional[Mapping[str, torch.Tensor]] = None, has_images: bool = False):
        if isinstance(groups, tuple):
            groups = [groups]
        self._items: list[tuple[int, int]] = []  # id → (group, row)
        self._groups = []
        self._buckets: dict[tuple[int, int], list[int]] = {}
        for g, (x0, cond) in enumerate(groups):
            key = (int(x0.shape[-2]), int(x0.shape[-1]))
            if key in self._buckets:
                raise DistillDataError(f"two groups share the latent size {key}; concatenate them")
            for name, value in cond.items():
                if value.shape[0] != x0.shape[0]:
                    raise DistillDataError(f"conditioning {name!r} has {value.shape[0]} rows, the latents "
                                           f"{x0.shape[0]}")
            self._groups.append((x0, dict(cond)))
            self._buckets[key] = list(range(len(self._items), len(self._items) + x0.shape[0]))
            self._items += [(g, r) for r in range(x0.shape[0])]
        self.null_cond = dict(null_cond) if null_cond is not None else None
        self.has_images = has_images

    def __len__(self) -> int:
        return len(self._items)

    def buckets(self) -> dict[tuple[int, int], list[int]]:
        return {k: list(v) for k, v in self._buckets.items()}

    def load(self, ids: Sequence[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        group = self._items[ids[0]][0]
        rows = torch.tensor([self._items[i][1] for i in ids])
        x0, cond = self._groups[group]
        return x0[rows].float(), {k: v[rows] for k, v in cond.items()}


# ---------------------------------------------------------------------------------------------- conditioning

def pad_sequence(value: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad dim 1 (tokens) to ``length``: extra caption tokens with mask 0 change nothing."""
    if value.dim() < 2 or value.shape[1] >= length:
        return value
    pad = value.new_zeros(value.shape[0], length - value.shape[1], *value.shape[2:])
    return torch.cat([value, pad], dim=1)


def concat_conditioning(parts: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate conditioning batches; sequences of different length are zero-padded, which needs an
    attention mask (``encoder_attention_mask``) to be harmless."""
    out = {}
    for key in parts[0]:
        values = [p[key] for p in parts]
        if values[0].dim() >= 2 and len({v.shape[1] for v in values}) > 1:
            if not all("encoder_attention_mask" in p for p in parts):
                raise DistillDataError(f"conditioning {key!r} has different token counts "
                                       f"{sorted({v.shape[1] for v in values})} and no attention mask")
            length = max(v.shape[1] for v in values)
            values = [pad_sequence(v, length) for v in values]
        out[key] = torch.cat([v.to(values[0].dtype) for v in values])
    return out


def drop_conditioning(cond: Mapping[str, torch.Tensor], null_cond: Optional[Mapping[str, torch.Tensor]],
                      drop: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows where ``drop`` is True get the empty prompt's conditioning (classifier-free guidance training)."""
    if null_cond is None or not bool(drop.any()):
        return dict(cond)
    n = drop.shape[0]
    null = {k: v[:1].expand(n, *v.shape[1:]) for k, v in null_cond.items()}
    both = concat_conditioning([cond, null])
    rows = torch.where(drop, torch.arange(n) + n, torch.arange(n))
    return {k: v[rows] for k, v in both.items()}


# ---------------------------------------------------------------------------------------------- batch plan

class BatchPlan:
    """Global batch ``k`` of a dataset: ``global_batch`` item ids from one bucket, a function of (seed, k).

    Each epoch shuffles every bucket's items (a short bucket is filled up by cycling), cuts them into
    global batches and shuffles the batch order."""

    def __init__(self, dataset: LatentDataset, global_batch: int, seed: int = 0):
        self.buckets = {k: v for k, v in sorted(dataset.buckets().items()) if v}
        if not self.buckets:
            raise DistillDataError("the training data is empty")
        self.global_batch, self.seed = int(global_batch), int(seed)
        self.batches_per_epoch = sum(-(-len(v) // self.global_batch) for v in self.buckets.values())
        self._epoch: Optional[int] = None
        self._batches: list[list[int]] = []

    def _make_epoch(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        batches = []
        for ids in self.buckets.values():
            order = [ids[i] for i in torch.randperm(len(ids), generator=g).tolist()]
            count = -(-len(order) // self.global_batch) * self.global_batch
            order = [order[i % len(order)] for i in range(count)]
            batches += [order[i:i + self.global_batch] for i in range(0, count, self.global_batch)]
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]

    def position(self, index: int) -> dict:
        return {"epoch": index // self.batches_per_epoch, "batch_in_epoch": index % self.batches_per_epoch}

    def batch(self, index: int) -> list[int]:
        epoch = index // self.batches_per_epoch
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, self._make_epoch(epoch)
        return self._batches[index % self.batches_per_epoch]


__all__ = ["Stage", "stage_plan", "stage_at", "parse_resolutions", "check_resolution", "parse_aspect_ratios",
           "aspect_buckets", "concat_conditioning", "drop_conditioning", "pad_sequence", "LatentDataset",
           "TensorDataset", "BatchPlan", "DistillDataError", "PIXELS_PER_LATENT"]
