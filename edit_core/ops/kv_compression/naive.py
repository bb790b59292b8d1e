"""Float64 references for KV-compressed softmax attention, written with loops and explicit softmax (no
pooling or SDPA call), so the tests compare two independent implementations. Small shapes only."""

from __future__ import annotations

import math

import torch


def naive_pool_tokens(x: torch.Tensor, grid: tuple[int, int], ratio: int) -> torch.Tensor:
    """[..., h·w, C] → [..., ⌈h/r⌉·⌈w/r⌉, C]: each output token is the mean of the tokens in its r×r window."""
    h, w = grid
    x = x.double()
    rows = []
    for i in range(0, h, ratio):
        for j in range(0, w, ratio):
            members = [a * w + b for a in range(i, min(i + ratio, h)) for b in range(j, min(j + ratio, w))]
            rows.append(x[..., members, :].mean(dim=-2))
    return torch.stack(rows, dim=-2)


def _softmax_attention(q, k, v, scale):
    scores = (q.double() @ k.double().transpose(-1, -2)) * scale
    return torch.softmax(scores, dim=-1) @ v.double()


def _scale(head_dim, keys_seen, teacher_keys, temperature):
    scale = 1.0 / math.sqrt(head_dim)
    if temperature == "proportional":
        scale *= math.sqrt(math.log(keys_seen) / math.log(teacher_keys))
    return scale


def naive_kv_compressed_attention(q, k, v, grid, ratio, temperature="teacher"):
    kp, vp = naive_pool_tokens(k, grid, ratio), naive_pool_tokens(v, grid, ratio)
    return _softmax_attention(q, kp, vp, _scale(q.shape[-1], kp.shape[-2], k.shape[-2], temperature))


def naive_kv_compressed_joint_attention(q, k, v, grid, ratio, *, num_text, text_first, image_rows_only=False,
                                        temperature="teacher"):
    total = q.shape[-2]
    if text_first:
        text, image = slice(0, num_text), slice(num_text, total)
    else:
        text, image = slice(total - num_text, total), slice(0, total - num_text)
    keys = torch.cat([k[:, :, text].double(), naive_pool_tokens(k[:, :, image], grid, ratio)], dim=2)
    values = torch.cat([v[:, :, text].double(), naive_pool_tokens(v[:, :, image], grid, ratio)], dim=2)
    queries = q[:, :, image] if image_rows_only else q
    return _softmax_attention(queries, keys, values, _scale(q.shape[-1], keys.shape[-2], total, temperature))
