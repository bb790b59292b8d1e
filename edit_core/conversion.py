"""Which layers of a model an adapter converts, and how: one host-free plan both hosts follow.

``plan_conversion`` checks an adapter against a detected model and the user's choices (block range,
``attn2``, η, backend) and returns the (block, slot) layers to convert. The ComfyUI node and the diffusers
integration only map their own vocabularies onto it, so a choice means the same in both.

``attn2`` (MMDiT-X image-only layers): ``"adapter"`` converts the adapter's attn2 layers, ``"off"`` leaves
every attn2 softmax, ``"all"`` also requires the adapter to cover every attn2 layer the model has.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from .adapter import Adapter, AdapterConfig, AdapterError
from .families import Family, TeacherSpec, get_family
from .ops import ETA_MODES
from .ops.backends import BACKEND_NAMES
from .variants import AttentionVariant, get_variant

ATTN2_MODES = ("adapter", "off", "all")


@dataclass
class ConversionPlan:
    adapter: Optional[Adapter]  # None for a training-free variant
    spec: TeacherSpec
    family: Family
    variant: AttentionVariant
    layers: list[tuple[int, str]]  # (block, slot), slots in "attn", "attn2"
    eta: str
    backend: str

    @property
    def attn_blocks(self) -> list[int]:
        return [b for b, s in self.layers if s == "attn"]

    @property
    def attn2_blocks(self) -> list[int]:
        return [b for b, s in self.layers if s == "attn2"]

    def applied_config(self) -> AdapterConfig:
        """The adapter's config restricted to what this plan converts (what a patched model carries)."""
        config = self.adapter.config
        return dataclasses.replace(config, converted_blocks=self.attn_blocks, attn2_blocks=self.attn2_blocks,
                                   eta=self.eta, training=dict(config.training))


def block_range(num_blocks: int, start_block: int = 0, end_block: int = -1) -> tuple[int, int]:
    """Inclusive (start, end) within 0..num_blocks-1; ``end_block`` -1 means the last block."""
    last = num_blocks - 1
    end = last if end_block < 0 else min(int(end_block), last)
    start = max(0, int(start_block))
    if start > end:
        raise ValueError(f"EDiT block range {start_block}..{end_block} is empty for a model with {num_blocks} "
                         f"blocks (0..{last}; end -1 = last)")
    return start, end


def plan_conversion(adapter: Adapter, spec: TeacherSpec, *, start_block: int = 0, end_block: int = -1,
                    attn2: str = "adapter", eta: Optional[str] = None, backend: str = "auto") -> ConversionPlan:
    """The layers ``adapter`` converts in a model with geometry ``spec``. Raises AdapterError when the adapter
    does not fit the model, ValueError for a bad choice; each message says what to change."""
    if backend not in BACKEND_NAMES:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKEND_NAMES)}")
    if attn2 not in ATTN2_MODES:
        raise ValueError(f"attn2 must be one of {ATTN2_MODES}, got {attn2!r}")
    eta = adapter.config.eta if eta is None else eta
    if eta not in ETA_MODES:
        raise ValueError(f"eta must be one of {ETA_MODES}, got {eta!r}")
    adapter.check_compatible(spec)
    family = get_family(spec.family)
    variant = get_variant(adapter.config.variant)
    if not variant.converts(family):
        raise AdapterError(adapter.source, [f"its variant {variant.name!r} cannot convert {family.title}"])
    config = adapter.config
    if attn2 == "all":
        missing = sorted(set(spec.attn2_blocks) - set(config.attn2_blocks))
        if missing:
            raise AdapterError(adapter.source, [f"attn2 'all' was asked for, but it has no attn2 layers for blocks "
                                                f"{missing} (it was made with attn2 left as softmax)"])
    start, end = block_range(spec.num_blocks, start_block, end_block)
    layers = [(b, "attn") for b in config.converted_blocks if start <= b <= end]
    if attn2 != "off":
        layers += [(b, "attn2") for b in config.attn2_blocks if start <= b <= end]
    if not layers:
        raise ValueError(f"the adapter converts no attention in blocks {start}..{end} (it converts blocks "
                         f"{config.converted_blocks}" + (f", attn2 {config.attn2_blocks}" if config.attn2_blocks
                                                         else "") + ")")
    return ConversionPlan(adapter, spec, family, variant, layers, eta, backend)


def plan_training_free(spec: TeacherSpec, *, start_block: int = 0, end_block: int = -1, variant: str = "kv_pool",
                       backend: str = "auto") -> ConversionPlan:
    """Every attention slot of the model's blocks in range (the joint/self attention, and MMDiT-X's ``attn2``),
    converted by a training-free variant (no adapter)."""
    family = get_family(spec.family)
    chosen = get_variant(variant)
    if chosen.trainable:
        raise ValueError(f"variant {variant!r} needs trained weights; the training-free mode takes a variant without "
                         "weights such as 'kv_pool'")
    if not chosen.converts(family):
        raise ValueError(f"variant {variant!r} cannot convert {family.title}")
    start, end = block_range(spec.num_blocks, start_block, end_block)
    layers = [(b, "attn") for b in range(start, end + 1)]
    layers += [(b, "attn2") for b in spec.attn2_blocks if start <= b <= end]
    return ConversionPlan(None, spec, family, chosen, layers, "approx", backend)


__all__ = ["ConversionPlan", "plan_conversion", "plan_training_free", "block_range", "ATTN2_MODES"]
