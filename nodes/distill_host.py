"""``DistillHost`` for a ComfyUI MODEL: distil an EDiT / MM-EDiT adapter with the teacher ComfyUI already loaded.

The teacher and the student are one clone of the MODEL, patched by ``apply_edit`` (same object patches as
Apply EDiT Attention). Distillation wraps, never lives inside, those modules: each converted slot of a patched
unit (``nodes/hosts``) is swapped for a ``TeacherForced`` wrapper holding the slot's softmax attention and its
EDiT attention. "teacher" runs the softmax one, "student" the EDiT one, "teacher_forced" both on the same
input (the pair, after the output projection, is recorded; the softmax output is carried on). No second copy
of the model: the clone shares the loaded weights; the only new tensors are the adapter layers, kept in fp32 as master weights (``comfy.ops``
manual-cast layers cast them to the model's compute dtype on the fly).

Fine-tuned projections (``train_projections``, or a starting adapter that carries some): the shared weights are
never written. Each converted slot's student gets its own fp32 copy of the projection tensors it fine-tunes
(canonical ``FINETUNE_NAMES`` — q/k/v/out, qk-norms, and MMDiT's text-stream add_q/k/v_proj, to_add_out,
norm_added_q/k — placed in ComfyUI's layout by ``edit_core.families.tensor_place``), initialised from the
starting adapter's tensor or else the model's unpatched weight, held in a ``ProjectionWeights`` table that only
the student slot module (and, while the slot runs as the student, the unit's output projection) reads; the
teacher keeps reading the model's own weights. The trainable tensors are the fine-tuned tensors themselves
(the trainer's EMA and checkpoints treat them as such) and are exported as they are, so Apply EDiT Attention's
``"diff"`` weight patches rebuild the student exactly. Weight patches the MODEL already carries on those
tensors (LoRAs) are kept as a frozen offset added to the copy, as Apply EDiT stacks them on the adapter's.

Calls go through ComfyUI's own ``BaseModel.apply_model`` (the model's wrappers, dtype casts and
``model_sampling``). The trainer speaks in model timesteps and diffusion-space latents (``schedules.py``):
ε-prediction x_t = √ᾱ·x0 + √(1−ᾱ)·ε at integer t (PixArt-Σ), rectified flow x_t = (1−σ)·x0 + σ·ε at t = 1000·σ
(SD3.5). ``model_sampling`` gives σ for t (EPS: ``sigma(t)``; flow: t / multiplier, the inverse of its
``timestep``) and the input scale (``calculate_input``); the raw prediction is (x − denoised) / σ. The training
schedule is built from the same ``model_sampling`` (ᾱ = 1 / (1 + σ²); the flow shift).

ComfyUI runs nodes under ``torch.inference_mode``. Construct and use the host inside
``torch.inference_mode(False)``: weights loaded in inference mode are inference tensors, which autograd
cannot save, so ``load`` replaces each such parameter and buffer with an ordinary copy of the same values
(same names, bit-identical, no extra memory once done) — as ComfyUI itself replaces parameters when it
patches weights.
"""

from __future__ import annotations

import logging
import math
from typing import Optional

import torch

import comfy.lora
import comfy.model_management
import comfy.model_sampling
import comfy.patcher_extension
import comfy.utils

from ..edit_core.adapter import FINETUNE_NAMES, Adapter, AdapterConfig, init_adapter_from_teacher, layer_prefix
from ..edit_core.distill.host import MODES, Conditioning, LayerPair, ModeSwitch, SwitchedHost
from ..edit_core.distill.schedules import DDPMSchedule, FlowSchedule
from ..edit_core.distill.trainer import DistillError
from ..edit_core.families import get_family, tensor_place
from ..edit_core.variants import distillable_variants
from .apply import ADDITIONAL_MODELS_KEY, ATTACHMENT_KEY, MODEL_PREFIX, _original_weight, apply_edit
from .hosts import AttentionSlots, describe_model
from .hosts.base import projection_weights
from .projections import ProjectionWeights

log = logging.getLogger("ComfyUI-EDiT")

_IGNORED_CONDITIONING = ("control", "area", "mask", "gligen", "hooks")  # the teacher samples from the text alone


class TeacherForced(torch.nn.Module):
    """Stands in a converted slot while distilling: runs the slot's softmax attention (``teacher``), its EDiT
    attention (``student``) or both on the same input, as the switch says, and records teacher-forced pairs
    (``blocks.{i}.{slot}`` and, for MMDiT's text stream, ``blocks.{i}.attn.text``)."""

    def __init__(self, unit: AttentionSlots, slot: str, teacher: torch.nn.Module, student: torch.nn.Module,
                 switch: ModeSwitch):
        super().__init__()
        self.slot, self.switch = slot, switch
        self._parts = (unit, teacher, student)  # not registered: they belong to the model and the adapter

    @property
    def student(self) -> torch.nn.Module:
        return self._parts[2]

    @property
    def projection_weights(self):
        """The student's projection tensors while the slot runs as the student (the unit's output projection
        reads them); None otherwise, so the teacher's output is projected by the model's own weights."""
        return projection_weights(self.student) if self.switch.mode == "student" else None

    def forward(self, *args, **kwargs):
        unit, teacher, student = self._parts
        mode = self.switch.mode
        if mode == "student":
            return student(*args, **kwargs)
        with torch.no_grad():
            out = teacher(*args, **kwargs)
        if mode == "teacher_forced":
            predicted = student(*args, **kwargs)
            if self.switch.recording:
                targets = unit.layer_outputs(self.slot, out)
                for suffix, value in unit.layer_outputs(self.slot, predicted, projection_weights(student)).items():
                    self.switch.pairs.append(LayerPair(f"blocks.{unit.block}.{self.slot}{suffix}", targets[suffix],
                                                       value))
        return out


# ---------------------------------------------------------------------------------------------- model sampling

def prediction_type(model_sampling) -> str:
    if isinstance(model_sampling, comfy.model_sampling.EPS) and not isinstance(
            model_sampling, (comfy.model_sampling.V_PREDICTION, comfy.model_sampling.EDM)):
        return "epsilon"
    if isinstance(model_sampling, comfy.model_sampling.CONST):
        return "flow"
    raise DistillError(f"EDiT distillation needs an epsilon (PixArt) or rectified-flow (SD3 / SD3.5) model; this "
                       f"MODEL's sampling is {type(model_sampling).__name__}")


def sigma_for_timestep(model_sampling, timestep: torch.Tensor) -> torch.Tensor:
    """σ whose model timestep is ``timestep`` (the inverse of ``model_sampling.timestep``)."""
    timestep = timestep.float()
    if isinstance(model_sampling, comfy.model_sampling.ModelSamplingDiscreteFlow):
        return timestep / float(model_sampling.multiplier)  # its sigma(t) would apply the shift again
    return model_sampling.sigma(timestep)


def training_schedule(model_sampling):
    """The trainer's noise schedule, from the model's own ``model_sampling``."""
    if prediction_type(model_sampling) == "epsilon":
        sigmas = model_sampling.sigmas.detach().to("cpu", torch.float64)
        schedule = DDPMSchedule(num_train_timesteps=int(sigmas.numel()), name="ddpm_epsilon (ComfyUI model_sampling)")
        schedule.alphas_cumprod = 1.0 / (1.0 + sigmas ** 2)
        return schedule
    return FlowSchedule(shift=sampling_shift(model_sampling), name="rectified_flow (ComfyUI model_sampling)")


def sampling_shift(model_sampling) -> float:
    """The flow shift of the model's sampling (SD3.5: 3.0, or what a ModelSamplingSD3 node set); 1 for EPS."""
    return float(getattr(model_sampling, "shift", 1.0))


# ---------------------------------------------------------------------------------------------- the host

class ComfyDistillHost(SwitchedHost):
    """Distillation host for a PixArt-Σ or SD3.5-M ComfyUI MODEL (the MODEL itself is never changed).

    ``adapter``: the starting adapter (default: ``init_adapter_from_teacher(reduction, seed)``); its fine-tuned
    projections, if any, are the student's starting ones. ``train_projections``: also train each converted
    slot's projections (see the module docstring). Use as a context manager (or call ``close``): closing unloads
    the training clone, which restores the shared model's modules, and gives back the parameters'
    ``requires_grad`` flags."""

    def __init__(self, model, adapter: Optional[Adapter] = None, *, train_projections: bool = False,
                 reduction: int = 4, backend: str = "auto", seed: int = 0, variant: Optional[str] = None):
        spec, comfy_host = describe_model(model)  # EDiTModelError for a MODEL of no supported family
        diffusion_model = model.get_model_object("diffusion_model")
        if adapter is None:
            if reduction < 1 or spec.hidden_size % reduction:
                raise DistillError(f"reduction {reduction} does not divide the model's width {spec.hidden_size}; "
                                   f"use a divisor such as 4")
            variant = variant or spec.record.default_variant
            usable = distillable_variants(spec.record)
            if variant not in usable:
                raise DistillError(f"variant {variant!r} cannot be distilled for {spec.title}; choose one of "
                                   f"{', '.join(usable)}")
            adapter = init_adapter_from_teacher(diffusion_model.state_dict(keep_vars=True), spec.family,
                                                num_heads=spec.num_heads, reduction=reduction, seed=seed,
                                                variant=variant)
        starting = adapter
        finetuned_keys = {layer_prefix(b, s) + name for b, s in adapter.config.layers()
                          for name in adapter.finetuned(b, s)}
        if finetuned_keys:  # the student's, not weight patches on the teacher: applied without them
            adapter = Adapter(adapter.config, {k: v for k, v in adapter.tensors.items() if k not in finetuned_keys},
                              source=adapter.source)
        self.train_projections = bool(train_projections)
        self.base = model
        self.spec = spec
        self.family = spec.family
        self.model_sampling = model.get_model_object("model_sampling")
        self.prediction = prediction_type(self.model_sampling)
        self.latent_channels = int(model.model.latent_format.latent_channels)
        self.patch_size = comfy_host.patch_size(diffusion_model)
        self.schedule = training_schedule(self.model_sampling)
        self.shift = sampling_shift(self.model_sampling)

        with torch.inference_mode(False):  # the adapter layers must be ordinary (trainable) tensors
            self.patcher = apply_edit(model, adapter, backend=backend, described=(spec, comfy_host))
        (self.adapter_patcher,) = self.patcher.get_additional_models_with_key(ADDITIONAL_MODELS_KEY)
        self.adapter = adapter
        applied = self.patcher.get_attachment(ATTACHMENT_KEY)
        self.adapter_config: AdapterConfig = applied.config
        self.switch = ModeSwitch()
        self._patched: dict[str, AttentionSlots] = {}
        converted = {id(module) for module in applied.converted.values()}
        for name, unit in self.patcher.object_patches.items():
            if isinstance(unit, AttentionSlots):
                for slot, module in list(unit.slots.items()):
                    if id(module) in converted:
                        unit.slots[slot] = TeacherForced(unit, slot, unit.softmax_slots[slot], module, self.switch)
                self._patched[name] = unit
        self._layers: dict[tuple[int, str], torch.nn.Module] = {}
        layers = self.adapter_patcher.model.layers
        with torch.inference_mode(False), torch.no_grad():
            for block, slot in self.adapter_config.layers():
                layer = layers[f"{block}_{slot}"].to(torch.float32)  # fp32 master weights, cast per call
                for key, value in layer.state_dict().items():  # the adapter's exact fp32 values
                    value.copy_(adapter.tensors[layer_prefix(block, slot) + key])
                self._layers[(block, slot)] = layer
        self._grad_flags = {name: p.requires_grad for name, p in self.patcher.model.named_parameters()}
        self._trainable = {layer_prefix(block, slot) + name: param.requires_grad_(True)
                           for (block, slot), layer in self._layers.items() for name, param in layer.named_parameters()}
        self._students = {layer: applied.converted[layer] for layer in self.adapter_config.layers()}
        self._projections: dict[str, torch.Tensor] = {}  # canonical key → the student's fp32 tensor
        with torch.inference_mode(False), torch.no_grad():
            for (block, slot), student in self._students.items():
                names = FINETUNE_NAMES if self.train_projections else sorted(
                    {name.split(".")[0] for name in starting.finetuned(block, slot)})
                weights = self._student_projections(diffusion_model, block, slot, names, starting)
                if len(weights):
                    student.projection_weights = weights
        if self.train_projections:
            self._trainable.update(self._projections)
        self._transformer_options: Optional[dict] = None
        self._closed = False

    # ------------------------------------------------------------------------------------------ loading

    def load(self) -> None:
        """Load the training clone (with the adapter) through ComfyUI's model management — unloading other models
        from the device first, as ComfyUI's own training node does — and make the weights autograd-safe. Called
        by the first forward (and again if something else was loaded in between)."""
        if self._closed:
            raise RuntimeError("this distillation host is closed")
        with torch.inference_mode(False):
            comfy.model_management.load_models_gpu([self.patcher, self.adapter_patcher], memory_required=1e20,
                                                   force_full_load=True)
            self.patcher.model.requires_grad_(False)
            _make_autograd_safe(self.patcher.model)
            _make_autograd_safe(self.adapter_patcher.model)
        current = {layer_prefix(block, slot) + name: param
                   for (block, slot), layer in self._layers.items() for name, param in layer.named_parameters()}
        if any(self._trainable.get(k) is not p or not p.requires_grad for k, p in current.items()):
            raise DistillError("ComfyUI replaced the adapter's parameters while loading the model; the optimizer "
                               "would train stale copies")

    def _student_projections(self, diffusion_model, block: int, slot: str, names, starting: Adapter
                             ) -> ProjectionWeights:
        """The student's copies of (block, slot)'s projection tensors ``names`` (canonical), as a table by module."""
        weights = ProjectionWeights()
        device = self.patcher.load_device
        for name in names:
            place = tensor_place(self.spec, block, slot, name, layout="comfyui")
            if place is None:
                continue
            try:
                module = diffusion_model.get_submodule(place.key)
            except AttributeError:  # (the last MMDiT block's text stream has no output projection)
                continue
            for part in ("weight", "bias"):
                if not isinstance(getattr(module, part, None), torch.Tensor):
                    continue
                key, model_key = f"{layer_prefix(block, slot)}{name}.{part}", f"{MODEL_PREFIX}{place.key}.{part}"
                base = _original_weight(self.base, model_key)
                offset = self._patch_offset(model_key, base)
                if place.chunk is not None:
                    rows = base.shape[0] // 3
                    base = base[place.chunk * rows:(place.chunk + 1) * rows]
                    offset = None if offset is None else offset[place.chunk * rows:(place.chunk + 1) * rows]
                value = starting.tensors.get(key, base)
                if tuple(value.shape) != tuple(base.shape):
                    raise DistillError(f"the starting adapter's {key} has shape {list(value.shape)}, the model's "
                                       f"{model_key} needs {list(base.shape)}")
                tensor = value.detach().to(device, torch.float32, copy=True)
                if self.train_projections:
                    tensor = torch.nn.Parameter(tensor, requires_grad=True)
                self._projections[key] = tensor
                offset = None if offset is None else offset.to(device)
                weights.add(module, part, (lambda t=tensor, o=offset: t if o is None else t + o), place.chunk)
        return weights

    def _patch_offset(self, model_key: str, base: torch.Tensor) -> Optional[torch.Tensor]:
        """What the MODEL's own weight patches (LoRAs) add to ``base`` at ``model_key`` (fp32), or None."""
        patches = self.patcher.patches.get(model_key)
        if not patches:
            return None
        return comfy.lora.calculate_weight(patches, base.clone(), model_key).to(torch.float32) - base

    def _loaded(self) -> bool:
        return all(comfy.utils.get_attr(self.patcher.model, name) is module for name, module in self._patched.items())

    def close(self) -> None:
        """Unload the training clone (restoring the shared model's original modules); idempotent."""
        if self._closed:
            return
        self._closed = True
        for unit in self._patched.values():
            for slot, module in list(unit.slots.items()):
                if isinstance(module, TeacherForced):
                    unit.slots[slot] = module.student
        for student in self._students.values():
            student.projection_weights = None
        for layer in self._layers.values():
            layer.requires_grad_(False)
        for tensor in self._projections.values():
            tensor.requires_grad_(False)
        mm = comfy.model_management
        for i in reversed(range(len(mm.current_loaded_models))):
            loaded = mm.current_loaded_models[i]
            if loaded.model is self.patcher or loaded.model is self.adapter_patcher:
                mm.current_loaded_models.pop(i).model_unload()
        for name, param in self.patcher.model.named_parameters():
            if name in self._grad_flags:
                param.requires_grad_(self._grad_flags[name])

    def __enter__(self) -> "ComfyDistillHost":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ interface

    @property
    def device(self) -> torch.device:
        return torch.device(self.patcher.load_device)

    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        return dict(self._trainable)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        if enabled:
            raise DistillError("gradient checkpointing is not available when distilling inside ComfyUI; use "
                               "'python -m edit_core distill' for large resolutions")


    def export_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {}
        for (block, slot), layer in self._layers.items():
            for key, value in layer.state_dict().items():
                tensors[layer_prefix(block, slot) + key] = value.detach().to("cpu", torch.float32).clone()
        for key, value in self._projections.items():  # the fine-tuned tensors themselves (not plus any LoRA)
            tensors[key] = value.detach().to("cpu", torch.float32).clone()
        return tensors

    # ------------------------------------------------------------------------------------------ conditioning

    def conditioning(self, positive, width: int, height: int, negative=None):
        """ComfyUI CONDITIONINGs (lists of [tensor [B, L, C], {...}] entries) → (one row per prompt — every
        entry's batch — and the negative's first row or None), as the model's call arguments on the CPU:
        ``c_crossattn`` plus what the model's own ``extra_conds`` derives (SD3.5: ``y`` from
        ``pooled_output``; PixArt: size conditioning). All rows get one token count."""
        if not positive:
            raise DistillError("the positive conditioning is empty: connect a CLIP Text Encode output")
        rows = [self._entry(entry, i, width, height) for i, entry in enumerate(positive)]
        if negative:
            rows.append({k: v[:1] for k, v in self._entry(negative[0], "negative", width, height).items()})
        merged = self._concat_rows(rows)
        if not negative:
            return merged, None
        return {k: v[:-1] for k, v in merged.items()}, {k: v[-1:] for k, v in merged.items()}

    def _entry(self, entry, index, width: int, height: int) -> dict[str, torch.Tensor]:
        tensor, extra = entry[0], dict(entry[1])
        ignored = sorted(k for k in extra if k in _IGNORED_CONDITIONING)
        if ignored:
            log.warning("ComfyUI-EDiT distill: conditioning entry %s: %s ignored (only the text conditioning is "
                        "used)", index, ", ".join(ignored))
        params = {k: v for k, v in extra.items() if k not in _IGNORED_CONDITIONING}
        params.update(cross_attn=tensor, device=torch.device("cpu"),
                      noise=torch.zeros(1, self.latent_channels, height // 8, width // 8),
                      width=params.get("width", width), height=params.get("height", height), prompt_type="positive")
        try:
            model_conds = self.base.model.extra_conds(**params)
        except KeyError as e:
            raise DistillError(f"conditioning entry {index} has no {e.args[0]!r}: SD3 / SD3.5 need the pooled CLIP output "
                               "(encode the prompt with the model's CLIP, e.g. TripleCLIPLoader → CLIP Text "
                               "Encode)") from None
        row = {}
        for key, value in model_conds.items():
            processed = value.process_cond(batch_size=int(tensor.shape[0]), area=None)
            if isinstance(processed.cond, torch.Tensor):
                row[key] = processed.cond.detach().to("cpu", copy=True)
        return row

    def _concat_rows(self, rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        keys = set(rows[0])
        if any(set(r) != keys for r in rows):
            raise DistillError("the conditioning entries differ in kind (some have pooled outputs or size "
                               "conditioning, some not); encode every prompt the same way")
        out = {}
        for key in sorted(keys):
            values = [r[key] for r in rows]
            lengths = sorted({v.shape[1] for v in values if v.dim() == 3})
            if len(lengths) > 1:
                if get_family(self.family).joint:
                    raise DistillError(f"the prompts encode to different token counts {lengths}; MMDiT's joint "
                                       "attention cannot batch them without changing them: shorten the long "
                                       "prompts (or distil with prompts of one length)")
                length = math.lcm(*lengths)  # cross-attention only: repeating every token is exact, as ComfyUI does
                values = [v.repeat(1, length // v.shape[1], 1) for v in values]
            out[key] = torch.cat(values)
        return out

    # ------------------------------------------------------------------------------------------ forward

    def transformer_options(self) -> dict:
        """The MODEL's transformer options with its wrappers, as a sampler hands them to ``apply_model``."""
        if self._transformer_options is None:
            options = comfy.patcher_extension.copy_nested_dicts(
                self.patcher.model_options.get("transformer_options", {}))
            comfy.patcher_extension.merge_nested_dicts(options.setdefault("wrappers", {}), self.patcher.wrappers,
                                                       copy_dict1=False)
            comfy.patcher_extension.merge_nested_dicts(options.setdefault("callbacks", {}), self.patcher.callbacks,
                                                       copy_dict1=False)
            self._transformer_options = options
        return self._transformer_options

    def _forward(self, x: torch.Tensor, timestep: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        if self._closed:
            raise RuntimeError("this distillation host is closed")
        if not self._loaded():
            self.load()
        device = self.device
        x = x.to(device, torch.float32)
        timestep = torch.as_tensor(timestep, device=device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        sigma = sigma_for_timestep(self.model_sampling, timestep)
        scale = self.model_sampling.calculate_input(sigma, torch.ones_like(x[:, :1, :1, :1]))
        xc = x / scale  # the sampler's x for this σ (EPS: x_t·√(σ²+1); flow: x_t)
        kwargs = {k: v.to(device) for k, v in cond.items()}
        denoised = self.patcher.model.apply_model(xc, sigma, transformer_options=self.transformer_options(), **kwargs)
        return (xc - denoised) / sigma.view(-1, 1, 1, 1)


def _make_autograd_safe(module: torch.nn.Module) -> int:
    """Replace every inference-mode parameter and buffer with an ordinary copy (same values, same names; tied
    parameters stay tied). Returns how many were replaced."""
    replaced: dict[int, torch.Tensor] = {}
    with torch.inference_mode(False), torch.no_grad():
        for sub in module.modules():
            for table, make in ((sub._parameters, _parameter_copy), (sub._buffers, torch.Tensor.clone)):
                for name, tensor in table.items():
                    if tensor is not None and tensor.is_inference():
                        if id(tensor) not in replaced:
                            replaced[id(tensor)] = make(tensor)
                        table[name] = replaced[id(tensor)]
    return len(replaced)


def _parameter_copy(param: torch.nn.Parameter) -> torch.nn.Parameter:
    return torch.nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad)


__all__ = ["ComfyDistillHost", "ModeSwitch", "TeacherForced", "MODES", "prediction_type", "sigma_for_timestep",
           "training_schedule", "sampling_shift"]
