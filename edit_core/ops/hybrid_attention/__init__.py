"""MM-EDiT hybrid joint attention (SD3.5-style MMDiT).

    image rows:  Y_I = η · LinAttn(Q_I^EDiT, K_I^EDiT, V_I^EDiT) + (1 − η) · softmax(Q_I K_Tᵀ/√d) V_T
    text rows:   Y_T = softmax(Q_T [K_I; K_T]ᵀ/√d) [V_I; V_T]        (exact, uncompressed image K/V)

``eta="approx"``: η̂ = N_I / (N_I + N_T) with N_I the *uncompressed* image length and N_T the real
runtime text length (padding included) — the paper's default. ``eta="exact"``: η_i = Z_lin / (Z_lin +
Z_softmax) from the two branches' own normalisers (an ablation; the scales are not comparable).

Token order is given by ``text_first`` (ComfyUI concatenates [text, image], diffusers [image, text]).
``image_rows_only`` skips the text rows (SD3's last block discards them).

``hybrid_joint_attention_streams`` takes the text and image q/k/v as separate tensors and returns the two
row sets separately: the form hosts use, since it never materialises the [text; image] concatenation
(3 joint q/k/v copies and a joint output, each as large as the image stream).
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import backends
from .naive import naive_hybrid_joint_attention
from .torch_impl import hybrid_joint_attention_streams_torch, hybrid_joint_attention_torch

OP_NAME = "hybrid_joint_attention"
ETA_MODES = ("approx", "exact")

backends.register_backend(OP_NAME, "torch", hybrid_joint_attention_torch, priority=0)


def hybrid_joint_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           linear_q: torch.Tensor, linear_k: torch.Tensor, linear_v: torch.Tensor, *,
                           num_text: int, text_first: bool, eta: str = "approx", image_rows_only: bool = False,
                           eps: float = 1e-6, backend: str = "auto") -> torch.Tensor:
    """Joint q, k, v [B, H, L, D] (softmax branch, L = N_T + N_I, after qk-norm); linear_q [B, H, N_I, D] and
    linear_k [B, H, M, D] feature-mapped, linear_v [B, H, M, D]. Returns [B, H, L, D] in the input token
    order, or [B, H, N_I, D] with ``image_rows_only``."""
    if eta not in ETA_MODES:
        raise ValueError(f"eta must be one of {ETA_MODES}, got {eta!r}")
    if q.dim() != 4 or q.shape != k.shape or k.shape[:3] != v.shape[:3]:
        raise ValueError(f"hybrid_joint_attention expects joint q, k, v [B, H, L, D]; got q{tuple(q.shape)} "
                         f"k{tuple(k.shape)} v{tuple(v.shape)}")
    num_image = q.shape[-2] - num_text
    if not 0 <= num_text < q.shape[-2]:
        raise ValueError(f"num_text={num_text} must be in [0, {q.shape[-2]}) for a joint length of {q.shape[-2]}")
    if linear_q.shape[-2] != num_image:
        raise ValueError(f"linear_q has {linear_q.shape[-2]} rows but the joint sequence has {num_image} image tokens")
    kwargs = {}
    if backend not in ("auto", "torch") and backend not in backends.available_backends(OP_NAME):
        # no fused hybrid for this backend: the torch blend with the forced backend's linear attention
        fn, kwargs["linear_backend"] = hybrid_joint_attention_torch, backend
    else:
        fn = backends.resolve(OP_NAME, backend, q, k, v, linear_q, linear_k, linear_v)
        if backend != "auto" and fn is hybrid_joint_attention_torch:
            kwargs["linear_backend"] = backend
    return fn(q, k, v, linear_q, linear_k, linear_v, num_text=num_text, text_first=text_first, eta=eta,
              image_rows_only=image_rows_only, eps=eps, **kwargs)


def hybrid_joint_attention_streams(q_text: torch.Tensor, k_text: torch.Tensor, v_text: torch.Tensor,
                                   q_image: torch.Tensor, k_image: torch.Tensor, v_image: torch.Tensor,
                                   linear_q: torch.Tensor, linear_k: torch.Tensor, linear_v: torch.Tensor, *,
                                   eta: str = "approx", image_rows_only: bool = False, eps: float = 1e-6,
                                   backend: str = "auto") -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The same attention on separate streams: q/k/v_text [B, H, N_T, D], q/k/v_image [B, H, N_I, D] (softmax
    branch, after qk-norm), linear_* as in ``hybrid_joint_attention``. Returns (image rows [B, H, N_I, D],
    text rows [B, H, N_T, D] or None with ``image_rows_only``). ``backend`` picks the linear-attention
    backend (the blend itself is torch)."""
    if eta not in ETA_MODES:
        raise ValueError(f"eta must be one of {ETA_MODES}, got {eta!r}")
    shapes = [tuple(t.shape) for t in (q_text, k_text, v_text, q_image, k_image, v_image)]
    if any(len(s) != 4 for s in shapes) or q_text.shape != k_text.shape or q_image.shape != k_image.shape \
            or k_text.shape[:3] != v_text.shape[:3] or k_image.shape[:3] != v_image.shape[:3] \
            or q_text.shape[:2] != q_image.shape[:2]:
        raise ValueError(f"hybrid_joint_attention_streams expects q/k/v_text [B, H, N_T, D] and q/k/v_image "
                         f"[B, H, N_I, D]; got {shapes}")
    if q_image.shape[-2] < 1:
        raise ValueError("hybrid_joint_attention_streams needs at least one image token")
    if linear_q.shape[-2] != q_image.shape[-2]:
        raise ValueError(f"linear_q has {linear_q.shape[-2]} rows but there are {q_image.shape[-2]} image tokens")
    return hybrid_joint_attention_streams_torch(q_text, k_text, v_text, q_image, k_image, v_image, linear_q,
                                                linear_k, linear_v, eta=eta, image_rows_only=image_rows_only,
                                                eps=eps, linear_backend=backend)


__all__ = ["hybrid_joint_attention", "hybrid_joint_attention_streams", "naive_hybrid_joint_attention", "ETA_MODES",
           "OP_NAME"]
