"""Token sequence ↔ 2-D grid. Tokens are row-major over the (h, w) grid: index = row·w + col."""

from __future__ import annotations

import torch


def check_grid(num_tokens: int, grid: tuple[int, int]) -> tuple[int, int]:
    h, w = int(grid[0]), int(grid[1])
    if h < 1 or w < 1 or h * w != num_tokens:
        raise ValueError(f"token grid {h}×{w} does not match {num_tokens} tokens")
    return h, w


def tokens_to_grid(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[B, N, C] → [B, C, h, w] as a channels-last view (no copy; convolutions run channels-last)."""
    h, w = check_grid(x.shape[1], grid)
    return x.reshape(x.shape[0], h, w, x.shape[2]).permute(0, 3, 1, 2)


def grid_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] → [B, h·w, C] (a view when ``x`` is channels-last)."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], x.shape[2] * x.shape[3], x.shape[1])


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, N, H·D] → [B, H, N, D]."""
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def projected_heads(project, x: torch.Tensor, heads: int, norm=None) -> torch.Tensor:
    """``project(x)`` [B, N, H·D] → [B, H, N, D], then the per-head ``norm`` (e.g. SD3's RMS qk-norm) if any."""
    t = split_heads(project(x), heads)
    return t if norm is None else norm(t)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, H, N, D] → [B, N, H·D]."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)
