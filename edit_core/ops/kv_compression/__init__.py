"""Softmax attention over spatially pooled keys and values (PixArt-Σ's KV compression, training-free).

    K' = AvgPool_r(K), V' = AvgPool_r(V) on the (h, w) token grid,   Y = softmax(s · Q K'ᵀ) V'

Queries and the output stay at full resolution; the key count drops from h·w to ⌈h/r⌉·⌈w/r⌉ (4× at r = 2),
so the score matrix and its cost shrink by about r². Pooling averages each r×r window of tokens; a
window cut by a ragged edge (odd or non-square grids) averages only the tokens it holds, so no padding
token is ever counted. In a joint (MMDiT) sequence only the image keys/values are pooled: text keys and
values stay exact, and every query — text and image — attends to [text, pooled image].

``s`` is the teacher's 1/√d by default. ``temperature="proportional"`` multiplies it by
√(log M / log N) for M keys seen instead of the teacher's N — proportional attention, the log-scaled
length correction CLEAR uses for a changed key count (Jin et al. 2023). Every softmax is PyTorch SDPA,
so flash / memory-efficient kernels apply on GPUs. ``naive`` holds the float64 references.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .naive import naive_kv_compressed_attention, naive_kv_compressed_joint_attention, naive_pool_tokens

TEMPERATURES = ("teacher", "proportional")
RATIOS = (2, 3, 4)


def pooled_grid(grid: tuple[int, int], ratio: int) -> tuple[int, int]:
    """(h, w) → (⌈h/r⌉, ⌈w/r⌉)."""
    return -(-int(grid[0]) // ratio), -(-int(grid[1]) // ratio)


def pool_tokens(x: torch.Tensor, grid: tuple[int, int], ratio: int) -> torch.Tensor:
    """Average r×r windows of a row-major token grid. x [B, N, C] or [B, H, N, D] → same rank with M tokens."""
    h, w = int(grid[0]), int(grid[1])
    if x.shape[-2] != h * w:
        raise ValueError(f"token grid {h}×{w} does not match {x.shape[-2]} tokens")
    if ratio < 1:
        raise ValueError(f"pooling ratio must be ≥ 1, got {ratio}")
    if ratio == 1:
        return x
    lead, c = x.shape[:-2], x.shape[-1]
    image = x.reshape(-1, h, w, c).permute(0, 3, 1, 2)  # [B', C, h, w], a channels-last view
    pooled = F.avg_pool2d(image.contiguous(memory_format=torch.channels_last), ratio, ratio, ceil_mode=True,
                          count_include_pad=False)  # ragged windows: own count
    # back to tokens with a unit-stride last dim (SDPA's fused CPU/GPU kernels need it; else it falls back to math)
    return pooled.permute(0, 2, 3, 1).reshape(*lead, pooled.shape[-2] * pooled.shape[-1], c).contiguous()


def attention_scale(head_dim: int, keys_seen: int, teacher_keys: int, temperature: str = "teacher") -> float:
    """The softmax scale: 1/√d, times √(log M / log N) for ``temperature="proportional"``."""
    if temperature not in TEMPERATURES:
        raise ValueError(f"temperature must be one of {TEMPERATURES}, got {temperature!r}")
    scale = 1.0 / math.sqrt(head_dim)
    if temperature == "proportional" and keys_seen > 1 and teacher_keys > 1:
        scale *= math.sqrt(math.log(keys_seen) / math.log(teacher_keys))
    return scale


def kv_compressed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: tuple[int, int], ratio: int,
                            *, temperature: str = "teacher") -> torch.Tensor:
    """q, k, v [B, H, N, D] on a row-major (h, w) grid → [B, H, N, D]: softmax over r×r-pooled keys/values."""
    k_pooled, v_pooled = pool_tokens(k, grid, ratio), pool_tokens(v, grid, ratio)
    scale = attention_scale(q.shape[-1], k_pooled.shape[-2], k.shape[-2], temperature)
    return F.scaled_dot_product_attention(q, k_pooled, v_pooled, scale=scale)


def kv_compressed_joint_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: tuple[int, int],
                                  ratio: int, *, num_text: int, text_first: bool, image_rows_only: bool = False,
                                  temperature: str = "teacher") -> torch.Tensor:
    """Joint q, k, v [B, H, L, D] (L = N_T + N_I, after qk-norm) → [B, H, L, D] in the input token order (or
    [B, H, N_I, D] with ``image_rows_only``): every query attends to [exact text, pooled image] keys/values."""
    total = q.shape[-2]
    num_image = total - num_text
    if not 0 <= num_text < total:
        raise ValueError(f"num_text={num_text} must be in [0, {total}) for a joint length of {total}")
    text = slice(0, num_text) if text_first else slice(num_image, total)
    image = slice(num_text, total) if text_first else slice(0, num_image)
    keys = torch.cat([k[:, :, text], pool_tokens(k[:, :, image], grid, ratio)], dim=2)
    values = torch.cat([v[:, :, text], pool_tokens(v[:, :, image], grid, ratio)], dim=2)
    scale = attention_scale(q.shape[-1], keys.shape[-2], total, temperature)
    queries = q[:, :, image] if image_rows_only else q
    return F.scaled_dot_product_attention(queries, keys, values, scale=scale)


__all__ = ["kv_compressed_attention", "kv_compressed_joint_attention", "pool_tokens", "pooled_grid",
           "attention_scale", "naive_kv_compressed_attention", "naive_kv_compressed_joint_attention",
           "naive_pool_tokens", "TEMPERATURES", "RATIOS"]
