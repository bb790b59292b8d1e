"""Tiny, randomly initialised models in the real layouts, built from embedded configs (no downloads).

Used by ``python -m edit_core demo`` and the tests. The diffusers configs keep the real block structure
(PixArt-Σ: ada_norm_single blocks, self- and cross-attention, 2×2 patches, 4 latent channels in, 8 out;
SD3.5-M: joint attention, RMS qk-norm, a dual-attention ``attn2`` layer, a ``context_pre_only`` last
block) at a width a 2-core CPU runs in milliseconds. Weights are random, so outputs only check
plumbing and agreement with the teacher, never image quality. PixArt widths here are not multiples of 72,
so their head count must be passed explicitly (``num_heads``) wherever a PixArt adapter is made.
"""

from __future__ import annotations

from typing import Optional

import torch

# PixArt-Σ layout at demo size: attention dominates the forward at a 128² latent (4096 tokens).
PIXART_DEMO = dict(sample_size=64, patch_size=2, in_channels=4, out_channels=8, num_layers=4,
                   attention_head_dim=64, num_attention_heads=4, cross_attention_dim=256, caption_channels=64,
                   use_additional_conditions=False, norm_type="ada_norm_single", norm_elementwise_affine=False,
                   norm_eps=1e-6)

# The same layout, small enough for unit tests (well under a second per forward).
PIXART_QUICK = dict(PIXART_DEMO, num_layers=2, attention_head_dim=32, num_attention_heads=2,
                    cross_attention_dim=64, caption_channels=32, sample_size=32)

# SD3.5-Medium layout (joint attention, RMS qk-norm, dual attention in block 0, last block context_pre_only).
SD35_TINY = dict(sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                 attention_head_dim=16, num_attention_heads=4, joint_attention_dim=48, caption_projection_dim=64,
                 pooled_projection_dim=40, pos_embed_max_size=48, dual_attention_layers=(0,), qk_norm="rms_norm")


def config_heads(config: dict) -> int:
    return int(config["num_attention_heads"])


def config_width(config: dict) -> int:
    return int(config["num_attention_heads"]) * int(config["attention_head_dim"])


def _diffusers():
    try:
        import diffusers
    except ImportError as e:  # an optional dependency of edit_core
        raise ImportError("the tiny diffusers models need diffusers: pip install 'diffusers>=0.32'") from e
    return diffusers


def _randomize(model: torch.nn.Module, seed: int, std: float = 0.05) -> torch.nn.Module:
    """Overwrite every parameter with seeded noise.

    diffusers zero-initialises adaLN and output layers, which would make a fresh model a constant map and
    every comparison trivially perfect; normals around the module's own scale give a model whose outputs
    depend on every layer. Norm weights stay near 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float32)
            if p.dim() == 1 and ("norm" in name and name.endswith("weight")):
                p.copy_(1.0 + 0.1 * noise)
            elif p.dim() >= 2:
                p.copy_(noise / (p[0].numel() ** 0.5))
            else:
                p.copy_(std * noise)
    return model


def build_tiny_pixart(config: Optional[dict] = None, seed: int = 0, dtype=torch.float32):
    """A ``PixArtTransformer2DModel`` with the PixArt-Σ layout and seeded random weights (eval mode)."""
    diffusers = _diffusers()
    model = diffusers.PixArtTransformer2DModel(**(config or PIXART_DEMO))
    model = _randomize(model, seed)
    return (model if dtype == torch.float32 else model.to(dtype)).eval()


def build_tiny_sd3(config: Optional[dict] = None, seed: int = 0, dtype=torch.float32):
    """An ``SD3Transformer2DModel`` with the SD3.5-Medium layout and seeded random weights (eval mode)."""
    diffusers = _diffusers()
    model = diffusers.SD3Transformer2DModel(**(config or SD35_TINY))
    model = _randomize(model, seed)
    return (model if dtype == torch.float32 else model.to(dtype)).eval()


QUICK_CONFIGS = {"pixart_sigma": PIXART_QUICK, "sd35_medium": SD35_TINY}
"""The unit-test size of each family that has one (others: pass a config)."""


def build_tiny(family: str, config: Optional[dict] = None, seed: int = 0, dtype=torch.float32):
    """A diffusers transformer of ``family``'s class with ``config`` (default: its ``QUICK_CONFIGS`` entry) and
    seeded random weights (eval mode)."""
    from .families import get_family

    record = get_family(family)
    if config is None and record.name not in QUICK_CONFIGS:
        raise ValueError(f"no tiny config for {record.title}: pass one")
    model = getattr(_diffusers(), record.architecture.diffusers_class)(**(config or QUICK_CONFIGS[record.name]))
    model = _randomize(model, seed)
    return (model if dtype == torch.float32 else model.to(dtype)).eval()


def comfy_pixart_state_dict(hidden: int = 64, depth: int = 2, caption_channels: int = 32, in_channels: int = 4,
                            seed: int = 0, prefix: str = "") -> dict[str, torch.Tensor]:
    """A PixArt-Σ state dict in ComfyUI's key layout (fused ``blocks.{i}.attn.qkv``), random weights.

    Only the keys a PixArt-Σ checkpoint has; no model class is needed to make it."""
    g = torch.Generator().manual_seed(seed)

    def t(*shape):
        return torch.randn(*shape, generator=g) * 0.02

    c = hidden
    sd = {
        "x_embedder.proj.weight": t(c, in_channels, 2, 2), "x_embedder.proj.bias": t(c),
        "t_embedder.mlp.0.weight": t(c, 256), "t_embedder.mlp.0.bias": t(c),
        "t_embedder.mlp.2.weight": t(c, c), "t_embedder.mlp.2.bias": t(c),
        "t_block.1.weight": t(6 * c, c), "t_block.1.bias": t(6 * c),
        "y_embedder.y_proj.fc1.weight": t(c, caption_channels), "y_embedder.y_proj.fc1.bias": t(c),
        "y_embedder.y_proj.fc2.weight": t(c, c), "y_embedder.y_proj.fc2.bias": t(c),
        "y_embedder.y_embedding": t(300, caption_channels),
        "final_layer.scale_shift_table": t(2, c),
        "final_layer.linear.weight": t(2 * 2 * 2 * in_channels, c), "final_layer.linear.bias": t(2 * 2 * 2 * in_channels),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        sd.update({
            b + "scale_shift_table": t(6, c),
            b + "attn.qkv.weight": t(3 * c, c), b + "attn.qkv.bias": t(3 * c),
            b + "attn.proj.weight": t(c, c), b + "attn.proj.bias": t(c),
            b + "cross_attn.q_linear.weight": t(c, c), b + "cross_attn.q_linear.bias": t(c),
            b + "cross_attn.kv_linear.weight": t(2 * c, c), b + "cross_attn.kv_linear.bias": t(2 * c),
            b + "cross_attn.proj.weight": t(c, c), b + "cross_attn.proj.bias": t(c),
            b + "mlp.fc1.weight": t(4 * c, c), b + "mlp.fc1.bias": t(4 * c),
            b + "mlp.fc2.weight": t(c, 4 * c), b + "mlp.fc2.bias": t(c),
        })
    return {prefix + k: v for k, v in sd.items()}


__all__ = ["PIXART_DEMO", "PIXART_QUICK", "SD35_TINY", "QUICK_CONFIGS", "build_tiny", "build_tiny_pixart", "build_tiny_sd3",
           "comfy_pixart_state_dict", "config_heads", "config_width"]
