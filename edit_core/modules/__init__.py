"""EDiT building blocks: ConvFusion, SpatialCompressor, the per-layer adapter, the functional core and
standalone attention modules. Every module takes ``dtype``, ``device`` and an optional ``operations``
namespace (default ``torch.nn``; ComfyUI passes its casting ops)."""

from .attention import EDiTSelfAttention, MMEDiTJointAttention
from .conv_fusion import ConvFusion
from .functional import (Projections, compressed_key_value, conv_fusion_query, edit_self_attention,
                         mm_edit_joint_attention)
from .layer_adapter import EDiTLayerAdapter
from .spatial_compressor import SpatialCompressor, compressed_grid
from .tokens import grid_to_tokens, merge_heads, split_heads, tokens_to_grid

__all__ = ["ConvFusion", "SpatialCompressor", "EDiTLayerAdapter", "EDiTSelfAttention", "MMEDiTJointAttention",
           "Projections", "edit_self_attention", "mm_edit_joint_attention", "conv_fusion_query",
           "compressed_key_value", "compressed_grid", "tokens_to_grid", "grid_to_tokens", "split_heads",
           "merge_heads"]
