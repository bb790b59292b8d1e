"""Standalone EDiT attention modules that own the teacher's projections under canonical names.

``EDiTSelfAttention`` replaces a DiT self-attention (PixArt-Σ ``attn``, SD3.5-M ``attn2``);
``MMEDiTJointAttention`` replaces an SD3.5-M joint attention with the MM-EDiT hybrid. Both are used by
the benchmark, the demo and layer-wise distillation; host integrations call the same functions in
``functional`` with their own projection modules instead. Canonical names follow diffusers:
``to_q/to_k/to_v/to_out`` (+ ``norm_q/norm_k``) for the image stream, ``add_q_proj/add_k_proj/
add_v_proj/to_add_out`` (+ ``norm_added_q/norm_added_k``) for the text stream, ``edit`` for the
``EDiTLayerAdapter``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .functional import Projections, edit_self_attention, mm_edit_joint_attention
from .layer_adapter import EDiTLayerAdapter


def _rms_norm(ops, dim: int, dtype, device):
    cls = getattr(ops, "RMSNorm", nn.RMSNorm)
    return cls(dim, eps=1e-6, elementwise_affine=True, dtype=dtype, device=device)


class EDiTSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, *, reduction: int = 4, qk_norm: Optional[str] = None,
                 bias: bool = True, eps: float = 1e-6, backend: str = "auto", dtype=None, device=None,
                 operations=None):
        super().__init__()
        ops = operations if operations is not None else nn
        if dim % heads:
            raise ValueError(f"EDiTSelfAttention: dim {dim} is not divisible by {heads} heads")
        self.dim, self.heads, self.eps, self.backend = dim, heads, eps, backend
        self.to_q = ops.Linear(dim, dim, bias=bias, dtype=dtype, device=device)
        self.to_k = ops.Linear(dim, dim, bias=bias, dtype=dtype, device=device)
        self.to_v = ops.Linear(dim, dim, bias=bias, dtype=dtype, device=device)
        self.to_out = ops.Linear(dim, dim, bias=True, dtype=dtype, device=device)
        if qk_norm == "rms":
            self.norm_q = _rms_norm(ops, dim // heads, dtype, device)
            self.norm_k = _rms_norm(ops, dim // heads, dtype, device)
        elif qk_norm is None:
            self.norm_q = self.norm_k = None
        else:
            raise ValueError(f"qk_norm must be None or 'rms', got {qk_norm!r}")
        self.edit = EDiTLayerAdapter(dim, reduction, dtype=dtype, device=device, operations=operations)

    def projections(self) -> Projections:
        return Projections(self.to_q, self.to_k, self.to_v, self.norm_q, self.norm_k)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        y = edit_self_attention(self.edit, x, grid, self.projections(), self.heads, eps=self.eps,
                                backend=self.backend)
        return self.to_out(y)


class MMEDiTJointAttention(nn.Module):
    def __init__(self, dim: int, heads: int, *, reduction: int = 4, qk_norm: Optional[str] = "rms",
                 context_pre_only: bool = False, eta: str = "approx", eps: float = 1e-6, backend: str = "auto",
                 dtype=None, device=None, operations=None):
        super().__init__()
        ops = operations if operations is not None else nn
        self.dim, self.heads, self.eta, self.eps, self.backend = dim, heads, eta, eps, backend
        self.context_pre_only = context_pre_only
        for name in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"):
            setattr(self, name, ops.Linear(dim, dim, bias=True, dtype=dtype, device=device))
        self.to_out = ops.Linear(dim, dim, bias=True, dtype=dtype, device=device)
        self.to_add_out = None if context_pre_only else ops.Linear(dim, dim, bias=True, dtype=dtype, device=device)
        head_dim = dim // heads
        use_norm = qk_norm == "rms"
        for name in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
            setattr(self, name, _rms_norm(ops, head_dim, dtype, device) if use_norm else None)
        self.edit = EDiTLayerAdapter(dim, reduction, dtype=dtype, device=device, operations=operations)

    def forward(self, image: torch.Tensor, text: torch.Tensor,
                grid: tuple[int, int]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        image_proj = Projections(self.to_q, self.to_k, self.to_v, self.norm_q, self.norm_k)
        text_proj = Projections(self.add_q_proj, self.add_k_proj, self.add_v_proj, self.norm_added_q,
                                self.norm_added_k)
        image_rows, text_rows = mm_edit_joint_attention(
            self.edit, image, text, grid, image_proj, text_proj, self.heads, eta=self.eta,
            image_rows_only=self.context_pre_only, eps=self.eps, backend=self.backend)
        return self.to_out(image_rows), (None if text_rows is None else self.to_add_out(text_rows))
