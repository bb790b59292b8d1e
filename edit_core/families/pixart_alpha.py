"""PixArt-α: PixArt-Σ's block layout with resolution / aspect-ratio micro-conditions (the 1024 models) and a
120-token caption; the same EDiT self-attention. A PixArt-α 512 has no micro-conditions and reads as Σ,
which converts it identically."""

from . import pixart_sigma
from .architectures import PIXART, PIXART_TRAINING
from .base import Family, Geometry

FAMILY = Family(
    name="pixart_alpha", title="PixArt-Alpha", short_title="PixArt-α", architecture=PIXART,
    match={"micro_conditions": True}, default_variant="edit", **PIXART_TRAINING,
    pipelines=("PixArtAlphaPipeline",),
    reference=Geometry(num_blocks=28, hidden_size=1152, num_heads=16, patch_size=2, text_tokens=120,
                       native_resolution=1024),
    reference_config=dict(pixart_sigma.FAMILY.reference_config, use_additional_conditions=True,
                          interpolation_scale=None),
    aliases=("pixart-alpha",))
