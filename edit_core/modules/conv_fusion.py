"""ConvFusion: the EDiT query path's local token mixer.

    Q = ReLU( W_q( X + Conv1×1( LeakyReLU( GroupNorm( Conv3×3(X) ) ) ) ) )

This module is the residual part ``X + Conv1×1(LeakyReLU(GN(Conv3×3(X))))`` on the 2-D token grid;
``W_q`` stays the teacher's projection and the ReLU is the linear-attention feature map (both applied
by the attention, see ``functional.conv_fusion_query``). Choices (paper-spec §1.1, §7 A1–A4):
Conv3×3 C→C/r with padding 1 (r = 4 by default), GroupNorm with gcd(32, C/r) groups and eps 1e-5,
LeakyReLU slope 0.01, Conv1×1 C/r→C, biases on. The second conv is zero-initialised, so at step 0 the
module is the identity and the attention is plain ReLU linear attention on the teacher's weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .tokens import grid_to_tokens, tokens_to_grid


def group_count(channels: int, groups: int = 32) -> int:
    return math.gcd(groups, channels)


class ConvFusion(nn.Module):
    def __init__(self, channels: int, reduction: int = 4, groups: int = 32, negative_slope: float = 0.01,
                 dtype=None, device=None, operations=None):
        super().__init__()
        ops = operations if operations is not None else nn
        if reduction < 1 or channels % reduction:
            raise ValueError(f"ConvFusion: channels {channels} must be divisible by the reduction {reduction}")
        hidden = channels // reduction
        self.channels, self.reduction, self.negative_slope = channels, reduction, negative_slope
        self.conv_in = ops.Conv2d(channels, hidden, 3, padding=1, dtype=dtype, device=device)
        self.norm = ops.GroupNorm(group_count(hidden, groups), hidden, eps=1e-5, affine=True, dtype=dtype,
                                  device=device)
        self.conv_out = ops.Conv2d(hidden, channels, 1, dtype=dtype, device=device)

    @torch.no_grad()
    def initialize(self, generator: torch.Generator | None = None) -> None:
        """The documented init, independent of the ``operations`` namespace (host ops may skip init):
        conv_in Kaiming-uniform as torch's default, GroupNorm affine identity, conv_out zero."""
        fan_in = self.conv_in.weight[0].numel()
        bound = 1.0 / math.sqrt(fan_in)
        w = torch.empty(self.conv_in.weight.shape, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
        b = torch.empty(self.conv_in.bias.shape, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
        self.conv_in.weight.copy_(w)
        self.conv_in.bias.copy_(b)
        self.norm.weight.fill_(1.0)
        self.norm.bias.zero_()
        self.conv_out.weight.zero_()
        self.conv_out.bias.zero_()

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """x [B, N, C] on the row-major grid (h, w) → x + branch(x), [B, N, C]."""
        y = tokens_to_grid(x, grid)
        y = self.conv_in(y)
        y = self.norm(y)
        y = nn.functional.leaky_relu(y, self.negative_slope)
        y = self.conv_out(y)
        return x + grid_to_tokens(y)
