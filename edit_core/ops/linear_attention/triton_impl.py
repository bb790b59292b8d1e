"""Triton linear attention: fused state and apply kernels, Triton backward, deterministic reductions.

    S = Σ_j relu(k_j)ᵀ v_j  (D×Dv, fp32),   z = Σ_j relu(k_j)  (D, fp32)
    y_i = (relu(q_i) S) / (relu(q_i)·z + eps)   → v's dtype

Forward, two launches plus a fixed-order sum:
  ``linear_attention_state_fwd_kernel``  grid (chunks, B·H): each program sums its own run of
      ``tokens_per_program`` keys into a private fp32 partial (S, z); the partials are then added in a
      fixed order (``torch.sum`` over the chunk axis). No atomics, so results are bitwise reproducible.
  ``linear_attention_apply_fwd_kernel``  grid (⌈N/BLOCK_N⌉, B·H): one pass per query tile — ReLU,
      ``q S`` and ``q·z`` in fp32, divide, cast, store.
Backward (exact, Triton; no torch recompute):
  ``linear_attention_query_bwd_kernel``  grid (chunks, B·H): recomputes y per query tile and writes
      dq = mask_q·(g/den Sᵀ − (g·y)/den zᵀ); sums dS = qᵀ(g/den), dz = qᵀ(−(g·y)/den) into partials.
  ``linear_attention_key_bwd_kernel``    grid (⌈M/BLOCK_M⌉, B·H): dk = mask_k·(v dSᵀ + dz), dv = relu(k) dS.

The op contract (see ``__init__``) passes q and k already feature-mapped (non-negative). The kernels apply
ReLU again as they load, which is the identity on such inputs, so a later caller may pass raw projections.
The gradient mask is ``raw ≥ 0``: on non-negative inputs the gradients equal the torch path's exactly,
and wherever a raw input is negative its gradient is zero.

Precision: every tile is converted to fp32 on load and every ``tl.dot`` accumulates in fp32. For 16-bit
inputs the dots run in TF32: bf16 and fp16 values are exact in TF32, so the state kᵀv has exact products;
the fp32 factors (S, gradients) are rounded to TF32's 10-bit mantissa, below a 16-bit output's rounding.
fp32 inputs use IEEE fp32 dots unless ``torch.backends.cuda.matmul.allow_tf32`` is set. (Converting
first also sidesteps Triton 3.8's interpreter, whose bf16 ``tl.dot`` returns garbage.) Head dims up to
128: blocks are padded to the next power of two (≥ 16) and masked, so D = 72 runs in 128-wide tiles.

torch.compile: the op is wrapped in ``torch.compiler.disable`` — one graph break, the kernels and their
backward run eagerly, as in kijai's packs. Opt in to tracing with ``EDIT_TRITON_ALLOW_COMPILE=1`` (read at
import) or ``triton_impl.ALLOW_COMPILE = True``: Dynamo then traces the autograd.Function and launches
the user-defined Triton kernels itself (CUDA only; Dynamo cannot trace the CPU interpreter).

Launch sizes (GPU: 64-token tiles, 4 warps, 8 when the padded D×Dv tile exceeds 64×64; about two
programs per SM for the chunked reductions) are first guesses, not yet tuned on a GPU.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

MAX_HEAD_DIM = 128
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
ALLOW_COMPILE = os.environ.get("EDIT_TRITON_ALLOW_COMPILE", "0") == "1"
POISON_BUFFERS = False
"""Tests set this to fill every buffer the kernels write with NaN first, so an unwritten element shows."""


# ----------------------------------------------------------------------------------------------- kernels

@triton.jit
def linear_attention_state_fwd_kernel(
        K, V, S_PART, Z_PART,
        stride_kb, stride_kh, stride_km, stride_kd,
        stride_vb, stride_vh, stride_vm, stride_vd,
        H, M, D, DV, tokens_per_program,
        BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        FP32_PRECISION: tl.constexpr):
    pid_chunk = tl.program_id(0)
    pid_bh = tl.program_id(1)
    num_chunks = tl.num_programs(0)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_d = offs_d < D
    mask_dv = offs_dv < DV
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh

    state = tl.zeros((BLOCK_D, BLOCK_DV), dtype=tl.float32)
    normaliser = tl.zeros((BLOCK_D,), dtype=tl.float32)
    start = pid_chunk * tokens_per_program
    end = tl.minimum(start + tokens_per_program, M)
    for m0 in range(start, end, BLOCK_M):
        rows = (m0 + offs_m).to(tl.int64)
        mask_m = rows < end
        k = tl.load(k_base + rows[:, None] * stride_km + offs_d[None, :] * stride_kd,
                    mask=mask_m[:, None] & mask_d[None, :], other=0.0).to(tl.float32)   # BLOCK_M, BLOCK_D
        v = tl.load(v_base + rows[:, None] * stride_vm + offs_dv[None, :] * stride_vd,
                    mask=mask_m[:, None] & mask_dv[None, :], other=0.0).to(tl.float32)  # BLOCK_M, BLOCK_DV
        k = tl.maximum(k, 0.0)
        state = tl.dot(tl.trans(k), v, state, input_precision=FP32_PRECISION)     # BLOCK_D, BLOCK_DV
        normaliser += tl.sum(k, axis=0)                                           # BLOCK_D

    part = pid_bh.to(tl.int64) * num_chunks + pid_chunk                           # S_PART [BH, C, D, DV]
    tl.store(S_PART + part * D * DV + offs_d[:, None] * DV + offs_dv[None, :], state,
             mask=mask_d[:, None] & mask_dv[None, :])
    tl.store(Z_PART + part * D + offs_d, normaliser, mask=mask_d)


@triton.jit
def linear_attention_apply_fwd_kernel(
        Q, S, Z, OUT,
        stride_qb, stride_qh, stride_qn, stride_qd,
        stride_ob, stride_oh, stride_on, stride_od,
        H, N, D, DV, eps,
        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        FP32_PRECISION: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    rows = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_n = rows < N
    mask_d = offs_d < D
    mask_dv = offs_dv < DV

    bh = pid_bh.to(tl.int64)
    state = tl.load(S + bh * D * DV + offs_d[:, None] * DV + offs_dv[None, :],
                    mask=mask_d[:, None] & mask_dv[None, :], other=0.0)            # BLOCK_D, BLOCK_DV fp32
    normaliser = tl.load(Z + bh * D + offs_d, mask=mask_d, other=0.0)             # BLOCK_D fp32
    q = tl.load(Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qn + offs_d[None, :] * stride_qd,
                mask=mask_n[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
    q = tl.maximum(q, 0.0)                                                        # BLOCK_N, BLOCK_D
    numerator = tl.dot(q, state, input_precision=FP32_PRECISION)                  # BLOCK_N, BLOCK_DV
    denominator = tl.sum(q * normaliser[None, :], axis=1) + eps                   # BLOCK_N
    out = numerator / denominator[:, None]
    tl.store(OUT + b * stride_ob + h * stride_oh + rows[:, None] * stride_on + offs_dv[None, :] * stride_od,
             out.to(OUT.dtype.element_ty), mask=mask_n[:, None] & mask_dv[None, :])


@triton.jit
def linear_attention_query_bwd_kernel(
        Q, GRAD_OUT, S, Z, GRAD_Q, DS_PART, DZ_PART,
        stride_qb, stride_qh, stride_qn, stride_qd,
        stride_gb, stride_gh, stride_gn, stride_gd,
        stride_dqb, stride_dqh, stride_dqn, stride_dqd,
        H, N, D, DV, eps, tokens_per_program,
        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        FP32_PRECISION: tl.constexpr):
    pid_chunk = tl.program_id(0)
    pid_bh = tl.program_id(1)
    num_chunks = tl.num_programs(0)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    bh = pid_bh.to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_d = offs_d < D
    mask_dv = offs_dv < DV
    state = tl.load(S + bh * D * DV + offs_d[:, None] * DV + offs_dv[None, :],
                    mask=mask_d[:, None] & mask_dv[None, :], other=0.0)            # BLOCK_D, BLOCK_DV
    normaliser = tl.load(Z + bh * D + offs_d, mask=mask_d, other=0.0)             # BLOCK_D
    q_base = Q + b * stride_qb + h * stride_qh
    dq_base = GRAD_Q + b * stride_dqb + h * stride_dqh
    g_base = GRAD_OUT + b * stride_gb + h * stride_gh

    grad_state = tl.zeros((BLOCK_D, BLOCK_DV), dtype=tl.float32)
    grad_normaliser = tl.zeros((BLOCK_D,), dtype=tl.float32)
    start = pid_chunk * tokens_per_program
    end = tl.minimum(start + tokens_per_program, N)
    for n0 in range(start, end, BLOCK_N):
        rows = (n0 + offs_n).to(tl.int64)
        mask_n = rows < end
        mask_q = mask_n[:, None] & mask_d[None, :]
        q_raw = tl.load(q_base + rows[:, None] * stride_qn + offs_d[None, :] * stride_qd,
                        mask=mask_q, other=0.0).to(tl.float32)
        q = tl.maximum(q_raw, 0.0)                                                # BLOCK_N, BLOCK_D
        g = tl.load(g_base + rows[:, None] * stride_gn + offs_dv[None, :] * stride_gd,
                    mask=mask_n[:, None] & mask_dv[None, :], other=0.0).to(tl.float32)  # BLOCK_N, BLOCK_DV
        numerator = tl.dot(q, state, input_precision=FP32_PRECISION)
        denominator = tl.sum(q * normaliser[None, :], axis=1) + eps
        grad_numerator = g / denominator[:, None]                                 # BLOCK_N, BLOCK_DV
        grad_denominator = -tl.sum(grad_numerator * numerator, axis=1) / denominator  # BLOCK_N
        grad_q = tl.dot(grad_numerator, tl.trans(state), input_precision=FP32_PRECISION)
        grad_q += grad_denominator[:, None] * normaliser[None, :]                 # BLOCK_N, BLOCK_D
        grad_q = tl.where(q_raw >= 0, grad_q, 0.0)
        tl.store(dq_base + rows[:, None] * stride_dqn + offs_d[None, :] * stride_dqd,
                 grad_q.to(GRAD_Q.dtype.element_ty), mask=mask_q)
        grad_state = tl.dot(tl.trans(q), grad_numerator, grad_state, input_precision=FP32_PRECISION)
        grad_normaliser += tl.sum(q * grad_denominator[:, None], axis=0)

    part = bh * num_chunks + pid_chunk
    tl.store(DS_PART + part * D * DV + offs_d[:, None] * DV + offs_dv[None, :], grad_state,
             mask=mask_d[:, None] & mask_dv[None, :])
    tl.store(DZ_PART + part * D + offs_d, grad_normaliser, mask=mask_d)


@triton.jit
def linear_attention_key_bwd_kernel(
        K, V, DS, DZ, GRAD_K, GRAD_V,
        stride_kb, stride_kh, stride_km, stride_kd,
        stride_vb, stride_vh, stride_vm, stride_vd,
        stride_dkb, stride_dkh, stride_dkm, stride_dkd,
        stride_dvb, stride_dvh, stride_dvm, stride_dvd,
        H, M, D, DV,
        BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        FP32_PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    bh = pid_bh.to(tl.int64)
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_m = rows < M
    mask_d = offs_d < D
    mask_dv = offs_dv < DV
    grad_state = tl.load(DS + bh * D * DV + offs_d[:, None] * DV + offs_dv[None, :],
                         mask=mask_d[:, None] & mask_dv[None, :], other=0.0)       # BLOCK_D, BLOCK_DV
    grad_normaliser = tl.load(DZ + bh * D + offs_d, mask=mask_d, other=0.0)       # BLOCK_D
    mask_k = mask_m[:, None] & mask_d[None, :]
    mask_v = mask_m[:, None] & mask_dv[None, :]
    k_raw = tl.load(K + b * stride_kb + h * stride_kh + rows[:, None] * stride_km + offs_d[None, :] * stride_kd,
                    mask=mask_k, other=0.0).to(tl.float32)
    k = tl.maximum(k_raw, 0.0)                                                    # BLOCK_M, BLOCK_D
    v = tl.load(V + b * stride_vb + h * stride_vh + rows[:, None] * stride_vm + offs_dv[None, :] * stride_vd,
                mask=mask_v, other=0.0).to(tl.float32)                            # BLOCK_M, BLOCK_DV
    grad_k = tl.dot(v, tl.trans(grad_state), input_precision=FP32_PRECISION) + grad_normaliser[None, :]
    grad_k = tl.where(k_raw >= 0, grad_k, 0.0)
    grad_v = tl.dot(k, grad_state, input_precision=FP32_PRECISION)                # BLOCK_M, BLOCK_DV
    tl.store(GRAD_K + b * stride_dkb + h * stride_dkh + rows[:, None] * stride_dkm + offs_d[None, :] * stride_dkd,
             grad_k.to(GRAD_K.dtype.element_ty), mask=mask_k)
    tl.store(GRAD_V + b * stride_dvb + h * stride_dvh + rows[:, None] * stride_dvm + offs_dv[None, :] * stride_dvd,
             grad_v.to(GRAD_V.dtype.element_ty), mask=mask_v)


# ----------------------------------------------------------------------------------------------- launches

def _buffer(shape, dtype, device) -> torch.Tensor:
    return torch.full(shape, float("nan"), dtype=dtype, device=device) if POISON_BUFFERS \
        else torch.empty(shape, dtype=dtype, device=device)


def _buffer_like(t: torch.Tensor) -> torch.Tensor:
    return _buffer(t.shape, t.dtype, t.device)


def _block(dim: int) -> int:
    return max(16, triton.next_power_of_2(dim))


def _fp32_precision(dtype: torch.dtype) -> str:
    if dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _launch_config(device: torch.device, block_d: int, block_dv: int) -> tuple[int, int]:
    """(BLOCK_N for tokens, num_warps). The CPU interpreter pays per program×iteration, so it gets big tiles."""
    if device.type != "cuda":
        return 128, 4
    return 64, (4 if block_d * block_dv <= 64 * 64 else 8)


@functools.lru_cache(maxsize=None)
def _multiprocessors(index: int | None) -> int:
    return torch.cuda.get_device_properties(torch.cuda.current_device() if index is None else index
                                            ).multi_processor_count


def _tokens_per_program(tokens: int, block: int, batch_heads: int, device: torch.device) -> int:
    """Split each head's tokens into enough chunks to fill the GPU (≈ 2 programs per SM), in whole blocks."""
    blocks = triton.cdiv(tokens, block)
    target = 2 * _multiprocessors(device.index) if device.type == "cuda" else 4
    chunks = max(1, min(blocks, triton.cdiv(target, batch_heads)))
    return block * triton.cdiv(blocks, chunks)


def linear_attention_state_triton(k: torch.Tensor, v: torch.Tensor, *, block_m: int | None = None,
                                  tokens_per_program: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """k [B, H, M, D], v [B, H, M, Dv] → (S [B, H, D, Dv], z [B, H, D]) fp32, from relu(k)."""
    batch, heads, tokens, dim = k.shape
    dim_v = v.shape[-1]
    block_d, block_dv = _block(dim), _block(dim_v)
    default_block, num_warps = _launch_config(k.device, block_d, block_dv)
    block_m = block_m or default_block
    tokens_per_program = tokens_per_program or _tokens_per_program(tokens, block_m, batch * heads, k.device)
    if tokens_per_program % block_m:
        raise ValueError(f"tokens_per_program={tokens_per_program} must be a multiple of block_m={block_m}")
    chunks = triton.cdiv(tokens, tokens_per_program)
    state_parts = _buffer((batch * heads, chunks, dim, dim_v), torch.float32, k.device)
    normaliser_parts = _buffer((batch * heads, chunks, dim), torch.float32, k.device)
    linear_attention_state_fwd_kernel[(chunks, batch * heads)](
        k, v, state_parts, normaliser_parts, *k.stride(), *v.stride(),
        heads, tokens, dim, dim_v, tokens_per_program,
        BLOCK_M=block_m, BLOCK_D=block_d, BLOCK_DV=block_dv, FP32_PRECISION=_fp32_precision(k.dtype),
        num_warps=num_warps)
    # fixed-order reduction over chunks: deterministic, unlike atomics
    state = state_parts.sum(1).view(batch, heads, dim, dim_v)
    normaliser = normaliser_parts.sum(1).view(batch, heads, dim)
    return state, normaliser


def linear_attention_apply_triton(q: torch.Tensor, state: torch.Tensor, normaliser: torch.Tensor, eps: float,
                                  out_dtype: torch.dtype, *, block_n: int | None = None,
                                  out: torch.Tensor | None = None) -> torch.Tensor:
    """relu(q) [B, H, N, D] with the fp32 state → [B, H, N, Dv] in ``out_dtype`` (or into ``out``)."""
    batch, heads, tokens, dim = q.shape
    dim_v = state.shape[-1]
    block_d, block_dv = _block(dim), _block(dim_v)
    default_block, num_warps = _launch_config(q.device, block_d, block_dv)
    block_n = block_n or default_block
    if out is None:
        out = _buffer((batch, heads, tokens, dim_v), out_dtype, q.device)
    state, normaliser = state.contiguous(), normaliser.contiguous()
    linear_attention_apply_fwd_kernel[(triton.cdiv(tokens, block_n), batch * heads)](
        q, state, normaliser, out, *q.stride(), *out.stride(),
        heads, tokens, dim, dim_v, eps,
        BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_DV=block_dv, FP32_PRECISION=_fp32_precision(q.dtype),
        num_warps=num_warps)
    return out


def linear_attention_backward_triton(q, k, v, state, normaliser, grad_out, eps, *, block: int | None = None,
                                     tokens_per_program: int | None = None):
    """Exact gradients (dq, dk, dv) of ``y = relu(q) S / (relu(q)·z + eps)`` in the inputs' dtypes."""
    batch, heads, tokens, dim = q.shape
    keys, dim_v = v.shape[-2], v.shape[-1]
    block_d, block_dv = _block(dim), _block(dim_v)
    default_block, num_warps = _launch_config(q.device, block_d, block_dv)
    block = block or default_block
    precision = _fp32_precision(q.dtype)
    tokens_per_program = tokens_per_program or _tokens_per_program(tokens, block, batch * heads, q.device)
    if tokens_per_program % block:
        raise ValueError(f"tokens_per_program={tokens_per_program} must be a multiple of block={block}")
    chunks = triton.cdiv(tokens, tokens_per_program)
    state, normaliser = state.contiguous(), normaliser.contiguous()

    grad_q = _buffer_like(q)
    grad_state_parts = _buffer((batch * heads, chunks, dim, dim_v), torch.float32, q.device)
    grad_normaliser_parts = _buffer((batch * heads, chunks, dim), torch.float32, q.device)
    linear_attention_query_bwd_kernel[(chunks, batch * heads)](
        q, grad_out, state, normaliser, grad_q, grad_state_parts, grad_normaliser_parts,
        *q.stride(), *grad_out.stride(), *grad_q.stride(), heads, tokens, dim, dim_v, eps, tokens_per_program,
        BLOCK_N=block, BLOCK_D=block_d, BLOCK_DV=block_dv, FP32_PRECISION=precision, num_warps=num_warps)
    grad_state = grad_state_parts.sum(1).contiguous()
    grad_normaliser = grad_normaliser_parts.sum(1).contiguous()

    grad_k, grad_v = _buffer_like(k), _buffer_like(v)
    linear_attention_key_bwd_kernel[(triton.cdiv(keys, block), batch * heads)](
        k, v, grad_state, grad_normaliser, grad_k, grad_v,
        *k.stride(), *v.stride(), *grad_k.stride(), *grad_v.stride(), heads, keys, dim, dim_v,
        BLOCK_M=block, BLOCK_D=block_d, BLOCK_DV=block_dv, FP32_PRECISION=precision, num_warps=num_warps)
    return grad_q, grad_k, grad_v


# ----------------------------------------------------------------------------------------------- autograd

def _dense(t: torch.Tensor) -> torch.Tensor:
    """Strided inputs are fine; only an overlapping or broadcast layout (stride 0) needs a copy."""
    return t if all(s > 0 or n == 1 for s, n in zip(t.stride(), t.shape)) else t.contiguous()


class LinearAttentionTriton(torch.autograd.Function):
    """Forward with the fused kernels; backward with the Triton backward kernels (exact, no recompute
    through torch autograd). Saves the raw inputs and the small fp32 state (S, z)."""

    @staticmethod
    def forward(ctx, q, k, v, eps):
        q, k, v = _dense(q), _dense(k), _dense(v)
        if k.shape[-2] == 0 or q.shape[-2] == 0 or q.shape[0] * q.shape[1] == 0:
            state = torch.zeros(*k.shape[:2], k.shape[-1], v.shape[-1], dtype=torch.float32, device=k.device)
            normaliser = torch.zeros(*k.shape[:2], k.shape[-1], dtype=torch.float32, device=k.device)
            out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=v.dtype, device=q.device)
        else:
            state, normaliser = linear_attention_state_triton(k, v)
            out = linear_attention_apply_triton(q, state, normaliser, eps, v.dtype)
        ctx.save_for_backward(q, k, v, state, normaliser)
        ctx.eps = eps
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        q, k, v, state, normaliser = ctx.saved_tensors
        if q.numel() == 0 or k.numel() == 0 or v.numel() == 0:
            return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), None
        grad_q, grad_k, grad_v = linear_attention_backward_triton(
            q, k, v, state, normaliser, _dense(grad_out), ctx.eps)
        return grad_q, grad_k, grad_v, None


def _linear_attention_triton_eager(q, k, v, eps):
    return LinearAttentionTriton.apply(q, k, v, eps)


_linear_attention_triton_opaque = torch.compiler.disable(_linear_attention_triton_eager)


def linear_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """q [B, H, N, D], k [B, H, M, D] (ReLU is applied on load), v [B, H, M, Dv] → [B, H, N, Dv] in v's dtype."""
    if ALLOW_COMPILE:
        return _linear_attention_triton_eager(q, k, v, eps)
    return _linear_attention_triton_opaque(q, k, v, eps)


# ----------------------------------------------------------------------------------------------- selection

def kernels_interpreted() -> bool:
    """True when the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1`` before the import)."""
    return type(linear_attention_apply_fwd_kernel).__name__ == "InterpretedFunction"


def triton_supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> str | None:
    """None when the kernels can run these inputs (CUDA, or CPU under TRITON_INTERPRET=1), else why not."""
    if not (q.device == k.device == v.device):
        return f"q, k, v are on different devices ({q.device}, {k.device}, {v.device})"
    if q.device.type != "cuda":
        if os.environ.get("TRITON_INTERPRET") != "1":
            return (f"the triton backend needs CUDA tensors (got {q.device.type}); use backend='torch' or 'auto' "
                    "on this device (set TRITON_INTERPRET=1 before importing triton to run the kernels in "
                    "Triton's slow CPU interpreter, for tests)")
        if not kernels_interpreted():
            return ("TRITON_INTERPRET=1 was set after triton was imported; set it before the first import "
                    "to run the kernels on CPU")
    if not (q.dtype == k.dtype == v.dtype):
        return f"q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype}); cast them to one of fp16, bf16, fp32"
    if q.dtype not in SUPPORTED_DTYPES:
        return f"dtype {q.dtype} is not supported (fp16, bf16, fp32)"
    if q.shape[-1] > MAX_HEAD_DIM or v.shape[-1] > MAX_HEAD_DIM:
        return f"head dims D={q.shape[-1]}, Dv={v.shape[-1]} exceed {MAX_HEAD_DIM}"
    return None


def triton_auto_ok(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> str | None:
    """``backend="auto"`` uses the kernels on CUDA only: the interpreter is for tests, never a default."""
    if q.device.type != "cuda":
        return "auto uses the triton backend on CUDA tensors only"
    return triton_supports(q, k, v, **kwargs)


__all__ = ["linear_attention_triton", "linear_attention_state_triton", "linear_attention_apply_triton",
           "linear_attention_backward_triton", "LinearAttentionTriton", "triton_supports", "triton_auto_ok",
           "kernels_interpreted", "linear_attention_state_fwd_kernel", "linear_attention_apply_fwd_kernel",
           "linear_attention_query_bwd_kernel", "linear_attention_key_bwd_kernel"]
