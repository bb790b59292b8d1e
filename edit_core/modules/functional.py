"""EDiT attention as functions of host-provided projections.

Hosts (diffusers processors, ComfyUI patchers, the standalone modules) keep the teacher's projection
weights where their own state dicts expect them and hand them in as ``Projections``: callables
[B, N, C] → [B, N, C] for W_q, W_k, W_v, plus optional per-head norms applied on the last dim of
[B, H, N, D] (SD3.5's RMS qk-norm). All attention math lives here and in ``edit_core.ops``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..ops import hybrid_joint_attention_streams, linear_attention
from .layer_adapter import EDiTLayerAdapter
from .tokens import merge_heads, split_heads

Projection = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Projections:
    """One token stream's attention projections (the teacher's weights, owned by the host)."""
    query: Projection
    key: Projection
    value: Projection
    norm_query: Optional[Projection] = None
    norm_key: Optional[Projection] = None


def _norm(fn: Optional[Projection], x: torch.Tensor) -> torch.Tensor:
    return x if fn is None else fn(x)


def conv_fusion_query(layer: EDiTLayerAdapter, x: torch.Tensor, grid, proj: Projections, heads: int) -> torch.Tensor:
    """Q^EDiT = ReLU(norm_q(W_q(ConvFusion(x)))) → [B, H, N, D]."""
    q = split_heads(proj.query(layer.conv_fusion(x, grid)), heads)
    return F.relu(_norm(proj.norm_query, q))


def compressed_key_value(layer: EDiTLayerAdapter, keys: torch.Tensor, values: torch.Tensor, grid,
                         heads: int, norm_key: Optional[Projection] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected keys/values [B, N, C] → K^EDiT = ReLU(norm_k(DWConv(k))), V^EDiT = DWConv(v), both [B, H, M, D]."""
    k, _ = layer.key_compressor(keys, grid)
    v, _ = layer.value_compressor(values, grid)
    k = F.relu(_norm(norm_key, split_heads(k, heads)))
    return k, split_heads(v, heads)


def edit_self_attention(layer: EDiTLayerAdapter, x: torch.Tensor, grid, proj: Projections, heads: int, *,
                        eps: float = 1e-6, backend: str = "auto") -> torch.Tensor:
    """EDiT linear compressed self-attention. x [B, N, C] → [B, N, C] (before the output projection)."""
    q = conv_fusion_query(layer, x, grid, proj, heads)
    k, v = compressed_key_value(layer, proj.key(x), proj.value(x), grid, heads, proj.norm_key)
    return merge_heads(linear_attention(q, k, v, eps=eps, backend=backend))


def mm_edit_joint_attention(layer: EDiTLayerAdapter, image: torch.Tensor, text: torch.Tensor, grid,
                            image_proj: Projections, text_proj: Projections, heads: int, *, eta: str = "approx",
                            image_rows_only: bool = False, eps: float = 1e-6,
                            backend: str = "auto") -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """MM-EDiT hybrid joint attention of an image stream [B, N_I, C] and a text stream [B, N_T, C].

    Returns (image rows [B, N_I, C], text rows [B, N_T, C] or None with ``image_rows_only``), before the
    two output projections. Softmax branches use the teacher's plain, uncompressed, qk-normed q/k/v.
    Memory: the streams are never concatenated (``hybrid_joint_attention_streams``), and each image-sized
    intermediate is dropped as soon as its last use is done (the compressed K/V before the plain keys are
    normed, the plain projections once normed)."""
    keys_image, values_image = image_proj.key(image), image_proj.value(image)
    linear_k, linear_v = compressed_key_value(layer, keys_image, values_image, grid, heads, image_proj.norm_key)
    k_image = _norm(image_proj.norm_key, split_heads(keys_image, heads))
    v_image = split_heads(values_image, heads)
    del keys_image, values_image  # (still alive as k_image / v_image where those are views)
    linear_q = conv_fusion_query(layer, image, grid, image_proj, heads)
    q_image = _norm(image_proj.norm_query, split_heads(image_proj.query(image), heads))
    q_text = _norm(text_proj.norm_query, split_heads(text_proj.query(text), heads))
    k_text = _norm(text_proj.norm_key, split_heads(text_proj.key(text), heads))
    v_text = split_heads(text_proj.value(text), heads)

    image_rows, text_rows = hybrid_joint_attention_streams(q_text, k_text, v_text, q_image, k_image, v_image,
                                                           linear_q, linear_k, linear_v, eta=eta,
                                                           image_rows_only=image_rows_only, eps=eps,
                                                           backend=backend)
    return merge_heads(image_rows), (None if text_rows is None else merge_heads(text_rows))
