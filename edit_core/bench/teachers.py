"""The softmax teachers of the layer sections, random-initialised, and EDiT modules built on their projections.

``SoftmaxSelfAttention`` computes what PixArt-Σ's ``blocks[i].attn`` does, ``SoftmaxJointAttention`` what an
SD3.5 joint attention does, ``PixArtShapedBlock`` a whole PixArt-Σ block around either self-attention;
``edit_from_softmax`` / ``mm_edit_from_softmax`` give the EDiT replacement with the teacher's own weights.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..modules import EDiTSelfAttention, MMEDiTJointAttention, merge_heads
from ..ops.kv_compression import kv_compressed_attention, kv_compressed_joint_attention


def _rms(dim: int, factory) -> nn.RMSNorm:
    return nn.RMSNorm(dim, eps=1e-6, **factory)


class SoftmaxSelfAttention(nn.Module):
    """The teacher self-attention: fused qkv Linear (+ optional per-head RMS qk-norm) + SDPA + out projection,
    as PixArt-Σ's ``blocks[i].attn`` computes it."""

    def __init__(self, dim: int, heads: int, qk_norm: Optional[str] = None, **factory):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, **factory)
        self.proj = nn.Linear(dim, dim, **factory)
        self.norm_q = _rms(dim // heads, factory) if qk_norm == "rms" else None
        self.norm_k = _rms(dim // heads, factory) if qk_norm == "rms" else None

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # 3 × [B, H, N, D]
        if self.norm_q is not None:
            q, k = self.norm_q(q), self.norm_k(k)
        return q, k, v

    def forward(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        return self.proj(merge_heads(F.scaled_dot_product_attention(*self.project(x))))


class SoftmaxJointAttention(nn.Module):
    """The teacher MMDiT joint attention (SD3.5): each stream has its own qkv, RMS qk-norm and out projection;
    one SDPA runs over the concatenated [text; image] sequence (ComfyUI's order)."""

    def __init__(self, dim: int, heads: int, **factory):
        super().__init__()
        self.image = SoftmaxSelfAttention(dim, heads, qk_norm="rms", **factory)
        self.text = SoftmaxSelfAttention(dim, heads, qk_norm="rms", **factory)

    def forward(self, image: torch.Tensor, text: torch.Tensor, grid=None) -> tuple[torch.Tensor, torch.Tensor]:
        qi, ki, vi = self.image.project(image)
        qt, kt, vt = self.text.project(text)
        joint = F.scaled_dot_product_attention(torch.cat([qt, qi], 2), torch.cat([kt, ki], 2), torch.cat([vt, vi], 2))
        n_text = text.shape[1]
        return self.image.proj(merge_heads(joint[:, :, n_text:])), self.text.proj(merge_heads(joint[:, :, :n_text]))


class CrossAttention(nn.Module):
    """PixArt-Σ's caption cross-attention (softmax in both teacher and EDiT)."""

    def __init__(self, dim: int, heads: int, **factory):
        super().__init__()
        self.heads = heads
        self.q_linear = nn.Linear(dim, dim, **factory)
        self.kv_linear = nn.Linear(dim, 2 * dim, **factory)
        self.proj = nn.Linear(dim, dim, **factory)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        d = c // self.heads
        q = self.q_linear(x).view(b, n, self.heads, d).transpose(1, 2)
        k, v = self.kv_linear(context).view(b, context.shape[1], 2, self.heads, d).permute(2, 0, 3, 1, 4)
        return self.proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))


class PixArtShapedBlock(nn.Module):
    """A PixArt-Σ transformer block (``ada_norm_single``) around a pluggable self-attention."""

    def __init__(self, dim: int, heads: int, self_attention: nn.Module, mlp_ratio: int = 4, **factory):
        super().__init__()
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim, **factory) / dim ** 0.5)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6, **factory)
        self.attn = self_attention
        self.cross_attn = CrossAttention(dim, heads, **factory)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6, **factory)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim, **factory), nn.GELU(approximate="tanh"),
                                 nn.Linear(mlp_ratio * dim, dim, **factory))

    def with_self_attention(self, self_attention: nn.Module) -> "PixArtShapedBlock":
        """The same block (shared weights) with another self-attention."""
        other = PixArtShapedBlock.__new__(PixArtShapedBlock)
        nn.Module.__init__(other)
        for name, module in self.named_children():
            other.add_module(name, self_attention if name == "attn" else module)
        other.scale_shift_table = self.scale_shift_table
        return other

    def forward(self, x: torch.Tensor, context: torch.Tensor, modulation: torch.Tensor, grid) -> torch.Tensor:
        """x [B, N, C], context [B, T, C], modulation [B, 6, C] (the adaLN-single timestep embedding)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = \
            (self.scale_shift_table[None] + modulation).chunk(6, dim=1)
        x = x + gate_msa * self.attn(self.norm1(x) * (1 + scale_msa) + shift_msa, grid)
        x = x + self.cross_attn(x, context)
        return x + gate_mlp * self.mlp(self.norm2(x) * (1 + scale_mlp) + shift_mlp)


class KVCompressedSelfAttention(nn.Module):
    """The training-free mode on a teacher self-attention's own weights: softmax over r×r-pooled keys/values."""

    def __init__(self, teacher: SoftmaxSelfAttention, ratio: int = 2):
        super().__init__()
        self.teacher, self.ratio = teacher, ratio

    def forward(self, x: torch.Tensor, grid) -> torch.Tensor:
        return self.teacher.proj(merge_heads(kv_compressed_attention(*self.teacher.project(x), grid, self.ratio)))


class KVCompressedJointAttention(nn.Module):
    """The training-free mode on a teacher joint attention: text keys exact, image keys/values pooled."""

    def __init__(self, teacher: SoftmaxJointAttention, ratio: int = 2):
        super().__init__()
        self.teacher, self.ratio = teacher, ratio

    def forward(self, image: torch.Tensor, text: torch.Tensor, grid) -> tuple[torch.Tensor, torch.Tensor]:
        qi, ki, vi = self.teacher.image.project(image)
        qt, kt, vt = self.teacher.text.project(text)
        n_text = text.shape[1]
        joint = kv_compressed_joint_attention(torch.cat([qt, qi], 2), torch.cat([kt, ki], 2), torch.cat([vt, vi], 2),
                                              grid, self.ratio, num_text=n_text, text_first=True)
        return (self.teacher.image.proj(merge_heads(joint[:, :, n_text:])),
                self.teacher.text.proj(merge_heads(joint[:, :, :n_text])))


@torch.no_grad()
def edit_from_softmax(teacher: SoftmaxSelfAttention, heads: int, reduction: int, generator) -> EDiTSelfAttention:
    """``EDiTSelfAttention`` on the teacher's own projections, adapter at its documented init."""
    dim = teacher.proj.in_features
    w = teacher.qkv.weight
    edit = EDiTSelfAttention(dim, heads, reduction=reduction, qk_norm="rms" if teacher.norm_q is not None else None,
                             dtype=w.dtype, device=w.device)
    for name, weight, bias in zip(("to_q", "to_k", "to_v"), teacher.qkv.weight.chunk(3), teacher.qkv.bias.chunk(3)):
        getattr(edit, name).weight.copy_(weight)
        getattr(edit, name).bias.copy_(bias)
    edit.to_out.load_state_dict(teacher.proj.state_dict())
    if teacher.norm_q is not None:
        edit.norm_q.load_state_dict(teacher.norm_q.state_dict())
        edit.norm_k.load_state_dict(teacher.norm_k.state_dict())
    edit.edit.initialize(generator)
    return edit


@torch.no_grad()
def mm_edit_from_softmax(teacher: SoftmaxJointAttention, heads: int, reduction: int, generator) -> MMEDiTJointAttention:
    dim = teacher.image.proj.in_features
    w = teacher.image.qkv.weight
    edit = MMEDiTJointAttention(dim, heads, reduction=reduction, qk_norm="rms", dtype=w.dtype, device=w.device)
    for stream, names, out_name, norms in (
            (teacher.image, ("to_q", "to_k", "to_v"), "to_out", ("norm_q", "norm_k")),
            (teacher.text, ("add_q_proj", "add_k_proj", "add_v_proj"), "to_add_out", ("norm_added_q", "norm_added_k"))):
        for name, weight, bias in zip(names, stream.qkv.weight.chunk(3), stream.qkv.bias.chunk(3)):
            getattr(edit, name).weight.copy_(weight)
            getattr(edit, name).bias.copy_(bias)
        getattr(edit, out_name).load_state_dict(stream.proj.state_dict())
        getattr(edit, norms[0]).load_state_dict(stream.norm_q.state_dict())
        getattr(edit, norms[1]).load_state_dict(stream.norm_k.state_dict())
    edit.edit.initialize(generator)
    return edit


__all__ = ["SoftmaxSelfAttention", "SoftmaxJointAttention", "CrossAttention", "PixArtShapedBlock", "edit_from_softmax",
           "KVCompressedSelfAttention", "KVCompressedJointAttention",
           "mm_edit_from_softmax"]
