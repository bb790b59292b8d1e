"""SD3-Medium: 24 joint blocks, 24 × 64 heads, no qk-norm, no ``attn2``, rectified flow. MM-EDiT on every
joint attention."""

from .architectures import MMDIT, MMDIT_TRAINING, SD3_CONFIG
from .base import Family, Geometry

FAMILY = Family(
    name="sd3_medium", title="SD3-Medium", short_title="SD3-M", architecture=MMDIT,
    match={"qk_norm": None, "dual_attention": False}, default_variant="mm_edit", **MMDIT_TRAINING,
    reference=Geometry(num_blocks=24, hidden_size=1536, num_heads=24, patch_size=2, text_tokens=154,
                       native_resolution=1024),
    reference_config=dict(SD3_CONFIG, num_layers=24, num_attention_heads=24, caption_projection_dim=1536,
                          pos_embed_max_size=192),
    aliases=("sd3",))
