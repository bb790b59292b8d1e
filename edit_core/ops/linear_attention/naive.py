"""Float64 reference for ReLU linear attention, written in the quadratic (attention-matrix) form.

It shares no code with the fast paths: ``A = q kᵀ`` is materialised and each row normalised by its sum,
which is what the associative ``q (kᵀ[v, 1])`` form must reproduce. Use only on small shapes.
"""

from __future__ import annotations

import torch


def naive_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """q [B, H, N, D], k [B, H, M, D] (non-negative), v [B, H, M, Dv] → [B, H, N, Dv] in float64."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-1, -2)  # B,H,N,M
    return (scores @ v) / (scores.sum(-1, keepdim=True) + eps)
