"""ReLU linear attention (the image↔image path of EDiT and MM-EDiT).

``linear_attention(q, k, v)`` takes feature-mapped (already ReLU'd, non-negative) queries and keys and
returns ``(q S) / (q z + eps)`` with ``S = kᵀ v`` and ``z = Σ k`` computed in fp32. There is no 1/√d
scale: any positive scale of q or k cancels in the ratio.

Backends: ``"torch"`` (reference-grade, chunked, differentiable), ``"triton"`` (``triton_impl``: fused
kernels and a Triton backward; registered when triton imports; CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1`` for tests), ``"auto"`` (triton for CUDA inputs it can run, else torch; never the
CPU interpreter). ``naive.naive_linear_attention`` is the float64 quadratic-form reference used by the tests.
"""

from __future__ import annotations

import logging

import torch

from .. import backends
from .naive import naive_linear_attention
from .torch_impl import linear_attention_torch

OP_NAME = "linear_attention"

backends.register_backend(OP_NAME, "torch", linear_attention_torch, priority=0)


def _load_triton() -> None:
    """Import and register the Triton backend (lazily: importing triton takes about a second). A missing or
    broken triton only marks the backend unavailable, with the reason shown when someone forces it."""
    try:
        from .triton_impl import linear_attention_triton, triton_auto_ok, triton_supports
    except Exception as exc:  # noqa: BLE001 - a missing or broken triton must not break the node pack
        if isinstance(exc, ModuleNotFoundError) and exc.name == "triton":
            backends.mark_unavailable("triton", "install triton (pip install triton) — it needs an NVIDIA GPU")
        else:
            backends.mark_unavailable("triton", f"triton failed to import ({type(exc).__name__}: {exc}); "
                                                "reinstall the triton version that matches your torch")
    else:
        backends.register_backend(OP_NAME, "triton", linear_attention_triton, priority=10,
                                  supports=triton_supports, auto_ok=triton_auto_ok)


backends.register_lazy_backend(OP_NAME, "triton", _load_triton, may_apply=lambda q, *rest, **kw: q.is_cuda)


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
    if backend != "auto" or fn is linear_attention_torch:
        return fn(q, k, v, eps=eps)
    try:  # "auto" never fails where torch would work: a kernel that cannot compile here falls back
        return fn(q, k, v, eps=eps)
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # noqa: BLE001
        name = next(n for n in backends.available_backends(OP_NAME)
                    if backends._REGISTRY[OP_NAME][n].fn is fn)
        backends.disable_for_auto(OP_NAME, name, f"{type(exc).__name__}: {exc}")
        logging.getLogger("edit_core").warning(
            "EDiT: the %s linear-attention backend failed (%s: %s); using the torch backend from now on",
            name, type(exc).__name__, exc)
        return linear_attention_torch(q, k, v, eps=eps)


__all__ = ["linear_attention", "naive_linear_attention", "linear_attention_torch", "OP_NAME"]
