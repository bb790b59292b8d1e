"""Apply an EDiT adapter to a ComfyUI MODEL: detect, plan, clone, patch.

``apply_edit`` never touches the MODEL it is given: it clones it and adds to the clone
- one ModelPatcher holding the adapter's per-layer modules (``comfy.ops.manual_cast`` layers in the
  model's compute dtype), attached with ``set_additional_models`` so ComfyUI loads, offloads and counts
  it with the model;
- the family's host patcher's object patches (``nodes/hosts``) replacing the converted attentions;
- the adapter's fine-tuned teacher tensors, if any, as ``"diff"`` weight patches on the keys the family's
  ComfyUI key layout names (row ranges of a fused ``qkv``), so LoRAs stack before or after;
- an attachment describing what was applied (read by Save EDiT Checkpoint and distillation).
Which layers convert is ``edit_core.conversion.plan_conversion``'s answer; this module maps the node's
UI strings onto it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.ops

from ..edit_core.adapter import AdapterConfig
from ..edit_core.conversion import ConversionPlan, plan_conversion
from ..edit_core.families import TeacherSpec, tensor_place
from ..edit_core.ops import backends
from ..edit_core.ops.backends import BACKEND_NAMES
from .hosts import EDiTModelError, describe_model
from .memory_estimate import add_memory_estimate

ATTACHMENT_KEY = "edit"
ADDITIONAL_MODELS_KEY = "edit"
MODEL_PREFIX = "diffusion_model."  # ModelPatcher keys of the diffusion model's ComfyUI-layout weights
BACKENDS = BACKEND_NAMES
ETA_CHOICES = ("adapter default", "approx", "exact")
ATTN2_CHOICES = {"adapter default": "adapter", "off": "off"}  # UI string → conversion plan's attn2 mode


@dataclass
class EDiTApplied:
    """What a patched clone carries (``model.get_attachment("edit")``)."""
    adapter: object  # edit_core.adapter.Adapter
    config: AdapterConfig  # the adapter's config restricted to what was applied (blocks, attn2, eta)
    spec: TeacherSpec
    backend: str
    finetuned_keys: list
    converted: dict  # (block, slot) → the attention module running there


class EDiTAdapterModules(torch.nn.Module):
    """The converted layers' new modules, one ModelPatcher for all of them."""

    def __init__(self, layers: dict):
        super().__init__()
        self.layers = torch.nn.ModuleDict({f"{block}_{slot}": layer for (block, slot), layer in layers.items()})


def compute_dtype(model) -> torch.dtype:
    dtype = model.get_model_object("manual_cast_dtype")
    return dtype if dtype is not None else model.model.get_dtype()


def check_backend(backend: str, device, dtype: torch.dtype, head_dim: int) -> None:
    """Fail now, not at sampling time, when a forced backend cannot run on the model's device and dtype."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return
    probe = torch.zeros(1, 1, 2, head_dim, device=device, dtype=dtype)
    try:
        backends.resolve("linear_attention", backend, probe, probe, probe)
    except (RuntimeError, ValueError, KeyError) as e:
        raise ValueError(f"{e} (choose backend 'auto' to fall back)") from None


def _original_weight(model, key: str) -> torch.Tensor:
    """The unpatched base weight of ``key`` in real units, fp32 (even while another clone's patches are applied)."""
    weight, _, convert = comfy.model_patcher.get_key_weight(model.model, key)
    backup = model.backup.get(key)
    if backup is not None:
        weight = backup.weight
    weight = weight.detach().to(dtype=torch.float32, copy=True)
    return convert(weight, inplace=True) if convert is not None else weight


def finetuned_patches(model, adapter, spec: TeacherSpec, layers: list[tuple[int, str]]) -> dict:
    """ModelPatcher ``diff`` patches that turn the model's attention weights into the adapter's fine-tuned ones."""
    patches = {}
    for block, slot in layers:
        for name, value in sorted(adapter.finetuned(block, slot).items()):
            tensor, part = name.split(".", 1)
            place = tensor_place(spec, block, slot, tensor, layout="comfyui")
            if place is None:
                raise ValueError(f"adapter tensor blocks.{block}.{slot}.{name} has no place in a {spec.title} model")
            key = f"{MODEL_PREFIX}{place.key}.{part}"
            base = _original_weight(model, key)
            offset = None
            if place.chunk is not None:
                rows = base.shape[0] // 3
                offset = (0, place.chunk * rows, rows)
                base = base.narrow(*offset)
            if tuple(value.shape) != tuple(base.shape):
                raise ValueError(f"adapter tensor blocks.{block}.{slot}.{name} has shape {list(value.shape)}, the "
                                 f"model's {key} needs {list(base.shape)}")
            diff = value.detach().to(torch.float32) - base
            patches[key if offset is None else (key, offset)] = ("diff", (diff,))
    return patches


def apply_edit(model, adapter, *, backend: str = "auto", eta: str = "adapter default",
               convert_attn2: str = "adapter default", start_block: int = 0, end_block: int = -1, described=None):
    """A clone of ``model`` with ``adapter``'s attention. Raises a ValueError whose message says what to fix.
    ``described``: ``describe_model(model)`` when the caller already has it."""
    if model.get_attachment(ATTACHMENT_KEY) is not None:
        previous = model.get_attachment(ATTACHMENT_KEY)
        raise EDiTModelError(f"this MODEL already has EDiT attention (adapter '{previous.adapter.source}'); "
                             "connect the MODEL from before Apply EDiT Attention")
    if eta not in ETA_CHOICES:
        raise ValueError(f"eta must be one of {ETA_CHOICES}, got {eta!r}")
    if convert_attn2 not in ATTN2_CHOICES:
        raise ValueError(f"convert_attn2 must be one of {tuple(ATTN2_CHOICES)}, got {convert_attn2!r}")
    spec, host = described or describe_model(model)
    plan: ConversionPlan = plan_conversion(adapter, spec, start_block=start_block, end_block=end_block,
                                           attn2=ATTN2_CHOICES[convert_attn2],
                                           eta=None if eta == "adapter default" else eta, backend=backend)
    dtype = compute_dtype(model)
    check_backend(backend, model.load_device, dtype, spec.head_dim)

    layers = {(block, slot): adapter.build_layer(block, slot, dtype=dtype, device=model.offload_device,
                                                 operations=comfy.ops.manual_cast)
              for block, slot in plan.layers}
    for layer in layers.values():
        layer.requires_grad_(False)
    patches = finetuned_patches(model, adapter, spec, plan.layers)

    clone = model.clone()
    converted = host.patch(clone, plan, layers)
    add_memory_estimate(clone, spec, plan.layers)  # ComfyUI's memory estimate follows the converted attention
    if patches:
        accepted = clone.add_patches(patches, 1.0)
        if len(accepted) != len(patches):
            missing = sorted(str(k) for k in set(patches) - set(accepted))
            raise ValueError(f"the model has no tensors for the adapter's fine-tuned weights: {', '.join(missing)}")
    adapter_patcher = comfy.model_patcher.ModelPatcher(EDiTAdapterModules(layers), load_device=model.load_device,
                                                       offload_device=model.offload_device)
    clone.set_additional_models(ADDITIONAL_MODELS_KEY, [adapter_patcher])
    clone.set_attachments(ATTACHMENT_KEY, EDiTApplied(adapter=adapter, config=plan.applied_config(), spec=spec,
                                                      backend=backend,
                                                      finetuned_keys=sorted(str(k) for k in patches),
                                                      converted=converted))
    return clone
