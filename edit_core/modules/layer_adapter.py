"""The new, trainable tensors of one converted attention layer (what an adapter file stores per layer).

``EDiTLayerAdapter`` = ``conv_fusion`` (queries) + ``key_compressor`` + ``value_compressor``. Its
``state_dict`` keys are the canonical adapter keys below ``blocks.{i}.{slot}.``. The teacher's own
projections are not part of it: hosts keep those where their state dicts expect them.
"""

from __future__ import annotations

import torch
from torch import nn

from .conv_fusion import ConvFusion
from .spatial_compressor import SpatialCompressor


class EDiTLayerAdapter(nn.Module):
    def __init__(self, channels: int, reduction: int = 4, groups: int = 32, negative_slope: float = 0.01,
                 dtype=None, device=None, operations=None):
        super().__init__()
        self.conv_fusion = ConvFusion(channels, reduction, groups, negative_slope, dtype=dtype, device=device,
                                      operations=operations)
        self.key_compressor = SpatialCompressor(channels, dtype=dtype, device=device, operations=operations)
        self.value_compressor = SpatialCompressor(channels, dtype=dtype, device=device, operations=operations)

    @torch.no_grad()
    def initialize(self, generator: torch.Generator | None = None) -> None:
        self.conv_fusion.initialize(generator)
        self.key_compressor.initialize()
        self.value_compressor.initialize()
