"""SD3.5-Large and Large Turbo: 38 joint blocks, 38 × 64 heads, RMS qk-norm, no ``attn2``, rectified flow.
MM-EDiT on every joint attention. Told apart from SD3.5-Medium by the missing dual-attention layers and from
SD3-Medium by the qk-norm, so same-layout models of any depth are recognised."""

from .architectures import MMDIT, MMDIT_TRAINING, SD3_CONFIG
from .base import Family, Geometry

FAMILY = Family(
    name="sd35_large", title="SD3.5-Large", short_title="SD3.5-L", architecture=MMDIT,
    match={"qk_norm": "rms", "dual_attention": False}, default_variant="mm_edit", **MMDIT_TRAINING,
    reference=Geometry(num_blocks=38, hidden_size=2432, num_heads=38, patch_size=2, text_tokens=154,
                       native_resolution=1024),
    reference_config=dict(SD3_CONFIG, num_layers=38, num_attention_heads=38, caption_projection_dim=2432,
                          pos_embed_max_size=192, qk_norm="rms_norm"),
    aliases=("sd35l", "sd3.5-large"))
