"""PyTorch linear attention: fp32 state, token-chunked so memory stays linear in N.

    S = Σ_j k_jᵀ v_j  (D×Dv),   z = Σ_j k_j  (D),   y_i = (q_i S) / (q_i·z + eps)

The state and the division are fp32 whatever the input dtype: at 262k tokens a bf16/fp16 sum of
products overflows or loses all precision. Inputs are converted to fp32 one chunk at a time, so the
fp32 temporaries are bounded by the chunk, not by N. Autocast is switched off around these matmuls:
under ``torch.autocast`` a ``.float()`` operand would otherwise be cast straight back to bf16/fp16.
"""

from __future__ import annotations

import contextlib

import torch


def fp32_region(t: torch.Tensor):
    """A context in which matmuls on ``t``'s device stay in the dtype of their operands (autocast off)."""
    if torch.is_autocast_enabled(t.device.type):
        return torch.autocast(device_type=t.device.type, enabled=False)
    return contextlib.nullcontext()

CHUNK_TOKENS = 16384


def linear_attention_state(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """k [B, H, M, D], v [B, H, M, Dv] → (S [B, H, D, Dv], z [B, H, D]) in fp32 (also under autocast)."""
    with fp32_region(k):
        return _state(k, v)


def _state(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    state = None
    normaliser = None
    for start in range(0, k.shape[-2], CHUNK_TOKENS):
        k_chunk = k[..., start:start + CHUNK_TOKENS, :].float()
        v_chunk = v[..., start:start + CHUNK_TOKENS, :].float()
        s = k_chunk.transpose(-1, -2) @ v_chunk
        z = k_chunk.sum(-2)
        state = s if state is None else state + s
        normaliser = z if normaliser is None else normaliser + z
    return state, normaliser


def linear_attention_apply(q: torch.Tensor, state: torch.Tensor, normaliser: torch.Tensor,
                           eps: float, out_dtype: torch.dtype) -> torch.Tensor:
    """q [B, H, N, D] with the fp32 state → [B, H, N, Dv] in ``out_dtype`` (fp32 math also under autocast)."""
    with fp32_region(q):
        return _apply(q, state, normaliser, eps, out_dtype)


def _apply(q: torch.Tensor, state: torch.Tensor, normaliser: torch.Tensor, eps: float,
           out_dtype: torch.dtype) -> torch.Tensor:
    def rows(q_chunk: torch.Tensor) -> torch.Tensor:
        q_chunk = q_chunk.float()
        return ((q_chunk @ state) / ((q_chunk @ normaliser.unsqueeze(-1)) + eps)).to(out_dtype)

    if q.shape[-2] <= CHUNK_TOKENS:
        return rows(q)
    out = q.new_empty(*q.shape[:-1], state.shape[-1], dtype=out_dtype)  # written chunk by chunk: no concat copy
    for start in range(0, q.shape[-2], CHUNK_TOKENS):
        out[..., start:start + CHUNK_TOKENS, :] = rows(q[..., start:start + CHUNK_TOKENS, :])
    return out


def linear_attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    if k.shape[-2] == 0:
        return torch.zeros(*q.shape[:-1], v.shape[-1], dtype=v.dtype, device=q.device)
    state, normaliser = linear_attention_state(k, v)
    return linear_attention_apply(q, state, normaliser, eps, v.dtype)
