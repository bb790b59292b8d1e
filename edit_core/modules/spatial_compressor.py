"""Spatial Compressor: the EDiT key/value path's 4× token reduction.

    K = ReLU( DWConv3×3,s2( W_k X ) ),   V = DWConv3×3,s2( W_v X )

This module is the depthwise 3×3, stride-2, padding-1 convolution applied to the already projected
keys (or values) on their 2-D grid; keys and values each get their own instance (paper-spec §7 A5),
with no normalisation after it. An (h, w) grid becomes (⌈h/2⌉, ⌈w/2⌉), so odd and non-square grids
need no cropping. Initialised as a normalised [1, 2, 1]ᵀ[1, 2, 1]/16 blur with zero bias, which keeps
the mean, like PixArt-Σ's average-pool initialisation.
"""

from __future__ import annotations

import torch
from torch import nn

from .tokens import grid_to_tokens, tokens_to_grid


def compressed_grid(grid: tuple[int, int]) -> tuple[int, int]:
    return (int(grid[0]) + 1) // 2, (int(grid[1]) + 1) // 2


class SpatialCompressor(nn.Module):
    def __init__(self, channels: int, dtype=None, device=None, operations=None):
        super().__init__()
        ops = operations if operations is not None else nn
        self.channels = channels
        self.conv = ops.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels, dtype=dtype,
                               device=device)

    @torch.no_grad()
    def initialize(self) -> None:
        taps = torch.tensor([1.0, 2.0, 1.0])
        blur = torch.outer(taps, taps) / 16.0
        self.conv.weight.copy_(blur.expand_as(self.conv.weight))
        self.conv.bias.zero_()

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        """x [B, N, C] on grid (h, w) → ([B, ⌈h/2⌉·⌈w/2⌉, C], (⌈h/2⌉, ⌈w/2⌉))."""
        y = self.conv(tokens_to_grid(x, grid))
        return grid_to_tokens(y), (y.shape[-2], y.shape[-1])
