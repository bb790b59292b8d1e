"""ComfyUI attention modules → ``edit_core`` ``Projections``.

ComfyUI keeps q/k/v in one fused ``qkv`` Linear ([3C, C]: rows 0:C are W_q, C:2C W_k, 2C:3C W_v). The
weights are fetched once per call the way the Linear itself would use them for this input — through
``comfy.ops.cast_bias_weight`` when the module casts (manual cast, fp8, lowvram streaming, weight
patches and LoRAs applied on the fly), scaled like ComfyUI's scaled-fp8 Linear — and sliced. No
attention math here: these are only the teacher's projections, handed to ``edit_core``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

import comfy.ops

from ..edit_core.modules.functional import Projections


def _casts_weights(module: torch.nn.Module) -> bool:
    return bool(getattr(module, "comfy_cast_weights", False) or getattr(module, "weight_function", None)
                or getattr(module, "bias_function", None))


def linear_weight_bias(module: torch.nn.Module, like: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The (weight, bias) a ComfyUI Linear uses for input ``like``, in ``like``'s dtype and device."""
    if _casts_weights(module):
        weight, bias = comfy.ops.cast_bias_weight(module, like)
    else:
        weight, bias = module.weight, module.bias
        if weight.dtype != like.dtype or weight.device != like.device:
            weight = weight.to(dtype=like.dtype, device=like.device)
            bias = None if bias is None else bias.to(dtype=like.dtype, device=like.device)
    scale = getattr(module, "scale_weight", None)  # ComfyUI's scaled-fp8 Linear
    if scale is not None:
        weight = weight * scale.to(device=weight.device, dtype=weight.dtype)
    return weight, bias


def _linear(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda t: F.linear(t, weight, bias)


def _then(first: Callable, norm: Optional[Callable]) -> Callable:
    return first if norm is None else (lambda t: norm(first(t)))


def optional_norm(module: Optional[torch.nn.Module]) -> Optional[torch.nn.Module]:
    """None for ComfyUI's ``nn.Identity`` placeholders, the module otherwise."""
    return None if module is None or isinstance(module, torch.nn.Identity) else module


def fused_qkv_projections(qkv: torch.nn.Module, like: torch.Tensor, *, head_norm_query=None, head_norm_key=None,
                          width_norm_query=None, width_norm_key=None) -> Projections:
    """Projections from a fused ``qkv`` Linear.

    ``head_norm_*``: per-head norms on [B, H, N, D] (SD3's ``ln_q``/``ln_k``); ``width_norm_*``: norms over the
    whole width on [B, N, C] right after the projection (PixArt's optional ``q_norm``/``k_norm``)."""
    weight, bias = linear_weight_bias(qkv, like)
    if weight.shape[0] % 3:
        raise ValueError(f"fused qkv weight has {weight.shape[0]} rows, not a multiple of 3")
    c = weight.shape[0] // 3
    parts = [_linear(weight[i * c:(i + 1) * c], None if bias is None else bias[i * c:(i + 1) * c])
             for i in range(3)]
    return Projections(query=_then(parts[0], optional_norm(width_norm_query)),
                       key=_then(parts[1], optional_norm(width_norm_key)),
                       value=parts[2],
                       norm_query=optional_norm(head_norm_query),
                       norm_key=optional_norm(head_norm_key))
