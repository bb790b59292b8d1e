"""The activation memory of a model whose self-attentions are all EDiT: the number ComfyUI's memory estimate
multiplies by the latent area, derived from the model's shapes.

ComfyUI budgets ``area · c · memory_usage_factor`` MiB for one model call (``BaseModel.memory_required``;
area = batch × latent H × W; c = dtype bytes × 0.01 when flash/xformers attention is on, else 0.15), with
a per-family ``memory_usage_factor`` calibrated on the softmax model. It is only ever used to decide how
much to load, offload or batch, so it should match the real working set. With every self-attention
converted (EDiT or MM-EDiT), no score matrix grows with the tokens and a block's largest live set is:

    bytes per token = dtype bytes · (hidden · (RESIDUAL_TENSORS + max(attention live, 2 · mlp hidden / hidden))
                                     + heads · context tokens · [no flash attention])

- ``RESIDUAL_TENSORS``: the block input (residual stream) and its normalised, modulated copy;
- attention live: image-sized [N, hidden] tensors alive at the converted attention's peak
  (``ATTENTION_LIVE_TENSORS``, measured with ``python -m edit_core bench --sections memory``, bench/MEMORY.md);
- the MLP's hidden activation and its GELU output (``2 · mlp hidden``);
- a softmax cross-attention to the caption (PixArt) holds heads × context scores per token unless the
  attention is fused (flash/xformers).

    bytes per latent pixel = bytes per token / patch²,   memory_usage_factor = that / (c MiB)

Pure arithmetic: no host imports.
"""

from __future__ import annotations

RESIDUAL_TENSORS = 2
ATTENTION_LIVE_TENSORS = {False: 4.0, True: 7.0}
"""Live image-sized tensors at the peak of one converted attention call, by joint (MM-EDiT) or not (EDiT):
PixArt-Σ's EDiT self-attention layer peaks at 16.9 KiB per token (fp32, width 1152: 3.8 widths), SD3.5-M's
MM-EDiT joint attention layer at 42.2 KiB per token at 16384 tokens (fp32, width 1536: 7.0 widths)."""
MIB = 1024 * 1024


def bytes_per_token(hidden: int, mlp_hidden: int, joint: bool, dtype_bytes: int, heads: int = 0,
                    context_tokens: int = 0, fused_attention: bool = True) -> float:
    """The largest live set of one converted block per image token (see the module docstring)."""
    widths = RESIDUAL_TENSORS + max(ATTENTION_LIVE_TENSORS[joint], 2.0 * mlp_hidden / hidden)
    scores = 0 if fused_attention else heads * context_tokens
    return dtype_bytes * (hidden * widths + scores)


def comfy_mib_per_unit_factor(dtype_bytes: int, fused_attention: bool) -> float:
    """ComfyUI's ``c``: MiB per latent pixel per unit of ``memory_usage_factor``."""
    return dtype_bytes * 0.01 if fused_attention else 0.15


def converted_memory_usage_factor(original: float, *, hidden: int, mlp_hidden: int, joint: bool, patch: int,
                                  dtype_bytes: int, heads: int = 0, context_tokens: int = 0,
                                  fused_attention: bool = True) -> float:
    """The ``memory_usage_factor`` that makes ComfyUI's estimate equal ``bytes_per_token / patch²`` per latent
    pixel, never above ``original`` (the estimate is only lowered where the formula says the model needs less)."""
    per_pixel = bytes_per_token(hidden, mlp_hidden, joint, dtype_bytes, heads, context_tokens,
                                fused_attention) / (patch * patch)
    return min(original, per_pixel / (comfy_mib_per_unit_factor(dtype_bytes, fused_attention) * MIB))


__all__ = ["bytes_per_token", "converted_memory_usage_factor", "comfy_mib_per_unit_factor",
           "ATTENTION_LIVE_TENSORS", "RESIDUAL_TENSORS"]
