"""Named attention variants.

A variant is one way to convert a teacher's attention: which trainable parts each converted layer gets
(``build_layer`` → an ``nn.Module`` whose ``state_dict`` keys are the adapter keys below
``blocks.{i}.{slot}.``), how a converted self-attention computes (``self_attention``), and, for MMDiT
families, how a converted joint attention computes (``joint_attention``). Adapters, patchers and the
trainer only ever talk to this interface, so a new variant (SANA-style ReLU linear attention,
LinFusion, PixArt-Σ KV compression, fully linear MM-DiT, …) is one module plus ``register_variant``.

Registered now: ``edit`` (EDiT linear compressed attention, PixArt-Σ) and ``mm_edit`` (MM-EDiT hybrid
joint attention with EDiT on the image-only ``attn2`` layers, SD3.5-Medium).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from torch import nn

from ..modules.functional import edit_self_attention, mm_edit_joint_attention
from ..modules.layer_adapter import EDiTLayerAdapter


@dataclass(frozen=True)
class AttentionVariant:
    name: str
    title: str
    families: tuple[str, ...]
    build_layer: Callable[..., nn.Module]
    """(channels, *, reduction, dtype, device, operations) → the per-layer trainable module."""
    self_attention: Callable
    """(layer, x, grid, projections, heads, *, eps, backend) → [B, N, C] before the output projection."""
    joint_attention: Optional[Callable] = None
    """(layer, image, text, grid, image_proj, text_proj, heads, *, eta, image_rows_only, eps, backend)."""


_VARIANTS: dict[str, AttentionVariant] = {}
_DEFAULT_FOR_FAMILY: dict[str, str] = {}


def register_variant(variant: AttentionVariant, *, default_for: tuple[str, ...] = ()) -> None:
    _VARIANTS[variant.name] = variant
    for family in default_for:
        _DEFAULT_FOR_FAMILY[family] = variant.name


def get_variant(name: str) -> AttentionVariant:
    if name not in _VARIANTS:
        raise KeyError(f"unknown attention variant {name!r}; known: {', '.join(sorted(_VARIANTS))}")
    return _VARIANTS[name]


def list_variants() -> list[str]:
    return sorted(_VARIANTS)


def default_variant(family: str) -> str:
    if family not in _DEFAULT_FOR_FAMILY:
        raise KeyError(f"no attention variant converts model family {family!r}")
    return _DEFAULT_FOR_FAMILY[family]


def _build_edit_layer(channels: int, *, reduction: int = 4, dtype=None, device=None, operations=None):
    return EDiTLayerAdapter(channels, reduction, dtype=dtype, device=device, operations=operations)


register_variant(AttentionVariant(
    name="edit", title="EDiT linear compressed attention", families=("pixart_sigma",),
    build_layer=_build_edit_layer, self_attention=edit_self_attention), default_for=("pixart_sigma",))

register_variant(AttentionVariant(
    name="mm_edit", title="MM-EDiT hybrid attention", families=("sd35_medium",),
    build_layer=_build_edit_layer, self_attention=edit_self_attention,
    joint_attention=mm_edit_joint_attention), default_for=("sd35_medium",))

__all__ = ["AttentionVariant", "register_variant", "get_variant", "list_variants", "default_variant"]
