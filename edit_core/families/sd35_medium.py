"""SD3.5-Medium (MMDiT-X): 24 joint blocks, 24 × 64 heads, RMS qk-norm, image-only ``attn2`` in blocks 0–12,
rectified flow. MM-EDiT on the joint attention, EDiT on the ``attn2`` layers."""

from .architectures import MMDIT, MMDIT_TRAINING, SD3_CONFIG
from .base import Family, Geometry

FAMILY = Family(
    name="sd35_medium", title="SD3.5-Medium", short_title="SD3.5-M", architecture=MMDIT,
    match={"qk_norm": "rms", "dual_attention": True}, default_variant="mm_edit", **MMDIT_TRAINING,
    reference=Geometry(num_blocks=24, hidden_size=1536, num_heads=24, patch_size=2, text_tokens=154,
                       native_resolution=1024, attn2_blocks=tuple(range(13))),
    reference_config=dict(SD3_CONFIG, num_layers=24, num_attention_heads=24, caption_projection_dim=1536,
                          pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm"),
    aliases=("sd35", "sd3.5-medium"))
