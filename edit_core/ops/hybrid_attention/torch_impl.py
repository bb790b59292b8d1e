"""PyTorch MM-EDiT hybrid joint attention.

Image rows blend a linear branch (ConvFusion queries against spatially compressed image keys/values)
with softmax attention to the text tokens; text rows are one exact softmax over all keys with plain,
uncompressed image keys/values. Every softmax call is SDPA; every cost is linear in the image length.
The blend runs in fp32 one chunk of image rows at a time, written straight into the output, so the
fp32 temporaries are bounded by the chunk size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..linear_attention import linear_attention
from ..linear_attention.torch_impl import CHUNK_TOKENS, linear_attention_state


def hybrid_joint_attention_torch(q, k, v, linear_q, linear_k, linear_v, *, num_text: int, text_first: bool,
                                 eta: str = "approx", image_rows_only: bool = False, eps: float = 1e-6,
                                 linear_backend: str = "auto") -> torch.Tensor:
    total = q.shape[-2]
    num_image = total - num_text
    text = slice(0, num_text) if text_first else slice(num_image, total)
    image_start = num_text if text_first else 0
    out = v.new_empty(*v.shape[:2], num_image if image_rows_only else total, v.shape[-1])
    out_image_start = 0 if image_rows_only else image_start
    if not image_rows_only:
        out[:, :, text] = F.scaled_dot_product_attention(q[:, :, text], k, v)

    exact = eta == "exact" and num_text > 0
    if exact:
        state, normaliser = linear_attention_state(linear_k, linear_v)
        k_text_t = k[:, :, text].float().transpose(-1, -2)
        scale = 1.0 / math.sqrt(q.shape[-1])
    else:
        linear_out = linear_attention(linear_q, linear_k, linear_v, eps=eps, backend=linear_backend)
        weight = num_image / total
    k_text, v_text = k[:, :, text], v[:, :, text]

    for start in range(0, num_image, CHUNK_TOKENS):
        stop = min(start + CHUNK_TOKENS, num_image)
        if exact:
            lin_q = linear_q[:, :, start:stop].float()
            lin_mass = lin_q @ normaliser.unsqueeze(-1)
            lin = (lin_q @ state) / (lin_mass + eps)
            q_rows = q[:, :, image_start + start:image_start + stop]
            lse = torch.logsumexp((q_rows.float() @ k_text_t) * scale, dim=-1, keepdim=True)
            weight = torch.sigmoid(torch.log(lin_mass) - lse)  # Z_lin / (Z_lin + Z_softmax)
        else:
            lin = linear_out[:, :, start:stop].float()
        if num_text == 0:
            rows = lin
        else:
            q_rows = q[:, :, image_start + start:image_start + stop]
            cross = F.scaled_dot_product_attention(q_rows, k_text, v_text).float()
            rows = cross + weight * (lin - cross)
        out[:, :, out_image_start + start:out_image_start + stop] = rows.to(out.dtype)
    return out
