"""EDiT / MM-EDiT on diffusers transformers, through attention processors.

``apply_edit(transformer, adapter)`` converts, in place, the layers ``edit_core.conversion.plan_conversion``
plans, with the processors the family registered here (``PROCESSORS``):

- PixArt-Σ / PixArt-α (``PixArtTransformer2DModel``): every converted block's ``attn1`` (self-attention) →
  EDiT linear compressed attention; ``attn2`` (cross-attention to the caption) stays softmax.
- SD3-Medium, SD3.5-Medium, SD3.5-Large (``SD3Transformer2DModel``): every converted block's joint ``attn``
  → the MM-EDiT hybrid (text rows exact softmax, image rows η̂·linear + (1−η̂)·softmax-to-text; the last,
  ``context_pre_only`` block computes image rows only), and SD3.5-M's dual-attention ``attn2`` layers → EDiT.

The teacher's projections stay where diffusers keeps them (``to_q``, ``norm_q``, ``add_q_proj``,
``to_out.0``, ...); the processors hand them to the variant's attention function as ``Projections``
and apply the module's own ``to_out`` / ``to_add_out``, so no attention math lives here. Each converted
Attention gets the adapter's trainable layer as a child module ``edit_adapter`` (so ``.to()``,
``.parameters()`` and training see it). The token grid (h, w) is recorded from the latent by a forward
pre-hook on the transformer. ``remove_edit`` restores processors, fine-tuned weights and the hook, after
which the model computes exactly what it did before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import diffusers
import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from ..adapter import Adapter, AdapterError, layer_prefix
from ..conversion import plan_conversion, plan_training_free
from ..families import TeacherSpec, attention_module_path, detect_teacher, family_title, get_family, tensor_place
from ..modules.functional import Projections
from ..variants import AttentionVariant

ADAPTER_MODULE = "edit_adapter"
_STATE_ATTR = "_edit_state"


class TokenGrid:
    """The image token grid of the current forward, shared by one transformer's EDiT processors.

    ``record`` is the transformer's forward pre-hook: it stores the latent's (H, W). ``__call__`` turns it
    into the (h, w) token grid for a sequence of ``num_tokens`` image tokens: ⌊H/p⌋×⌊W/p⌋ (diffusers'
    PatchEmbed drops a ragged edge), or ⌈H/p⌉×⌈W/p⌉ for an embedder that pads to the patch size."""

    def __init__(self, patch_size: int):
        self.patch_size = int(patch_size)
        self.latent: Optional[tuple[int, int]] = None

    def record(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden_states = kwargs.get("hidden_states", args[0] if args else None)
        if isinstance(hidden_states, torch.Tensor) and hidden_states.dim() >= 3:
            self.latent = (int(hidden_states.shape[-2]), int(hidden_states.shape[-1]))

    def __call__(self, num_tokens: int) -> tuple[int, int]:
        if self.latent is None:
            raise RuntimeError("EDiT: the token grid is unknown. Call the transformer itself (its forward pre-hook "
                               "records the latent size), not one of its attention modules on its own")
        h, w, p = *self.latent, self.patch_size
        for grid in ((h // p, w // p), (-(-h // p), -(-w // p))):
            if grid[0] * grid[1] == num_tokens:
                return grid
        raise ValueError(f"EDiT: {num_tokens} image tokens do not fit the latent {h}×{w} with patch size {p}")


class _ConvertedProcessor:
    """A converted Attention's processor; below ``min_tokens`` image tokens it calls the one it replaced."""

    def __init__(self, variant: AttentionVariant, grid: TokenGrid, backend: str, eta: str, name: str, *,
                 min_tokens: int = 0, fallback=None):
        self.variant, self.grid, self.backend, self.eta, self.name = variant, grid, backend, eta, name
        self.min_tokens, self.fallback = int(min_tokens), fallback

    def _skip(self, hidden_states: torch.Tensor) -> bool:
        return self.fallback is not None and hidden_states.shape[1] < self.min_tokens


class EDiTSelfAttentionProcessor(_ConvertedProcessor):
    """Processor for a converted image-only self-attention (PixArt ``attn1``, SD3.5 ``attn2``)."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, *args, **kwargs) -> torch.Tensor:
        if self._skip(hidden_states):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        _reject_mask(attention_mask, self.name)
        if encoder_hidden_states is not None:
            raise ValueError(f"EDiT: {self.name} is a converted self-attention but was given encoder_hidden_states")
        projections = Projections(attn.to_q, attn.to_k, attn.to_v, attn.norm_q, attn.norm_k)
        y = self.variant.self_attention(getattr(attn, ADAPTER_MODULE), hidden_states,
                                        self.grid(hidden_states.shape[1]), projections, attn.heads,
                                        backend=self.backend)
        return attn.to_out[1](attn.to_out[0](y))


class MMEDiTJointAttentionProcessor(_ConvertedProcessor):
    """Processor for a converted SD3 joint attention; returns what ``JointAttnProcessor2_0`` returns:
    ``(image_out, text_out)``. In a ``context_pre_only`` block the text rows are not computed and
    ``text_out`` is None (``JointTransformerBlock`` discards it there). Without encoder_hidden_states it
    is EDiT self-attention and returns ``image_out`` alone."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, *args, **kwargs):
        if self._skip(hidden_states):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        _reject_mask(attention_mask, self.name)
        layer = getattr(attn, ADAPTER_MODULE)
        grid = self.grid(hidden_states.shape[1])
        image_proj = Projections(attn.to_q, attn.to_k, attn.to_v, attn.norm_q, attn.norm_k)
        if encoder_hidden_states is None:
            y = self.variant.self_attention(layer, hidden_states, grid, image_proj, attn.heads, backend=self.backend)
            return attn.to_out[1](attn.to_out[0](y))
        text_proj = Projections(attn.add_q_proj, attn.add_k_proj, attn.add_v_proj, attn.norm_added_q,
                                attn.norm_added_k)
        image_rows, text_rows = self.variant.joint_attention(
            layer, hidden_states, encoder_hidden_states, grid, image_proj, text_proj, attn.heads, eta=self.eta,
            image_rows_only=bool(attn.context_pre_only), backend=self.backend)
        image_out = attn.to_out[1](attn.to_out[0](image_rows))
        if attn.context_pre_only:
            return image_out, None
        return image_out, attn.to_add_out(text_rows)


PROCESSORS: dict[str, dict[str, type]] = {}  # family → slot → processor class


def register_processors(family: str, processors: dict[str, type]) -> None:
    PROCESSORS[get_family(family).name] = dict(processors)


register_processors("pixart_sigma", {"attn": EDiTSelfAttentionProcessor})
register_processors("pixart_alpha", {"attn": EDiTSelfAttentionProcessor})
register_processors("sd35_medium", {"attn": MMEDiTJointAttentionProcessor, "attn2": EDiTSelfAttentionProcessor})
register_processors("sd35_large", {"attn": MMEDiTJointAttentionProcessor})
register_processors("sd3_medium", {"attn": MMEDiTJointAttentionProcessor})


def _reject_mask(attention_mask, name: str) -> None:
    if attention_mask is not None:
        raise ValueError(f"EDiT: {name} got an attention_mask, but EDiT linear attention has no mask support; "
                         "run without a mask over image tokens, or remove_edit() first")


@dataclass
class _PatchedLayer:
    block: int
    slot: str
    name: str  # module path inside the transformer, e.g. "transformer_blocks.3.attn1"
    attention: Attention
    processor: object  # the original processor, restored by remove_edit
    backups: dict[str, torch.Tensor] = field(default_factory=dict)  # parameter path → original value (CPU)


@dataclass
class _EDiTState:
    adapter: Optional[Adapter]  # None in the training-free mode
    spec: TeacherSpec
    grid: TokenGrid
    hook: torch.utils.hooks.RemovableHandle
    layers: list[_PatchedLayer]


# ---------------------------------------------------------------------------------------------- helpers

def _state(transformer: nn.Module) -> Optional[_EDiTState]:
    return transformer.__dict__.get(_STATE_ATTR)


def _transformer_class(family) -> type:
    return getattr(diffusers, family.architecture.diffusers_class)


def transformer_classes() -> tuple[type, ...]:
    """The diffusers transformer classes of the families with processors here."""
    return tuple(dict.fromkeys(_transformer_class(get_family(name)) for name in PROCESSORS))


def _teacher_spec(transformer: nn.Module) -> TeacherSpec:
    classes = transformer_classes()
    if not isinstance(transformer, classes):
        raise TypeError(f"EDiT supports diffusers {' and '.join(c.__name__ for c in classes)}, not "
                        f"{type(transformer).__name__}")
    keys = {k: v for k, v in transformer.state_dict(keep_vars=True).items() if f".{ADAPTER_MODULE}." not in k}
    spec = detect_teacher(keys, num_heads=transformer.config.num_attention_heads)
    if spec.family not in PROCESSORS or not isinstance(transformer, _transformer_class(spec.record)):
        raise TypeError(f"EDiT: a {type(transformer).__name__} whose weights look like {spec.title} is not supported")
    return spec


def projection_module_path(spec: TeacherSpec, block: int, slot: str, name: str) -> Optional[str]:
    """The Attention's own module path of a canonical projection ("to_out" → "to_out.0"), or None."""
    place = tensor_place(spec, block, slot, name, layout="diffusers")
    module = attention_module_path(spec, block, slot, layout="diffusers")
    if place is None or not place.key.startswith(module + "."):
        return None
    return place.key[len(module) + 1:]


def _parameter_path(spec: TeacherSpec, block: int, slot: str, canonical: str) -> Optional[str]:
    name, part = canonical.split(".", 1)
    path = projection_module_path(spec, block, slot, name)
    return None if path is None else f"{path}.{part}"


def _check_attention(attention, name: str, joint: bool) -> list[str]:
    if not isinstance(attention, Attention):
        return [f"{name} is {type(attention).__name__}, not a diffusers Attention"]
    problems = []
    for attr in ("spatial_norm", "group_norm"):
        if getattr(attention, attr, None) is not None:
            problems.append(f"{name} uses {attr}, which EDiT does not support")
    if getattr(attention, "residual_connection", False) or getattr(attention, "rescale_output_factor", 1.0) != 1.0:
        problems.append(f"{name} uses a residual connection or output rescale, which EDiT does not support")
    if joint and getattr(attention, "add_q_proj", None) is None:
        problems.append(f"{name} has no text-stream projections (add_q_proj); it is not a joint attention")
    return problems


def _plan_finetuned(adapter: Adapter, spec: TeacherSpec, attention: Attention, block: int, slot: str, name: str,
                    problems: list[str]) -> dict[str, torch.Tensor]:
    """Parameter path → fine-tuned tensor, checked against the attention's parameters (nothing copied yet)."""
    plan = {}
    for canonical, tensor in adapter.finetuned(block, slot).items():
        path = _parameter_path(spec, block, slot, canonical)
        try:
            if path is None:
                raise AttributeError(canonical)
            param = attention.get_parameter(path)
        except AttributeError:
            problems.append(f"fine-tuned tensor {layer_prefix(block, slot)}{canonical} has no place in {name} "
                            f"(no parameter {path})")
            continue
        if tuple(param.shape) != tuple(tensor.shape):
            problems.append(f"fine-tuned tensor {layer_prefix(block, slot)}{canonical} has shape {list(tensor.shape)}, "
                            f"{name}.{path} has {list(param.shape)}")
            continue
        plan[path] = tensor
    return plan


# ---------------------------------------------------------------------------------------------- public API

def apply_edit(transformer: nn.Module, adapter: Adapter, *, backend: str = "auto", eta: Optional[str] = None,
               attn2: str = "adapter", start_block: int = 0, end_block: int = -1) -> nn.Module:
    """Convert ``transformer``'s attention to the adapter's variant, in place; returns it.

    ``eta``: "approx" | "exact" for MM-EDiT joint attention (None: the adapter's). ``attn2``: "adapter"
    converts exactly the adapter's attn2 layers, "off" leaves every SD3.5 ``attn2`` softmax, "all" also
    requires the adapter to cover all of them. ``start_block``/``end_block`` (inclusive, -1 = last) limit the
    converted blocks. An already patched transformer is first restored. Raises AdapterError when the adapter
    does not fit the model; nothing is changed then."""
    spec = _teacher_spec(transformer)
    plan = plan_conversion(adapter, spec, start_block=start_block, end_block=end_block, attn2=attn2, eta=eta,
                           backend=backend)
    return _convert(transformer, spec, plan, adapter.source,
                    lambda block, slot, weight: adapter.build_layer(block, slot, dtype=weight.dtype,
                                                                    device=weight.device))


def apply_training_free(transformer: nn.Module, ratio: int = 2, min_tokens: int = 0,
                        blocks: Optional[tuple[int, int]] = None, temperature: str = "teacher") -> nn.Module:
    """Training-free fast attention, in place: softmax over r×r-pooled image keys/values (``kv_pool``) in
    every attention slot of ``blocks`` (inclusive (start, end); None: all), for calls whose image has at least
    ``min_tokens`` tokens (smaller ones run the original processors, bit-identically). Undo with ``remove_edit``."""
    from ..modules.kv_compression import KVCompression

    spec = _teacher_spec(transformer)
    start, end = (0, -1) if blocks is None else blocks
    plan = plan_training_free(spec, start_block=start, end_block=end)
    KVCompression(ratio=ratio, temperature=temperature)  # checks the settings before anything changes
    return _convert(transformer, spec, plan, "training-free",
                    lambda block, slot, weight: KVCompression(ratio=ratio, temperature=temperature),
                    min_tokens=min_tokens)


def _convert(transformer: nn.Module, spec: TeacherSpec, plan, source: str, make_layer, *, min_tokens: int = 0):
    processors = PROCESSORS[spec.family]
    grid = TokenGrid(transformer.config.patch_size)

    planned, problems = [], []
    for block, slot in plan.layers:
        name = attention_module_path(spec, block, slot, layout="diffusers")
        processor_class = processors.get(slot)
        if processor_class is None:
            problems.append(f"{family_title(spec.family)} has no processor for {slot!r} layers")
            continue
        try:
            attention = transformer.get_submodule(name)
        except AttributeError:
            problems.append(f"this model has no {name}")
            continue
        is_joint = processor_class is MMEDiTJointAttentionProcessor
        layer_problems = _check_attention(attention, name, is_joint)
        if layer_problems:
            problems += layer_problems
            continue
        finetuned = {} if plan.adapter is None else _plan_finetuned(plan.adapter, spec, attention, block, slot, name,
                                                                    problems)
        module = make_layer(block, slot, attention.to_q.weight)
        planned.append((block, slot, name, attention, processor_class, module, finetuned))
    if problems:
        raise AdapterError(source, problems)

    remove_edit(transformer)
    patched = []
    for block, slot, name, attention, processor_class, module, finetuned in planned:
        layer = _PatchedLayer(block, slot, name, attention, attention.processor)
        with torch.no_grad():
            for path, tensor in finetuned.items():
                param = attention.get_parameter(path)
                layer.backups[path] = param.detach().to("cpu", copy=True)
                param.copy_(tensor.to(dtype=param.dtype, device=param.device))
        attention.add_module(ADAPTER_MODULE, module)
        attention.set_processor(processor_class(plan.variant, grid, plan.backend, plan.eta, name,
                                                min_tokens=min_tokens, fallback=layer.processor))
        patched.append(layer)
    hook = transformer.register_forward_pre_hook(grid.record, with_kwargs=True)
    transformer.__dict__[_STATE_ATTR] = _EDiTState(plan.adapter, spec, grid, hook, patched)
    return transformer


def forward_kwargs(transformer: nn.Module, hidden_states: torch.Tensor, timestep: torch.Tensor,
                   cond: dict[str, torch.Tensor]) -> dict:
    """Keyword arguments of one forward of a supported transformer: ``cond`` (the family's conditioning keys,
    e.g. ``encoder_hidden_states`` + ``pooled_projections``) plus what the class itself needs (PixArt's
    ``added_cond_kwargs``: the image size micro-conditions where the model uses them, VAE factor 8)."""
    device, batch = hidden_states.device, hidden_states.shape[0]
    kwargs = {"hidden_states": hidden_states, "timestep": timestep, "return_dict": False}
    kwargs.update({k: (None if v is None else v.to(device)) for k, v in cond.items()})
    if isinstance(transformer, diffusers.PixArtTransformer2DModel):
        kwargs.setdefault("encoder_attention_mask", None)
        if getattr(transformer, "use_additional_conditions", False):
            h, w = hidden_states.shape[-2] * 8, hidden_states.shape[-1] * 8
            kwargs["added_cond_kwargs"] = {
                "resolution": torch.tensor([[h, w]], device=device, dtype=torch.float32).expand(batch, 2),
                "aspect_ratio": torch.tensor([[h / w]], device=device, dtype=torch.float32).expand(batch, 1)}
        else:
            kwargs["added_cond_kwargs"] = {"resolution": None, "aspect_ratio": None}
    return kwargs


def remove_edit(transformer: nn.Module) -> nn.Module:
    """Undo ``apply_edit``: original processors and weights back, ``edit_adapter`` children and the hook gone.
    A transformer that is not patched is returned unchanged."""
    state = _state(transformer)
    if state is None:
        return transformer
    with torch.no_grad():
        for layer in state.layers:
            for path, original in layer.backups.items():
                param = layer.attention.get_parameter(path)
                param.copy_(original.to(dtype=param.dtype, device=param.device))
            if ADAPTER_MODULE in layer.attention._modules:
                delattr(layer.attention, ADAPTER_MODULE)
            layer.attention.set_processor(layer.processor)
    state.hook.remove()
    del transformer.__dict__[_STATE_ATTR]
    return transformer


def is_edit_applied(transformer: nn.Module) -> bool:
    return _state(transformer) is not None


def _patched_state(transformer: nn.Module) -> _EDiTState:
    state = _state(transformer)
    if state is None:
        raise ValueError(f"this {type(transformer).__name__} has no EDiT attention; call apply_edit first")
    return state


def edit_parameters(transformer: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters of every ``edit_adapter`` (not the teacher's own projections)."""
    return [p for layer in _patched_state(transformer).layers
            for p in getattr(layer.attention, ADAPTER_MODULE).parameters()]


def edit_state_dict(transformer: nn.Module) -> dict[str, torch.Tensor]:
    """The live adapter tensors under canonical adapter keys (``blocks.{i}.{slot}.conv_fusion...``),
    e.g. to save an adapter after training; fine-tuned teacher tensors are not included."""
    return {layer_prefix(layer.block, layer.slot) + key: value
            for layer in _patched_state(transformer).layers
            for key, value in getattr(layer.attention, ADAPTER_MODULE).state_dict().items()}


__all__ = ["apply_edit", "apply_training_free", "remove_edit", "is_edit_applied", "edit_parameters", "edit_state_dict",
           "EDiTSelfAttentionProcessor", "MMEDiTJointAttentionProcessor", "TokenGrid", "ADAPTER_MODULE", "PROCESSORS",
           "register_processors", "projection_module_path", "transformer_classes", "forward_kwargs"]
