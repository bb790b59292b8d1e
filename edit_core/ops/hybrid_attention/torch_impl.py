"""PyTorch MM-EDiT hybrid joint attention.

Image rows blend a linear branch (ConvFusion queries against spatially compressed image keys/values)
with softmax attention to the text tokens; text rows are one exact softmax over all keys with plain,
uncompressed image keys/values. Every softmax call is SDPA; every cost is linear in the image length.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..linear_attention import linear_attention
from ..linear_attention.torch_impl import CHUNK_TOKENS, linear_attention_apply, linear_attention_state


def _image_to_text_logsumexp(q_image: torch.Tensor, k_text: torch.Tensor) -> torch.Tensor:
    """log Σ_p exp(q_i·k_p/√d) per image row, fp32, chunked over rows. → [B, H, N_I, 1]."""
    scale = 1.0 / math.sqrt(q_image.shape[-1])
    k_text = k_text.float().transpose(-1, -2)
    chunks = [torch.logsumexp((q_image[..., s:s + CHUNK_TOKENS, :].float() @ k_text) * scale, dim=-1, keepdim=True)
              for s in range(0, q_image.shape[-2], CHUNK_TOKENS)]
    return torch.cat(chunks, dim=-2)


def hybrid_joint_attention_torch(q, k, v, linear_q, linear_k, linear_v, *, num_text: int, text_first: bool,
                                 eta: str = "approx", image_rows_only: bool = False, eps: float = 1e-6,
                                 linear_backend: str = "auto") -> torch.Tensor:
    total = q.shape[-2]
    num_image = total - num_text
    text = slice(0, num_text) if text_first else slice(num_image, total)
    image = slice(num_text, total) if text_first else slice(0, num_image)
    out_dtype = v.dtype

    if eta == "exact" and num_text > 0:
        state, normaliser = linear_attention_state(linear_k, linear_v)
        linear_out = linear_attention_apply(linear_q, state, normaliser, eps, torch.float32)
        linear_mass = torch.cat([linear_q[..., s:s + CHUNK_TOKENS, :].float() @ normaliser.unsqueeze(-1)
                                 for s in range(0, linear_q.shape[-2], CHUNK_TOKENS)], dim=-2)
        softmax_lse = _image_to_text_logsumexp(q[..., image, :], k[..., text, :])
        weight = torch.sigmoid(torch.log(linear_mass) - softmax_lse)  # Z_lin / (Z_lin + Z_softmax)
    else:
        linear_out = linear_attention(linear_q, linear_k, linear_v, eps=eps, backend=linear_backend).float()
        weight = num_image / total

    if num_text == 0:
        image_rows = linear_out.to(out_dtype)
    else:
        cross_out = F.scaled_dot_product_attention(q[..., image, :], k[..., text, :], v[..., text, :]).float()
        image_rows = (cross_out + weight * (linear_out - cross_out)).to(out_dtype)
    if image_rows_only:
        return image_rows
    text_rows = F.scaled_dot_product_attention(q[..., text, :], k, v)
    parts = [text_rows, image_rows] if text_first else [image_rows, text_rows]
    return torch.cat(parts, dim=-2)
