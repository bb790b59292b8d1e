"""Apply an EDiT adapter to a ComfyUI MODEL: detect, check, clone, patch.

``apply_edit`` never touches the MODEL it is given: it clones it and adds to the clone
- one ModelPatcher holding the adapter's per-layer modules (``comfy.ops.manual_cast`` layers in the
  model's compute dtype), attached with ``set_additional_models`` so ComfyUI loads, offloads and counts
  it with the model;
- object patches replacing the converted attentions (``patch_pixart`` / ``patch_mmdit``);
- the adapter's fine-tuned teacher tensors, if any, as ``"diff"`` weight patches on the fused
  ``qkv``/``proj``/norm keys (row ranges of ``qkv``), so LoRAs stack before or after;
- an attachment describing what was applied (read by Save EDiT Checkpoint).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.ops

from ..edit_core.adapter import AdapterConfig
from ..edit_core.families import FAMILY_TITLES, FamilyError, TeacherSpec, detect_teacher
from ..edit_core.ops import backends
from ..edit_core.variants import get_variant
from .patch_mmdit import patch_mmdit
from .patch_pixart import patch_pixart

ATTACHMENT_KEY = "edit"
ADDITIONAL_MODELS_KEY = "edit"
BACKENDS = ("auto", "torch", "triton")
ETA_CHOICES = ("adapter default", "approx", "exact")
ATTN2_CHOICES = ("adapter default", "off")


class EDiTModelError(ValueError):
    """This MODEL cannot take EDiT attention (not PixArt-Σ / SD3.5-M, already converted, …)."""


@dataclass
class EDiTApplied:
    """What a patched clone carries (``model.get_attachment("edit")``)."""
    adapter: object  # edit_core.adapter.Adapter
    config: AdapterConfig  # the adapter's config restricted to what was applied (blocks, attn2, eta)
    spec: TeacherSpec
    backend: str
    finetuned_keys: list


class EDiTAdapterModules(torch.nn.Module):
    """The converted layers' new modules, one ModelPatcher for all of them."""

    def __init__(self, layers: dict):
        super().__init__()
        self.layers = torch.nn.ModuleDict({f"{block}_{slot}": layer for (block, slot), layer in layers.items()})


def _kind(diffusion_model) -> Optional[str]:
    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit
    import comfy.ldm.pixart.pixartms as pixartms

    if isinstance(diffusion_model, pixartms.PixArtMS):
        return "pixart"
    if isinstance(diffusion_model, mmdit.MMDiT):
        return "mmdit"
    return None


def describe_model(model) -> TeacherSpec:
    """Family and attention geometry of a MODEL, from its diffusion model's class, keys and shapes."""
    diffusion_model = model.get_model_object("diffusion_model")
    kind = _kind(diffusion_model)
    name = f"{type(model.model).__name__} ({type(diffusion_model).__name__})"
    if kind is None:
        raise EDiTModelError(f"EDiT converts PixArt-Sigma and SD3.5-Medium models; this MODEL is {name}")
    state = diffusion_model.state_dict(keep_vars=True)  # references, no copies
    try:
        spec = detect_teacher(state, num_heads=int(diffusion_model.num_heads) if kind == "pixart" else None)
    except FamilyError as e:
        raise EDiTModelError(f"this MODEL ({name}) cannot be converted: {e}") from None
    return spec


def compute_dtype(model) -> torch.dtype:
    dtype = model.get_model_object("manual_cast_dtype")
    return dtype if dtype is not None else model.model.get_dtype()


def select_layers(config: AdapterConfig, num_blocks: int, start_block: int = 0, end_block: int = -1,
                  convert_attn2: str = "adapter default") -> tuple[list[int], list[int]]:
    last = num_blocks - 1
    end = last if end_block < 0 else min(int(end_block), last)
    start = max(0, int(start_block))
    if start > end:
        raise ValueError(f"EDiT block range {start_block}..{end_block} is empty for a model with {num_blocks} "
                         f"blocks (0..{last}; end -1 = last)")
    attn = [b for b in config.converted_blocks if start <= b <= end]
    attn2 = [] if convert_attn2 == "off" else [b for b in config.attn2_blocks if start <= b <= end]
    if not attn and not attn2:
        raise ValueError(f"the adapter converts no attention in blocks {start}..{end} (it converts blocks "
                         f"{config.converted_blocks}" + (f", attn2 {config.attn2_blocks}" if config.attn2_blocks
                                                         else "") + ")")
    return attn, attn2


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


# canonical fine-tuned tensor name → (module below the layer's base, chunk of a fused qkv or None)
_PIXART_TARGETS = {"to_q": ("qkv", 0), "to_k": ("qkv", 1), "to_v": ("qkv", 2), "to_out": ("proj", None),
                   "norm_q": ("q_norm", None), "norm_k": ("k_norm", None)}
_MMDIT_IMAGE_TARGETS = {"to_q": ("qkv", 0), "to_k": ("qkv", 1), "to_v": ("qkv", 2), "to_out": ("proj", None),
                        "norm_q": ("ln_q", None), "norm_k": ("ln_k", None)}
_MMDIT_TEXT_TARGETS = {"add_q_proj": ("qkv", 0), "add_k_proj": ("qkv", 1), "add_v_proj": ("qkv", 2),
                       "to_add_out": ("proj", None), "norm_added_q": ("ln_q", None), "norm_added_k": ("ln_k", None)}


def finetuned_target(family: str, block: int, slot: str, name: str) -> tuple[str, Optional[int]]:
    """(ModelPatcher key of the model tensor that holds ``name``, its chunk of a fused qkv or None)."""
    tensor, part = name.split(".", 1)
    if family.startswith("pixart"):
        module, chunk = _PIXART_TARGETS[tensor]
        return f"diffusion_model.blocks.{block}.attn.{module}.{part}", chunk
    if tensor in _MMDIT_TEXT_TARGETS:
        if slot != "attn":
            raise KeyError(name)
        module, chunk = _MMDIT_TEXT_TARGETS[tensor]
        return f"diffusion_model.joint_blocks.{block}.context_block.attn.{module}.{part}", chunk
    module, chunk = _MMDIT_IMAGE_TARGETS[tensor]
    return f"diffusion_model.joint_blocks.{block}.x_block.{slot}.{module}.{part}", chunk


def _original_weight(model, key: str) -> torch.Tensor:
    """The unpatched base weight of ``key`` in real units, fp32 (even while another clone's patches are applied)."""
    weight, _, convert = comfy.model_patcher.get_key_weight(model.model, key)
    backup = model.backup.get(key)
    if backup is not None:
        weight = backup.weight
    weight = weight.detach().to(dtype=torch.float32, copy=True)
    return convert(weight, inplace=True) if convert is not None else weight


def finetuned_patches(model, adapter, family: str, layers: list[tuple[int, str]]) -> dict:
    patches = {}
    for block, slot in layers:
        for name, value in sorted(adapter.finetuned(block, slot).items()):
            try:
                key, chunk = finetuned_target(family, block, slot, name)
            except KeyError:
                raise ValueError(f"adapter tensor blocks.{block}.{slot}.{name} has no place in a "
                                 f"{FAMILY_TITLES.get(family, family)} model") from None
            base = _original_weight(model, key)
            offset = None
            if chunk is not None:
                rows = base.shape[0] // 3
                offset = (0, chunk * rows, rows)
                base = base.narrow(*offset)
            if tuple(value.shape) != tuple(base.shape):
                raise ValueError(f"adapter tensor blocks.{block}.{slot}.{name} has shape {list(value.shape)}, the "
                                 f"model's {key} needs {list(base.shape)}")
            diff = value.detach().to(torch.float32) - base
            patches[key if offset is None else (key, offset)] = ("diff", (diff,))
    return patches


def apply_edit(model, adapter, *, backend: str = "auto", eta: str = "adapter default",
               convert_attn2: str = "adapter default", start_block: int = 0, end_block: int = -1):
    """A clone of ``model`` with ``adapter``'s attention. Raises a ValueError whose message says what to fix."""
    if model.get_attachment(ATTACHMENT_KEY) is not None:
        previous = model.get_attachment(ATTACHMENT_KEY)
        raise EDiTModelError(f"this MODEL already has EDiT attention (adapter '{previous.adapter.source}'); "
                             "connect the MODEL from before Apply EDiT Attention")
    if eta not in ETA_CHOICES:
        raise ValueError(f"eta must be one of {ETA_CHOICES}, got {eta!r}")
    if convert_attn2 not in ATTN2_CHOICES:
        raise ValueError(f"convert_attn2 must be one of {ATTN2_CHOICES}, got {convert_attn2!r}")
    spec = describe_model(model)
    adapter.check_compatible(spec)
    dtype = compute_dtype(model)
    check_backend(backend, model.load_device, dtype, spec.head_dim)
    config = adapter.config
    variant = get_variant(config.variant)
    attn_blocks, attn2_blocks = select_layers(config, spec.num_blocks, start_block, end_block, convert_attn2)
    applied_eta = config.eta if eta == "adapter default" else eta
    wanted = [(b, "attn") for b in attn_blocks] + [(b, "attn2") for b in attn2_blocks]

    layers = {(block, slot): adapter.build_layer(block, slot, dtype=dtype, device=model.offload_device,
                                                 operations=comfy.ops.manual_cast)
              for block, slot in wanted}
    for layer in layers.values():
        layer.requires_grad_(False)
    patches = finetuned_patches(model, adapter, spec.family, wanted)

    clone = model.clone()
    if spec.family.startswith("pixart"):
        patch_pixart(clone, layers, attention=variant.self_attention, backend=backend)
    else:
        patch_mmdit(clone, layers, variant=variant, eta=applied_eta, backend=backend)
    if patches:
        accepted = clone.add_patches(patches, 1.0)
        if len(accepted) != len(patches):
            missing = sorted(str(k) for k in set(patches) - set(accepted))
            raise ValueError(f"the model has no tensors for the adapter's fine-tuned weights: {', '.join(missing)}")
    adapter_patcher = comfy.model_patcher.ModelPatcher(EDiTAdapterModules(layers), load_device=model.load_device,
                                                       offload_device=model.offload_device)
    clone.set_additional_models(ADDITIONAL_MODELS_KEY, [adapter_patcher])
    applied = dataclasses.replace(config, converted_blocks=attn_blocks, attn2_blocks=attn2_blocks, eta=applied_eta,
                                  training=dict(config.training))
    clone.set_attachments(ATTACHMENT_KEY, EDiTApplied(adapter=adapter, config=applied, spec=spec, backend=backend,
                                                      finetuned_keys=sorted(str(k) for k in patches)))
    return clone
