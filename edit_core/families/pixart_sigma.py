"""PixArt-Σ: 28 PixArt blocks, 16 × 72 heads, T5 captions, ε-prediction; EDiT on every self-attention."""

from .architectures import PIXART, PIXART_TRAINING
from .base import Family, Geometry

FAMILY = Family(
    name="pixart_sigma", title="PixArt-Sigma", short_title="PixArt-Σ", architecture=PIXART,
    match={"micro_conditions": False}, default_variant="edit", **PIXART_TRAINING,
    pipelines=("PixArtSigmaPipeline", "PixArtAlphaPipeline"),  # a PixArt-α 512 has no micro-conditions: it reads as Σ
    reference=Geometry(num_blocks=28, hidden_size=1152, num_heads=16, patch_size=2, text_tokens=300,
                       native_resolution=1024),
    reference_config=dict(sample_size=128, patch_size=2, in_channels=4, out_channels=8, num_layers=28,
                          attention_head_dim=72, num_attention_heads=16, cross_attention_dim=1152,
                          caption_channels=4096, norm_type="ada_norm_single", norm_elementwise_affine=False,
                          norm_eps=1e-6, use_additional_conditions=False, interpolation_scale=2),
    aliases=("pixart", "pixart-sigma"))
