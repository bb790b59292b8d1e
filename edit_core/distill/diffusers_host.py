"""``DistillHost`` for the diffusers transformers of every family with EDiT processors (PixArt, MMDiT).

One transformer is both teacher and student. ``apply_edit`` converts its attention; then every converted
Attention's EDiT processor is wrapped in a ``DistillProcessor`` that reads a shared ``ModeSwitch``:
"teacher" calls the processor ``apply_edit`` replaced (``AttnProcessor2_0`` / ``JointAttnProcessor2_0``),
"student" calls the EDiT one, "teacher_forced" calls both on the same input, records the pair and
returns the teacher's output. When the teacher's projections are fine-tuned (``train_projections``) or
the starting adapter carries fine-tuned ones, the teacher branch runs on a frozen copy of each converted
Attention taken before conversion, so the teacher stays the teacher. ``restore()`` gives the model back
exactly as it came (processors, weights, dtypes).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Optional

import torch
from torch import nn

from ..adapter import FINETUNE_NAMES, Adapter, AdapterConfig, init_adapter_from_teacher, layer_prefix
from ..conversion import plan_conversion
from ..families import attention_module_path, detect_teacher, get_family
from ..integrations.diffusers import (ADAPTER_MODULE, apply_edit, forward_kwargs, is_edit_applied, projection_module_path,
                                      remove_edit, transformer_classes)
from .host import MODES, Conditioning, LayerPair, ModeSwitch, SwitchedHost

class DistillProcessor:
    """Wraps one converted Attention's EDiT processor; see the module docstring for the modes."""

    def __init__(self, edit_processor, teacher_processor, teacher_attention: Optional[nn.Module],
                 switch: ModeSwitch, name: str):
        self.edit_processor, self.teacher_processor = edit_processor, teacher_processor
        self.teacher_attention, self.switch, self.name = teacher_attention, switch, name

    def __call__(self, attn, hidden_states, *args, **kwargs):
        mode = self.switch.mode
        if mode == "student":
            return self.edit_processor(attn, hidden_states, *args, **kwargs)
        with torch.no_grad():
            teacher = self.teacher_processor(self.teacher_attention or attn, hidden_states, *args, **kwargs)
        if mode == "teacher":
            return teacher
        student = self.edit_processor(attn, hidden_states, *args, **kwargs)
        if self.switch.recording:
            if isinstance(teacher, tuple):  # joint attention: (image, text); text is None / unused in the last block
                self.switch.pairs.append(LayerPair(self.name, teacher[0], student[0]))
                if student[1] is not None:
                    self.switch.pairs.append(LayerPair(self.name + ".text", teacher[1], student[1]))
            else:
                self.switch.pairs.append(LayerPair(self.name, teacher, student))
        return teacher


def _projection(attention: nn.Module, path: Optional[str]) -> Optional[nn.Module]:
    """The Attention's module at ``path`` (a canonical fine-tune name's place), or None where it has none."""
    if path is None:
        return None
    try:
        return attention.get_submodule(path)
    except AttributeError:
        return None


class DiffusersDistillHost(SwitchedHost):
    """Distillation host for a diffusers transformer of a supported family (converted in place).

    ``adapter``: the starting adapter (default: ``init_adapter_from_teacher``). ``train_projections``:
    also train the converted attentions' own q/k/v/out (and SD3.5 text-stream and qk-norm) tensors,
    exported under canonical fine-tune names. ``variant``: the new adapter's attention variant (default: the
    family's). ``dtype``: the frozen teacher's storage and autocast
    dtype (trainable tensors stay fp32)."""

    def __init__(self, transformer: nn.Module, adapter: Optional[Adapter] = None, *, train_projections: bool = False,
                 dtype: Optional[torch.dtype] = None, backend: str = "auto", attn2: str = "adapter",
                 reduction: int = 4, seed: int = 0, variant: Optional[str] = None):
        if not isinstance(transformer, transformer_classes()):
            raise TypeError(f"distillation supports diffusers "
                            f"{' and '.join(c.__name__ for c in transformer_classes())}, not "
                            f"{type(transformer).__name__}")
        if is_edit_applied(transformer):
            remove_edit(transformer)
        self.transformer = transformer
        if dtype is not None and any(p.dtype != dtype for p in transformer.parameters()):
            nn.Module.to(transformer, dtype)  # (ModelMixin.to warns about fp32 modules PixArt/SD3 lack)
        self.dtype = next(transformer.parameters()).dtype
        transformer.requires_grad_(False).eval()
        heads = transformer.config.num_attention_heads
        spec = detect_teacher(transformer.state_dict(), num_heads=heads)
        if adapter is None:
            adapter = init_adapter_from_teacher(transformer.state_dict(), num_heads=heads, reduction=reduction,
                                                convert_attn2=attn2 != "off", seed=seed, variant=variant)
        self.family = spec.family
        self.prediction = spec.record.prediction
        self.latent_channels = int(transformer.config.in_channels)
        self.patch_size = int(transformer.config.patch_size)
        self.train_projections = bool(train_projections)

        layers = plan_conversion(adapter, spec, attn2=attn2, backend=backend).layers
        names = {(b, s): attention_module_path(spec, b, s, layout="diffusers") for b, s in layers}
        originals = {key: transformer.get_submodule(name).processor for key, name in names.items()}
        copy_teacher = self.train_projections or any(adapter.finetuned(b, s) for b, s in layers)
        self._teacher_copies: dict[tuple[int, str], nn.Module] = {}
        if copy_teacher:
            for key, name in names.items():
                self._teacher_copies[key] = copy.deepcopy(transformer.get_submodule(name)).requires_grad_(False)

        apply_edit(transformer, adapter, backend=backend, attn2=attn2)
        self.switch = ModeSwitch()
        self._trainable: dict[str, nn.Parameter] = {}
        self._dtypes: dict[str, torch.dtype] = {}  # module path → dtype before it was made fp32
        for (block, slot), name in names.items():
            attention = transformer.get_submodule(name)
            prefix = layer_prefix(block, slot)
            attention.set_processor(DistillProcessor(attention.processor, originals[(block, slot)],
                                                     self._teacher_copies.get((block, slot)), self.switch,
                                                     prefix[:-1]))
            modules = [("", getattr(attention, ADAPTER_MODULE))]
            paths = {"": ADAPTER_MODULE}
            if self.train_projections:
                for canonical in FINETUNE_NAMES:
                    paths[canonical + "."] = projection_module_path(spec, block, slot, canonical)
                    modules.append((canonical + ".", _projection(attention, paths[canonical + "."])))
            for key_prefix, module in modules:
                if module is None or next(module.parameters(), None) is None:  # (sana / mm_linear add no tensors)
                    continue
                path = f"{name}.{paths[key_prefix]}"
                self._dtypes[path] = next(module.parameters()).dtype
                module.float()
                for pname, param in module.named_parameters():
                    param.requires_grad_(True)
                    self._trainable[prefix + key_prefix + pname] = param
        self._names = names
        self.adapter = adapter
        self.adapter_config: AdapterConfig = adapter.config

    # ------------------------------------------------------------------------------------------ interface

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return dict(self._trainable)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        if enabled:
            self.transformer.enable_gradient_checkpointing()
        else:
            self.transformer.disable_gradient_checkpointing()


    def export_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {k: v.detach().to("cpu", torch.float32).clone() for k, v in self.adapter.tensors.items()}
        for key, param in self._trainable.items():
            tensors[key] = param.detach().to("cpu", torch.float32).clone()
        return tensors

    # ------------------------------------------------------------------------------------------ helpers

    def _autocast(self):
        device_type = self.device.type
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device_type, dtype=self.dtype)

    def _forward(self, x: torch.Tensor, timestep: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        batch = x.shape[0]
        timestep = torch.as_tensor(timestep, device=self.device).reshape(-1).expand(batch)
        kwargs = forward_kwargs(self.transformer, x.to(self.device), timestep,
                                {k: v for k, v in cond.items() if k in get_family(self.family).conditioning})
        with self._autocast():
            return self.transformer(**kwargs)[0]

    def restore(self) -> nn.Module:
        """Undo everything: EDiT removed, teacher projections and dtypes back, nothing trainable."""
        remove_edit(self.transformer)
        with torch.no_grad():
            for key, teacher in self._teacher_copies.items():
                attention = self.transformer.get_submodule(self._names[key])
                for canonical in FINETUNE_NAMES:
                    source, target = _projection(teacher, canonical), _projection(attention, canonical)
                    if source is not None and target is not None:
                        target.load_state_dict(source.state_dict())
        for path, dtype in self._dtypes.items():
            try:
                self.transformer.get_submodule(path).to(dtype)
            except AttributeError:  # the edit_adapter child is gone
                pass
        self.transformer.requires_grad_(False)
        self._trainable.clear()
        return self.transformer


__all__ = ["DiffusersDistillHost", "DistillProcessor", "ModeSwitch", "MODES"]
