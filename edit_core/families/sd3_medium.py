"""SD3-Medium: 24 joint blocks, 24 × 64 heads, no qk-norm, no ``attn2``, rectified flow. MM-EDiT on every
joint attention."""

from .architectures import MMDIT
from .base import Family, Geometry

FAMILY = Family(
    name="sd3_medium", title="SD3-Medium", short_title="SD3-M", architecture=MMDIT,
    match={"qk_norm": None, "dual_attention": False}, default_variant="mm_edit",
    prediction="flow", schedule={"kind": "flow"}, sampling_shift=3.0,
    conditioning=("encoder_hidden_states", "pooled_projections"), text_width_key="joint_attention_dim",
    pipelines=("StableDiffusion3Pipeline",),
    reference=Geometry(num_blocks=24, hidden_size=1536, num_heads=24, patch_size=2, text_tokens=154,
                       native_resolution=1024),
    reference_config=dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                          attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                          caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=192),
    aliases=("sd3",))
