"""ComfyUI attention modules → ``edit_core`` ``Projections``.

ComfyUI keeps q/k/v in one fused ``qkv`` Linear ([3C, C]: rows 0:C are W_q, C:2C W_k, 2C:3C W_v). The
weights are fetched once per call the way the Linear itself would use them for this input — through
``comfy.ops.cast_bias_weight`` when the module casts (manual cast, fp8, lowvram streaming, weight
patches and LoRAs applied on the fly), scaled like ComfyUI's scaled-fp8 Linear — and sliced. No
attention math here: these are only the teacher's projections, handed to ``edit_core``.

``ProjectionWeights`` is the extension point distillation uses to fine-tune them without touching the model:
a table of the student's own tensors for some of the model's attention modules (by module), which the
student's slot modules read instead of the modules' weights. Without one (inference) nothing changes.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

import comfy.ldm.common_dit
import comfy.ops

from ..edit_core.modules.functional import Projections


def _casts_weights(module: torch.nn.Module) -> bool:
    return bool(getattr(module, "comfy_cast_weights", False) or getattr(module, "weight_function", None)
                or getattr(module, "bias_function", None))


class ProjectionWeights:
    """The student's own tensors for some attention modules of a ComfyUI model (fused ``qkv``, ``proj``, qk-norms).

    ``add(module, part, tensor, chunk)``: ``part`` "weight" | "bias"; ``chunk`` the third of a fused ``qkv``'s
    rows (0 q, 1 k, 2 v) or None for the whole tensor; ``tensor`` a zero-argument callable giving the current
    value (fp32 master weights plus any offset; called per use so autograd sees the parameters). Parts and chunks
    not added are the module's own, as the module would use them for this input. Modules are held by identity
    and never changed."""

    def __init__(self):
        self._entries: dict[int, tuple[torch.nn.Module, dict]] = {}

    def add(self, module: torch.nn.Module, part: str, tensor: Callable[[], torch.Tensor],
            chunk: Optional[int] = None) -> None:
        entry = self._entries.setdefault(id(module), (module, {}))[1]
        entry[(part, chunk)] = tensor

    def __contains__(self, module) -> bool:
        return module is not None and id(module) in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def tensors(self, module: torch.nn.Module, like: torch.Tensor,
                own: Callable[[], tuple[torch.Tensor, Optional[torch.Tensor]]]) -> tuple:
        """(weight, bias) for ``module``, in ``like``'s dtype and device: the added parts, the rest from ``own()``."""
        entry = self._entries[id(module)][1]
        cast = {"dtype": like.dtype, "device": like.device}
        fallback = []  # own() at most once, only when a part or chunk is not the student's

        def module_own(index: int) -> Optional[torch.Tensor]:
            if not fallback:
                fallback.extend(own())
            return fallback[index]

        out = []
        for index, part in enumerate(("weight", "bias")):
            chunks = [entry.get((part, c)) for c in range(3)]
            if (part, None) in entry:
                value = entry[(part, None)]()
            elif any(chunks):
                rows = None if all(chunks) else module_own(index).shape[0] // 3
                value = torch.cat([chunk().to(**cast) if chunk
                                   else module_own(index)[c * rows:(c + 1) * rows].to(**cast)
                                   for c, chunk in enumerate(chunks)])
            else:
                value = module_own(index)
            out.append(None if value is None else value.to(**cast))
        return out[0], out[1]


def linear_weight_bias(module: torch.nn.Module, like: torch.Tensor,
                       weights: Optional[ProjectionWeights] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The (weight, bias) a ComfyUI Linear uses for input ``like``, in ``like``'s dtype and device (with
    ``weights``: the student's tensors where it has them)."""
    if weights is not None and module in weights:
        return weights.tensors(module, like, lambda: linear_weight_bias(module, like))
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


def optional_norm(module: Optional[torch.nn.Module], weights: Optional[ProjectionWeights] = None
                  ) -> Optional[Callable]:
    """None for ComfyUI's ``nn.Identity`` placeholders, the module otherwise (with ``weights`` holding it: the
    same norm with the student's weight and bias)."""
    if module is None or isinstance(module, torch.nn.Identity):
        return None
    if weights is None or module not in weights:
        return module
    return lambda t: _norm_with(module, t, weights)


def _norm_with(module: torch.nn.Module, x: torch.Tensor, weights: ProjectionWeights) -> torch.Tensor:
    """``module`` (a LayerNorm, or an RMSNorm such as MMDiT's ``ln_q``) with the student's affine tensors."""
    weight, bias = weights.tensors(module, x, lambda: (getattr(module, "weight", None), getattr(module, "bias", None)))
    if isinstance(module, torch.nn.LayerNorm):
        return F.layer_norm(x, module.normalized_shape, weight, bias, module.eps)
    if bias is None and hasattr(module, "eps"):  # ComfyUI's RMSNorm: rms_norm(x, weight, eps)
        return comfy.ldm.common_dit.rms_norm(x, weight, module.eps)
    raise TypeError(f"cannot fine-tune the affine tensors of a {type(module).__name__}")


def apply_linear(module: torch.nn.Module, x: torch.Tensor, weights: Optional[ProjectionWeights] = None
                 ) -> torch.Tensor:
    """``module(x)`` for a ComfyUI Linear, with the student's tensors when ``weights`` holds it."""
    if weights is None or module not in weights:
        return module(x)
    return F.linear(x, *linear_weight_bias(module, x, weights))


def fused_qkv_projections(qkv: torch.nn.Module, like: torch.Tensor, *, head_norm_query=None, head_norm_key=None,
                          width_norm_query=None, width_norm_key=None,
                          weights: Optional[ProjectionWeights] = None) -> Projections:
    """Projections from a fused ``qkv`` Linear.

    ``head_norm_*``: per-head norms on [B, H, N, D] (SD3's ``ln_q``/``ln_k``); ``width_norm_*``: norms over the
    whole width on [B, N, C] right after the projection (PixArt's optional ``q_norm``/``k_norm``); ``weights``:
    the student's tensors for any of these modules."""
    weight, bias = linear_weight_bias(qkv, like, weights)
    if weight.shape[0] % 3:
        raise ValueError(f"fused qkv weight has {weight.shape[0]} rows, not a multiple of 3")
    c = weight.shape[0] // 3
    parts = [_linear(weight[i * c:(i + 1) * c], None if bias is None else bias[i * c:(i + 1) * c])
             for i in range(3)]
    return Projections(query=_then(parts[0], optional_norm(width_norm_query, weights)),
                       key=_then(parts[1], optional_norm(width_norm_key, weights)),
                       value=parts[2],
                       norm_query=optional_norm(head_norm_query, weights),
                       norm_key=optional_norm(head_norm_key, weights))
