"""ReLU linear attention (the image↔image path of EDiT and MM-EDiT).

``linear_attention(q, k, v)`` takes feature-mapped (already ReLU'd, non-negative) queries and keys and
returns ``(q S) / (q z + eps)`` with ``S = kᵀ v`` and ``z = Σ k`` computed in fp32. There is no 1/√d
scale: any positive scale of q or k cancels in the ratio.

Backends: ``"torch"`` (reference-grade, chunked, differentiable), ``"triton"`` (fused kernels, GPU
only, registered when available), ``"auto"`` (the best available). ``naive.naive_linear_attention``
is the float64 quadratic-form reference used by the tests.
"""

from __future__ import annotations

import torch

from .. import backends
from .naive import naive_linear_attention
from .torch_impl import linear_attention_torch

OP_NAME = "linear_attention"

backends.register_backend(OP_NAME, "torch", linear_attention_torch, priority=0)


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"linear_attention expects 4-D [B, H, N, D] tensors, got q{tuple(q.shape)} "
                         f"k{tuple(k.shape)} v{tuple(v.shape)}")
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3]:
        raise ValueError(f"linear_attention shape mismatch: q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)} "
                         "(need q [B,H,N,D], k [B,H,M,D], v [B,H,M,Dv])")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"linear_attention: q and k head dims differ ({q.shape[-1]} vs {k.shape[-1]})")


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6,
                     backend: str = "auto") -> torch.Tensor:
    """q [B, H, N, D], k [B, H, M, D] non-negative; v [B, H, M, Dv] → [B, H, N, Dv] in v's dtype."""
    _check_shapes(q, k, v)
    fn = backends.resolve(OP_NAME, backend, q, k, v)
    return fn(q, k, v, eps=eps)


__all__ = ["linear_attention", "naive_linear_attention", "linear_attention_torch", "OP_NAME"]
