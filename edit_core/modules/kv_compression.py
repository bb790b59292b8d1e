"""The ``kv_pool`` variant's attention: PixArt-Σ-style KV compression on the teacher's own projections.

``KVCompression`` is its per-layer module: it holds the pooling ratio and the temperature rule and has no
weights, so the variant runs with no training (``EDiTTrainingFree``, ``apply_training_free``). Self-attention
pools the layer's keys/values; joint attention pools only the image keys/values and keeps text exact.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..ops.kv_compression import RATIOS, TEMPERATURES, kv_compressed_attention, kv_compressed_joint_attention
from .functional import Projections
from .tokens import merge_heads, projected_heads


class KVCompression(nn.Module):
    def __init__(self, channels: Optional[int] = None, *, ratio: int = 2, temperature: str = "teacher", **_):
        super().__init__()
        if int(ratio) not in RATIOS:
            raise ValueError(f"KV compression ratio must be one of {RATIOS}, got {ratio}")
        if temperature not in TEMPERATURES:
            raise ValueError(f"temperature must be one of {TEMPERATURES}, got {temperature!r}")
        self.ratio, self.temperature = int(ratio), temperature

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}, temperature={self.temperature}"

    def initialize(self, generator=None) -> None:  # nothing to initialise: the variant has no weights
        return None


def kv_compressed_self_attention(layer: KVCompression, x: torch.Tensor, grid, proj: Projections, heads: int, *,
                                 eps: float = 1e-6, backend: str = "auto") -> torch.Tensor:
    """x [B, N, C] → [B, N, C] before the output projection."""
    q = projected_heads(proj.query, x, heads, proj.norm_query)
    k = projected_heads(proj.key, x, heads, proj.norm_key)
    v = projected_heads(proj.value, x, heads)
    return merge_heads(kv_compressed_attention(q, k, v, grid, layer.ratio, temperature=layer.temperature))


def kv_compressed_joint(layer: KVCompression, image: torch.Tensor, text: torch.Tensor, grid,
                        image_proj: Projections, text_proj: Projections, heads: int, *, eta: str = "approx",
                        image_rows_only: bool = False, eps: float = 1e-6,
                        backend: str = "auto") -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(image rows [B, N_I, C], text rows [B, N_T, C] or None) before the output projections."""
    num_text = text.shape[1]
    q = torch.cat([projected_heads(text_proj.query, text, heads, text_proj.norm_query),
                   projected_heads(image_proj.query, image, heads, image_proj.norm_query)], dim=2)
    k = torch.cat([projected_heads(text_proj.key, text, heads, text_proj.norm_key),
                   projected_heads(image_proj.key, image, heads, image_proj.norm_key)], dim=2)
    v = torch.cat([projected_heads(text_proj.value, text, heads),
                   projected_heads(image_proj.value, image, heads)], dim=2)
    out = kv_compressed_joint_attention(q, k, v, grid, layer.ratio, num_text=num_text, text_first=True,
                                        image_rows_only=image_rows_only, temperature=layer.temperature)
    if image_rows_only:
        return merge_heads(out), None
    return merge_heads(out[:, :, num_text:]), merge_heads(out[:, :, :num_text])


__all__ = ["KVCompression", "kv_compressed_self_attention", "kv_compressed_joint"]
