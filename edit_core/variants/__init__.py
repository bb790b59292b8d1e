"""Named attention variants.

A variant is one way to convert a teacher's attention: which trainable parts each converted layer gets
(``build_layer`` → an ``nn.Module`` whose ``state_dict`` keys are the adapter keys below
``blocks.{i}.{slot}.``), how a converted self-attention computes (``self_attention``), and, for MMDiT
families, how a converted joint attention computes (``joint_attention``). Adapters, patchers and the
trainer only ever talk to this interface, so a new variant (SANA-style ReLU linear attention,
LinFusion, PixArt-Σ KV compression, fully linear MM-DiT, …) is one module plus ``register_variant``.

Registered now:

- ``edit`` (EDiT linear compressed attention, PixArt families) and ``mm_edit`` (MM-EDiT hybrid joint
  attention with EDiT on the image-only ``attn2`` layers, MMDiT families): the pack's own;
- the paper's baselines, distillable like EDiT (``edit_core.modules.baselines``): ``sana`` (ReLU linear
  attention), ``linfusion`` (LinFusion's q/k mappings, ELU+1), ``edit_no_convfusion`` (the ablation),
  ``kv_compress`` (PixArt-Σ's learned KV compression, all families) and ``mm_linear`` (fully linear joint
  attention, MMDiT families);
- ``kv_pool``: the training-free mode (softmax over r×r average-pooled image keys/values; no weights).

Which families a variant converts follows from whether it has a joint attention; each family names its
default variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from torch import nn

from ..modules import baselines
from ..modules.functional import edit_self_attention, mm_edit_joint_attention
from ..modules.kv_compression import KVCompression, kv_compressed_joint, kv_compressed_self_attention
from ..modules.layer_adapter import EDiTLayerAdapter


@dataclass(frozen=True)
class AttentionVariant:
    name: str
    title: str
    joint: Optional[bool]  # True: converts MMDiT joint attention; False: plain self-attention; None: both
    build_layer: Callable[..., nn.Module]
    """(channels, *, reduction, dtype, device, operations) → the per-layer trainable module."""
    self_attention: Callable
    """(layer, x, grid, projections, heads, *, eps, backend) → [B, N, C] before the output projection."""
    joint_attention: Optional[Callable] = None
    """(layer, image, text, grid, image_proj, text_proj, heads, *, eta, image_rows_only, eps, backend)."""

    trainable: bool = True  # False: a training-free variant (no weights to distil or save)

    def converts(self, family) -> bool:
        """Whether this variant can convert a model of ``family`` (a ``Family`` record)."""
        if family.joint and self.joint_attention is None:
            return False
        return self.joint is None or self.joint == bool(family.joint)


_VARIANTS: dict[str, AttentionVariant] = {}


def register_variant(variant: AttentionVariant) -> None:
    _VARIANTS[variant.name] = variant


def get_variant(name: str) -> AttentionVariant:
    if name not in _VARIANTS:
        raise KeyError(f"unknown attention variant {name!r}; known: {', '.join(sorted(_VARIANTS))}")
    return _VARIANTS[name]


def list_variants() -> list[str]:
    return sorted(_VARIANTS)


def distillable_variants(family) -> list[str]:
    """The variants an adapter can be distilled in for ``family`` (a ``Family`` record), its default first."""
    names = [name for name, v in _VARIANTS.items() if v.trainable and v.converts(family)]
    return sorted(names, key=lambda name: (name != family.default_variant, name))


def _build_edit_layer(channels: int, *, reduction: int = 4, dtype=None, device=None, operations=None):
    return EDiTLayerAdapter(channels, reduction, dtype=dtype, device=device, operations=operations)


register_variant(AttentionVariant(
    name="edit", title="EDiT linear compressed attention", joint=False, build_layer=_build_edit_layer,
    self_attention=edit_self_attention))

register_variant(AttentionVariant(
    name="mm_edit", title="MM-EDiT hybrid attention", joint=True, build_layer=_build_edit_layer,
    self_attention=edit_self_attention, joint_attention=mm_edit_joint_attention))

register_variant(AttentionVariant(
    name="kv_pool", title="KV pooling (softmax over r×r-pooled keys/values, training-free)", joint=None,
    build_layer=KVCompression, self_attention=kv_compressed_self_attention, joint_attention=kv_compressed_joint,
    trainable=False))

# The paper's baselines (paper-spec §5).
register_variant(AttentionVariant(
    name="sana", title="SANA ReLU linear attention", joint=False, build_layer=baselines.NoWeights,
    self_attention=baselines.sana_self_attention))

register_variant(AttentionVariant(
    name="linfusion", title="LinFusion linear attention (q/k mappings, ELU+1)", joint=False,
    build_layer=baselines.LinFusionLayer, self_attention=baselines.linfusion_self_attention))

register_variant(AttentionVariant(
    name="edit_no_convfusion", title="EDiT without ConvFusion (ablation)", joint=False,
    build_layer=baselines.CompressorsOnly, self_attention=baselines.edit_no_convfusion_self_attention))

register_variant(AttentionVariant(
    name="kv_compress", title="PixArt-Σ KV compression (learned 2×2 depthwise conv + LayerNorm, softmax)",
    joint=None, build_layer=baselines.LearnedKVCompression, self_attention=baselines.learned_kv_self_attention,
    joint_attention=baselines.learned_kv_joint_attention))

register_variant(AttentionVariant(
    name="mm_linear", title="Fully linear joint attention (SANA-MM-DiT)", joint=True,
    build_layer=baselines.NoWeights, self_attention=baselines.sana_self_attention,
    joint_attention=baselines.mm_linear_joint_attention))

__all__ = ["AttentionVariant", "register_variant", "get_variant", "list_variants", "distillable_variants"]
