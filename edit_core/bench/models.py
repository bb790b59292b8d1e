"""Whole random-weight transformers for the ``model`` section: their configs, inputs and FLOPs, and the switch
between their softmax (teacher) and EDiT attention processors.

A family's transformer is the diffusers class its architecture names, built from the family's
``reference_config`` (the released model's), or with ``tiny`` from that config at width 64 and 2 blocks.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from ..families import get_family
from ..modules import compressed_grid
from .config import VAE_FACTOR, BenchError

TINY_WIDTH, TINY_HEADS, TINY_TEXT_WIDTH = 64, 4, 32


def _tiny_overrides(config: dict, text_width_key: str) -> dict:
    """The same layout at width 64 (4 × 16), 2 blocks and 32-wide text embeddings; an SD3 position table of
    16² patches (256² px) and one dual-attention layer where the reference has them."""
    overrides = {"sample_size": 16, "num_layers": 2, "attention_head_dim": TINY_WIDTH // TINY_HEADS,
                 "num_attention_heads": TINY_HEADS}
    optional = {"cross_attention_dim": TINY_WIDTH, "caption_projection_dim": TINY_WIDTH,
                text_width_key: TINY_TEXT_WIDTH, "pooled_projection_dim": TINY_TEXT_WIDTH, "pos_embed_max_size": 16,
                "dual_attention_layers": (0,)}
    overrides.update({key: value for key, value in optional.items() if config.get(key)})
    return overrides


def model_config(family: str, tiny: bool = False) -> dict:
    """The diffusers config of ``family``'s released transformer, or its tiny version for smoke tests."""
    record = get_family(family)
    config = dict(record.reference_config)
    return dict(config, **_tiny_overrides(config, record.text_width_key)) if tiny else config


def describe_model(config: dict) -> str:
    return f"{config['num_layers']} blocks, {config['num_attention_heads']}×{config['attention_head_dim']}"


def max_resolution(config: dict) -> Optional[int]:
    """The largest square image a model's position embedding covers, in pixels (None: no limit).
    SD3's ``pos_embed_max_size`` patches × patch size × VAE factor: 384 × 2 × 8 = 6144 for SD3.5-M."""
    if config.get("pos_embed_max_size"):
        return int(config["pos_embed_max_size"]) * int(config["patch_size"]) * VAE_FACTOR
    return None


def _self_attention_macs(grid: tuple[int, int], width: int, head_dim: int, *, edit: bool, reduction: int) -> int:
    """One image self-attention over the grid's N tokens, projections included.

    Softmax: q, k, v, out projections 4·N·C², scores and values 2·N²·C. EDiT: ConvFusion (3×3 conv C → C/r and
    1×1 conv C/r → C: 10·N·C²/r), q, k, v, out 4·N·C², two depthwise 3×3 stride-2 compressors 2·9·M·C, the
    state kᵀv M·C·D, and q·S + q·z (N·C·D + N·C), with M = ⌈h/2⌉·⌈w/2⌉."""
    n, c = grid[0] * grid[1], width
    if not edit:
        return 4 * n * c * c + 2 * n * n * c
    mh, mw = compressed_grid(grid)
    m, hidden = mh * mw, width // reduction
    conv_fusion = n * (9 * c * hidden + hidden * c)
    return conv_fusion + 4 * n * c * c + 2 * 9 * m * c + m * c * head_dim + n * c * head_dim + n * c


def _pixart_macs(config: dict, grid: tuple[int, int], t: int, self_attention: int) -> int:
    """adaLN-single (per sample), caption projection, and per block a self-attention, a cross-attention to the
    caption and a 4× MLP."""
    c, n = int(config["num_attention_heads"]) * int(config["attention_head_dim"]), grid[0] * grid[1]
    macs = 256 * c + c * c + 6 * c * c  # adaLN-single: timestep MLP, 6 modulation vectors
    macs += t * (int(config["caption_channels"]) * c + c * c)  # caption projection (2 Linears)
    cross = 2 * n * c * c + 2 * t * int(config["cross_attention_dim"]) * c + 2 * n * t * c
    return macs + int(config["num_layers"]) * (self_attention + cross + 8 * n * c * c)


def _mmdit_macs(config: dict, grid: tuple[int, int], t: int, self_attention: int, *, edit: bool,
                reduction: int) -> int:
    """Timestep and pooled-text embeddings, context embedder, per block the adaLN modulations, the joint
    attention (one softmax over [image; text], or MM-EDiT: text rows softmax over all tokens, image rows linear
    attention + softmax to the text), the dual-attention ``attn2`` where present, 4× MLPs for both streams (the
    last block has no text MLP and no text output projection)."""
    head_dim = int(config["attention_head_dim"])
    c, n = int(config["num_attention_heads"]) * head_dim, grid[0] * grid[1]
    macs = 256 * c + c * c + int(config["pooled_projection_dim"]) * c + c * c  # timestep + pooled text MLPs
    macs += t * int(config["joint_attention_dim"]) * c  # context embedder
    macs += 2 * c * c  # norm_out modulation
    layers, dual = int(config["num_layers"]), set(config.get("dual_attention_layers") or ())
    mh, mw = compressed_grid(grid)
    m, hidden = mh * mw, c // reduction
    for i in range(layers):
        last, total = i == layers - 1, n + t
        macs += (9 if i in dual else 6) * c * c + (2 if last else 6) * c * c  # adaLN-zero modulations
        text_out = 0 if last else t * c * c
        if edit:
            joint = (5 * n * c * c + n * (9 * c * hidden + hidden * c) + 2 * 9 * m * c + 3 * t * c * c
                     + (0 if last else 2 * t * total * c) + m * c * head_dim + n * c * head_dim + n * c
                     + 2 * n * t * c + text_out)  # q (plain + ConvFusion), k, v, out; text rows; image rows
        else:
            joint = 4 * n * c * c + 3 * t * c * c + 2 * total * total * c + text_out
        macs += joint + (self_attention if i in dual else 0)
        macs += 8 * n * c * c + (0 if last else 8 * t * c * c)
    return macs


def model_flops(family: str, config: dict, grid: tuple[int, int], text_tokens: int, *, edit: bool,
                batch: int = 1, reduction: int = 4) -> int:
    """FLOPs of one diffusers transformer forward, SDPA teacher (``edit=False``) or after ``apply_edit`` with
    an adapter converting every attention it can (``edit=True``; MM-EDiT with ``eta="approx"``).

    Counted: 2 FLOPs per multiply-add of every Linear, convolution and attention product (q·kᵀ, p·v, the
    linear-attention state and its application), bias adds excluded — the convention of
    ``torch.utils.flop_counter``. Not counted: norms, activations, softmax exponentials, sums, the blend.
    ``grid`` is the image token grid (latent / patch size), ``text_tokens`` the caption (PixArt) or joint
    text (MMDiT) length. Both count the patch embedding and the output projection around their blocks."""
    heads, head_dim = int(config["num_attention_heads"]), int(config["attention_head_dim"])
    c, p, t = heads * head_dim, int(config["patch_size"]), int(text_tokens)
    n = grid[0] * grid[1]
    macs = n * int(config["in_channels"]) * p * p * c + n * c * p * p * int(config["out_channels"])  # patch in, out
    self_attention = _self_attention_macs(grid, c, head_dim, edit=edit, reduction=reduction)
    if get_family(family).joint:
        macs += _mmdit_macs(config, grid, t, self_attention, edit=edit, reduction=reduction)
    else:
        macs += _pixart_macs(config, grid, t, self_attention)
    return 2 * macs * batch


def _diffusers_class(family: str):
    try:
        import diffusers
    except ImportError:
        raise BenchError("the model section needs diffusers: pip install 'diffusers>=0.32'") from None
    return getattr(diffusers, get_family(family).architecture.diffusers_class)


def model_parameter_count(family: str, config: dict) -> int:
    """Parameters of the model, counted on the meta device (no memory)."""
    with torch.device("meta"):
        model = _diffusers_class(family)(**config)
    return sum(p.numel() for p in model.parameters())


def build_random_model(family: str, config: dict, device: str, dtype: torch.dtype) -> nn.Module:
    """The diffusers transformer with its own random init, created directly on ``device`` in ``dtype`` (no
    fp32 copy of the weights anywhere, no host copy on CUDA), in eval mode without gradients."""
    cls = _diffusers_class(family)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(**config)
    finally:
        torch.set_default_dtype(previous)
    return model.to(device).eval().requires_grad_(False)  # buffers made from numpy start on the host


def model_inputs(family: str, config: dict, resolution: int, text_tokens: int, batch: int, device: str,
                 dtype: torch.dtype, generator: torch.Generator) -> dict:
    """Random forward arguments for a square image of ``resolution`` pixels (latent = px/8); ``generator`` is
    on ``device``."""
    record = get_family(family)
    latent = resolution // VAE_FACTOR

    def randn(*shape):  # made on the device: no host copy of a 262k-token latent
        return torch.randn(*shape, generator=generator, device=device, dtype=dtype)

    kwargs = {"hidden_states": randn(batch, int(config["in_channels"]), latent, latent),
              "timestep": torch.full((batch,), 500.0, device=device), "return_dict": False,
              "encoder_hidden_states": randn(batch, text_tokens, int(config[record.text_width_key]))}
    if record.needs_pooled:
        kwargs["pooled_projections"] = randn(batch, int(config["pooled_projection_dim"]))
    if "use_additional_conditions" in config:  # PixArt's micro-conditions argument (off: None)
        kwargs["added_cond_kwargs"] = {"resolution": None, "aspect_ratio": None}
    return kwargs


class ProcessorSwitch:
    """One model, teacher and EDiT: ``apply_edit`` once, then swap each converted attention's processor
    (a few attribute writes, untimed) before every call, and set the EDiT processors' backend."""

    def __init__(self, model: nn.Module, family: str, reduction: int, seed: int):
        from diffusers.models.attention_processor import Attention

        from ..adapter import init_adapter_from_teacher
        from ..integrations.diffusers import apply_edit

        attentions = {name: m for name, m in model.named_modules() if isinstance(m, Attention)}
        teacher = {name: m.processor for name, m in attentions.items()}
        adapter = init_adapter_from_teacher(model.state_dict(), get_family(family).name, reduction=reduction,
                                            num_heads=int(model.config.num_attention_heads), seed=seed)
        apply_edit(model, adapter, backend="torch")
        self.layers = [(m, teacher[name], m.processor) for name, m in attentions.items()
                       if m.processor is not teacher[name]]

    def teacher(self) -> None:
        for attention, teacher, _ in self.layers:
            attention.processor = teacher

    def edit(self, backend: str) -> Callable[[], None]:
        def switch() -> None:
            for attention, _, edit in self.layers:
                edit.backend = backend
                attention.processor = edit
        return switch


__all__ = ["model_config", "describe_model", "max_resolution", "model_flops", "model_parameter_count",
           "build_random_model", "model_inputs", "ProcessorSwitch"]
