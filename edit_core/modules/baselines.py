"""The paper's baselines as attention variants (paper-spec §5), on the teacher's own projections.

Each variant is a per-layer module (its trainable tensors; an adapter stores its ``state_dict``) plus the
functions a host calls. All of them run on the teacher's W_q/W_k/W_v (fine-tuned when the distillation
trains projections); the output projection is the host's.

- ``sana``: SANA's LiteLA. q = ReLU(W_q x), k = ReLU(W_k x), v = W_v x (qk-norm first where the teacher has
  one), y_i = q_i·S / (q_i·z + eps) over all keys. No new tensors: it learns only through the projections.
- ``linfusion``: LinFusion. q = W_q(x + f_q(x)), k = W_k(x + f_k(x)), v = W_v x with
  f = Linear(C, C) → LayerNorm → LeakyReLU(0.01) → Linear(C, C) (second Linear zero-initialised, so the
  layer starts as the teacher's projections), feature map φ = ELU + 1, the same normalised linear attention.
- ``edit_no_convfusion``: EDiT without ConvFusion (the paper's ablation): q = ReLU(W_q x) against the
  Spatial Compressor's keys and values.
- ``kv_compress``: PixArt-Σ's KV compression, learned: K' = LN(DWConv_{2×2, s2}(W_k x)),
  V' = LN(DWConv_{2×2, s2}(W_v x)) with one depthwise conv and one LayerNorm(C) shared by K and V (conv
  initialised to the 2×2 mean, as PixArt-Σ), then softmax with full-resolution queries and the teacher's
  scale. Odd grids are padded by repeating the last row/column, which keeps the mean-init equal to a
  ceil-mode 2×2 average. Joint attention compresses the image keys/values only; text stays exact.
- ``mm_linear`` (MMDiT): fully linear joint attention, SANA-MM-DiT style: every query (text and image)
  reads one ReLU linear attention over all keys (text and image); ``attn2`` layers are ``sana``.

Each variant's math is checked against a plain float64 reference in ``tests/modules/test_baselines.py``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import linear_attention
from .functional import Projections, compressed_key_value
from .spatial_compressor import SpatialCompressor
from .tokens import grid_to_tokens, merge_heads, projected_heads, split_heads, tokens_to_grid


def _norm(fn, x):
    return x if fn is None else fn(x)


def elu_feature(x: torch.Tensor) -> torch.Tensor:
    """LinFusion's kernel φ(x) = ELU(x) + 1 (positive)."""
    return F.elu(x) + 1.0


# ---------------------------------------------------------------------------------------------- sana


class NoWeights(nn.Module):
    """The per-layer module of a variant that adds no tensors of its own (``sana``, ``mm_linear``)."""

    def __init__(self, channels: Optional[int] = None, **_):
        super().__init__()

    def initialize(self, generator=None) -> None:
        return None


def sana_self_attention(layer: nn.Module, x: torch.Tensor, grid, proj: Projections, heads: int, *,
                        eps: float = 1e-6, backend: str = "auto") -> torch.Tensor:
    q = F.relu(projected_heads(proj.query, x, heads, proj.norm_query))
    k = F.relu(projected_heads(proj.key, x, heads, proj.norm_key))
    v = projected_heads(proj.value, x, heads)
    return merge_heads(linear_attention(q, k, v, eps=eps, backend=backend))


def mm_linear_joint_attention(layer: nn.Module, image: torch.Tensor, text: torch.Tensor, grid,
                              image_proj: Projections, text_proj: Projections, heads: int, *, eta: str = "approx",
                              image_rows_only: bool = False, eps: float = 1e-6,
                              backend: str = "auto") -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Fully linear joint attention: one ReLU linear attention over all keys (text and image), read by
    every query (image rows, and text rows unless ``image_rows_only``)."""
    q_image = F.relu(projected_heads(image_proj.query, image, heads, image_proj.norm_query))
    k_image = F.relu(projected_heads(image_proj.key, image, heads, image_proj.norm_key))
    v_image = projected_heads(image_proj.value, image, heads)
    k_text = F.relu(projected_heads(text_proj.key, text, heads, text_proj.norm_key))
    v_text = projected_heads(text_proj.value, text, heads)
    keys, values = torch.cat([k_text, k_image], dim=2), torch.cat([v_text, v_image], dim=2)
    image_rows = merge_heads(linear_attention(q_image, keys, values, eps=eps, backend=backend))
    if image_rows_only:
        return image_rows, None
    q_text = F.relu(projected_heads(text_proj.query, text, heads, text_proj.norm_query))
    return image_rows, merge_heads(linear_attention(q_text, keys, values, eps=eps, backend=backend))


# ---------------------------------------------------------------------------------------------- linfusion


@torch.no_grad()
def initialize_mapping(m: nn.ModuleDict, generator: Optional[torch.Generator] = None) -> None:
    """One LinFusion mapping: fc_in Kaiming-uniform (torch's default bound), LayerNorm identity, fc_out zero, so
    f = 0 at step 0."""
    bound = 1.0 / m["fc_in"].weight.shape[1] ** 0.5
    m["fc_in"].weight.copy_(torch.empty(m["fc_in"].weight.shape).uniform_(-bound, bound, generator=generator))
    m["fc_in"].bias.copy_(torch.empty(m["fc_in"].bias.shape).uniform_(-bound, bound, generator=generator))
    m["norm"].weight.fill_(1.0)
    m["norm"].bias.zero_()
    m["fc_out"].weight.zero_()
    m["fc_out"].bias.zero_()


class LinFusionLayer(nn.Module):
    """LinFusion's per-layer tensors: the query and key mappings f_q, f_k (C → C → C)."""

    def __init__(self, channels: int, reduction: int = 4, negative_slope: float = 0.01, dtype=None, device=None,
                 operations=None, **_):
        super().__init__()
        ops = operations if operations is not None else nn
        self.negative_slope = negative_slope

        def mapping():
            return nn.ModuleDict({
                "fc_in": ops.Linear(channels, channels, dtype=dtype, device=device),
                "norm": ops.LayerNorm(channels, eps=1e-5, dtype=dtype, device=device),
                "fc_out": ops.Linear(channels, channels, dtype=dtype, device=device)})

        self.query_map, self.key_map = mapping(), mapping()

    @torch.no_grad()
    def initialize(self, generator: Optional[torch.Generator] = None) -> None:
        for m in (self.query_map, self.key_map):
            initialize_mapping(m, generator)

    def mapped(self, which: str, x: torch.Tensor) -> torch.Tensor:
        m = self.query_map if which == "query" else self.key_map
        y = m["fc_out"](F.leaky_relu(m["norm"](m["fc_in"](x)), self.negative_slope))
        return x + y


def linfusion_self_attention(layer: LinFusionLayer, x: torch.Tensor, grid, proj: Projections, heads: int, *,
                             eps: float = 1e-6, backend: str = "auto") -> torch.Tensor:
    q = elu_feature(projected_heads(proj.query, layer.mapped("query", x), heads, proj.norm_query))
    k = elu_feature(projected_heads(proj.key, layer.mapped("key", x), heads, proj.norm_key))
    v = projected_heads(proj.value, x, heads)
    return merge_heads(linear_attention(q, k, v, eps=eps, backend=backend))


# ---------------------------------------------------------------------------------------------- edit ablation


class CompressorsOnly(nn.Module):
    """EDiT's per-layer tensors without ConvFusion: the key and value Spatial Compressors."""

    def __init__(self, channels: int, reduction: int = 4, dtype=None, device=None, operations=None, **_):
        super().__init__()
        self.key_compressor = SpatialCompressor(channels, dtype=dtype, device=device, operations=operations)
        self.value_compressor = SpatialCompressor(channels, dtype=dtype, device=device, operations=operations)

    @torch.no_grad()
    def initialize(self, generator=None) -> None:
        self.key_compressor.initialize()
        self.value_compressor.initialize()


def edit_no_convfusion_self_attention(layer: CompressorsOnly, x: torch.Tensor, grid, proj: Projections, heads: int,
                                      *, eps: float = 1e-6, backend: str = "auto") -> torch.Tensor:
    q = F.relu(projected_heads(proj.query, x, heads, proj.norm_query))
    k, v = compressed_key_value(layer, proj.key(x), proj.value(x), grid, heads, proj.norm_key)
    return merge_heads(linear_attention(q, k, v, eps=eps, backend=backend))


# ---------------------------------------------------------------------------------------------- kv_compress


class LearnedKVCompression(nn.Module):
    """PixArt-Σ's KV compression tensors: one depthwise 2×2 stride-2 conv and one LayerNorm(C), both shared
    by keys and values."""

    ratio = 2

    def __init__(self, channels: int, reduction: int = 4, dtype=None, device=None, operations=None, **_):
        super().__init__()
        ops = operations if operations is not None else nn
        self.conv = ops.Conv2d(channels, channels, 2, stride=2, groups=channels, dtype=dtype, device=device)
        self.norm = ops.LayerNorm(channels, eps=1e-6, dtype=dtype, device=device)

    @torch.no_grad()
    def initialize(self, generator=None) -> None:
        self.conv.weight.fill_(1.0 / 4)
        self.conv.bias.zero_()
        self.norm.weight.fill_(1.0)
        self.norm.bias.zero_()

    def compress(self, x: torch.Tensor, grid) -> torch.Tensor:
        """[B, N, C] on ``grid`` → LN(DWConv(x)) [B, ⌈h/2⌉·⌈w/2⌉, C]."""
        y = tokens_to_grid(x, grid)
        h, w = y.shape[-2:]
        if h % 2 or w % 2:
            y = F.pad(y, (0, w % 2, 0, h % 2), mode="replicate")
        return self.norm(grid_to_tokens(self.conv(y)))


def learned_kv_self_attention(layer: LearnedKVCompression, x: torch.Tensor, grid, proj: Projections, heads: int, *,
                              eps: float = 1e-6, backend: str = "auto") -> torch.Tensor:
    q = projected_heads(proj.query, x, heads, proj.norm_query)
    k = _norm(proj.norm_key, split_heads(layer.compress(proj.key(x), grid), heads))
    v = split_heads(layer.compress(proj.value(x), grid), heads)
    return merge_heads(F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype)))


def learned_kv_joint_attention(layer: LearnedKVCompression, image: torch.Tensor, text: torch.Tensor, grid,
                               image_proj: Projections, text_proj: Projections, heads: int, *, eta: str = "approx",
                               image_rows_only: bool = False, eps: float = 1e-6,
                               backend: str = "auto") -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Softmax joint attention over [text keys, compressed image keys]; image and text rows both read it."""
    k_image = _norm(image_proj.norm_key, split_heads(layer.compress(image_proj.key(image), grid), heads))
    v_image = split_heads(layer.compress(image_proj.value(image), grid), heads)
    k_text = projected_heads(text_proj.key, text, heads, text_proj.norm_key)
    v_text = projected_heads(text_proj.value, text, heads)
    keys = torch.cat([k_text, k_image.to(k_text.dtype)], dim=2)
    values = torch.cat([v_text, v_image.to(v_text.dtype)], dim=2)
    q_image = projected_heads(image_proj.query, image, heads, image_proj.norm_query)
    image_rows = merge_heads(F.scaled_dot_product_attention(q_image, keys, values))
    if image_rows_only:
        return image_rows, None
    q_text = projected_heads(text_proj.query, text, heads, text_proj.norm_query)
    return image_rows, merge_heads(F.scaled_dot_product_attention(q_text, keys, values))


__all__ = ["NoWeights", "LinFusionLayer", "initialize_mapping", "CompressorsOnly", "LearnedKVCompression",
           "elu_feature", "sana_self_attention", "mm_linear_joint_attention", "linfusion_self_attention",
           "edit_no_convfusion_self_attention", "learned_kv_self_attention", "learned_kv_joint_attention"]
