"""Float64 reference for MM-EDiT hybrid joint attention (quadratic form, small shapes only)."""

from __future__ import annotations

import math

import torch


def naive_hybrid_joint_attention(q, k, v, linear_q, linear_k, linear_v, *, num_text: int, text_first: bool,
                                 eta: str = "approx", image_rows_only: bool = False,
                                 eps: float = 1e-6) -> torch.Tensor:
    q, k, v = q.double(), k.double(), v.double()
    linear_q, linear_k, linear_v = linear_q.double(), linear_k.double(), linear_v.double()
    total = q.shape[-2]
    num_image = total - num_text
    text = slice(0, num_text) if text_first else slice(num_image, total)
    image = slice(num_text, total) if text_first else slice(0, num_image)
    scale = 1.0 / math.sqrt(q.shape[-1])

    # text rows: one softmax over every (uncompressed) key
    text_logits = (q[..., text, :] @ k.transpose(-1, -2)) * scale
    text_rows = torch.softmax(text_logits, dim=-1) @ v

    # image rows, linear branch against compressed image keys
    lin_scores = linear_q @ linear_k.transpose(-1, -2)
    lin_mass = lin_scores.sum(-1, keepdim=True)
    lin_out = (lin_scores @ linear_v) / (lin_mass + eps)
    if num_text == 0:
        image_rows = lin_out
    else:
        cross_logits = (q[..., image, :] @ k[..., text, :].transpose(-1, -2)) * scale
        cross_out = torch.softmax(cross_logits, dim=-1) @ v[..., text, :]
        if eta == "approx":
            weight = torch.full_like(lin_mass, num_image / total)
        else:
            softmax_mass = torch.exp(cross_logits).sum(-1, keepdim=True)
            weight = lin_mass / (lin_mass + softmax_mass)
        image_rows = weight * lin_out + (1 - weight) * cross_out
    if image_rows_only:
        return image_rows
    parts = [text_rows, image_rows] if text_first else [image_rows, text_rows]
    return torch.cat(parts, dim=-2)
