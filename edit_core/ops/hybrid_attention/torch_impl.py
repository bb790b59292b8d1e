"""PyTorch MM-EDiT hybrid joint attention.

Image rows blend a linear branch (ConvFusion queries against spatially compressed image keys/values)
with softmax attention to the text tokens; text rows are one exact softmax over all keys with plain,
uncompressed image keys/values. Every cost is linear in the image length, and so is the memory: the two
token streams are never concatenated.

- Image rows run in fp32 one chunk of rows at a time, written straight into the output, so the fp32
  temporaries are bounded by the chunk size. With the torch linear backend the linear branch is applied
  from its fp32 state inside the same loop (the chunks ``linear_attention_torch`` uses, so the numbers
  are the same) instead of being materialised for all rows first.
- Text rows, softmax(q_T [K_I; K_T]ᵀ/√d) [V_I; V_T], are an online softmax over chunks of the two key
  streams (running max, normaliser and weighted sum in fp32, or float64 for float64 inputs).
- The image rows are allocated [B, N_I, H, D] and returned as a [B, H, N_I, D] view, so merging the heads
  for the output projection is a view, not a copy.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .. import backends
from ..linear_attention import linear_attention
from ..linear_attention.torch_impl import linear_attention_apply, linear_attention_state, linear_attention_torch

CHUNK_TOKENS = 4096
"""Image rows blended at a time: the fp32 temporaries (linear rows, text-cross rows, the blend) stay a
fraction of one image-sized tensor at high resolution."""
KEY_CHUNK_TOKENS = 4096
"""Keys per step of the text rows' online softmax: B·H·N_T·KEY_CHUNK_TOKENS scores live at a time."""


def softmax_attention_over_streams(q: torch.Tensor, streams: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """softmax(q [k₁; k₂; …]ᵀ/√d) [v₁; v₂; …] for q [B, H, N, D] and streams (k_i [B, H, M_i, D], v_i
    [B, H, M_i, Dv]) without concatenating them: an online softmax over key chunks. → [B, H, N, Dv], q's dtype."""
    acc = torch.promote_types(q.dtype, torch.float32)
    qs = q.to(acc) * (1.0 / math.sqrt(q.shape[-1]))
    running_max: Optional[torch.Tensor] = None
    normaliser = weighted = None
    for k, v in streams:
        for start in range(0, k.shape[-2], KEY_CHUNK_TOKENS):
            scores = qs @ k[:, :, start:start + KEY_CHUNK_TOKENS].to(acc).transpose(-1, -2)
            chunk_max = scores.amax(-1, keepdim=True)
            new_max = chunk_max if running_max is None else torch.maximum(running_max, chunk_max)
            p = torch.exp(scores - new_max)
            values = p @ v[:, :, start:start + KEY_CHUNK_TOKENS].to(acc)
            if running_max is None:
                normaliser, weighted = p.sum(-1, keepdim=True), values
            else:
                rescale = torch.exp(running_max - new_max)
                normaliser = normaliser * rescale + p.sum(-1, keepdim=True)
                weighted = weighted * rescale + values
            running_max = new_max
    if weighted is None:
        raise ValueError("softmax attention needs at least one key")
    return (weighted / normaliser).to(q.dtype)


def _uses_torch_linear(backend: str, linear_q, linear_k, linear_v) -> bool:
    return backends.resolve("linear_attention", backend, linear_q, linear_k, linear_v) is linear_attention_torch


def hybrid_joint_attention_streams_torch(q_text, k_text, v_text, q_image, k_image, v_image, linear_q, linear_k,
                                         linear_v, *, eta: str = "approx", image_rows_only: bool = False,
                                         eps: float = 1e-6, linear_backend: str = "auto"):
    """→ (image rows [B, H, N_I, Dv] (a view of [B, N_I, H, Dv] memory), text rows [B, H, N_T, Dv] or None)."""
    b, h, num_image = q_image.shape[:3]
    num_text = q_text.shape[-2]
    total = num_text + num_image
    text_rows = None
    if not image_rows_only:
        text_rows = softmax_attention_over_streams(q_text, [(k_image, v_image), (k_text, v_text)])

    out = v_image.new_empty(b, num_image, h, v_image.shape[-1]).transpose(1, 2)
    exact = eta == "exact" and num_text > 0
    linear_out = state = None
    if exact or (linear_k.shape[-2] > 0 and _uses_torch_linear(linear_backend, linear_q, linear_k, linear_v)):
        state, normaliser = linear_attention_state(linear_k, linear_v)
    else:
        linear_out = linear_attention(linear_q, linear_k, linear_v, eps=eps, backend=linear_backend)
    if exact:
        k_text_t = k_text.float().transpose(-1, -2)
        scale = 1.0 / math.sqrt(q_image.shape[-1])
    else:
        weight = num_image / total

    for start in range(0, num_image, CHUNK_TOKENS):
        stop = min(start + CHUNK_TOKENS, num_image)
        q_rows = q_image[:, :, start:stop]
        if exact:
            lin_q = linear_q[:, :, start:stop].float()
            lin_mass = lin_q @ normaliser.unsqueeze(-1)
            lin = (lin_q @ state) / (lin_mass + eps)
            lse = torch.logsumexp((q_rows.float() @ k_text_t) * scale, dim=-1, keepdim=True)
            weight = torch.sigmoid(torch.log(lin_mass) - lse)  # Z_lin / (Z_lin + Z_softmax)
        elif state is not None:
            lin = linear_attention_apply(linear_q[:, :, start:stop], state, normaliser, eps, v_image.dtype).float()
        else:
            lin = linear_out[:, :, start:stop].float()
        if num_text == 0:
            rows = lin
        else:
            cross = F.scaled_dot_product_attention(q_rows, k_text, v_text).float()
            rows = cross + weight * (lin - cross)
        out[:, :, start:stop] = rows.to(out.dtype)
    return out, text_rows


def hybrid_joint_attention_torch(q, k, v, linear_q, linear_k, linear_v, *, num_text: int, text_first: bool,
                                 eta: str = "approx", image_rows_only: bool = False, eps: float = 1e-6,
                                 linear_backend: str = "auto") -> torch.Tensor:
    """The joint-sequence form: slices (views) of the joint q/k/v into the two streams, then the rows back
    in the input token order."""
    total = q.shape[-2]
    num_image = total - num_text
    text = slice(0, num_text) if text_first else slice(num_image, total)
    image = slice(num_text, total) if text_first else slice(0, num_image)
    image_rows, text_rows = hybrid_joint_attention_streams_torch(
        q[:, :, text], k[:, :, text], v[:, :, text], q[:, :, image], k[:, :, image], v[:, :, image],
        linear_q, linear_k, linear_v, eta=eta, image_rows_only=image_rows_only, eps=eps,
        linear_backend=linear_backend)
    if image_rows_only:
        return image_rows
    return torch.cat([text_rows, image_rows] if text_first else [image_rows, text_rows], dim=2)
