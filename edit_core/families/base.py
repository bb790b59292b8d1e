"""What a model family is: a record of facts, and the architecture record it shares with its relatives.

An ``Architecture`` (PixArt, MMDiT) knows the weight layouts of its hosts as data — for each layout a
marker key and, per converted slot, where every canonical attention tensor lives — and how to read the
geometry (blocks, width, qk-norm, dual-attention layers, …) out of a state dict or a diffusers config.
A ``Family`` (PixArt-Σ, SD3.5-Medium, …) is an architecture plus the evidence that tells it apart from
its relatives (``match``, compared with the probed evidence like ComfyUI compares a ``unet_config``),
its training facts (prediction type, noise schedule, conditioning keys) and its released geometry.
Code that needs a family fact asks the record; nothing compares family names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import torch

PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.")


class FamilyError(ValueError):
    """The state dict is not a model family we can convert."""


@dataclass(frozen=True)
class TensorPlace:
    """Where one canonical attention tensor lives in a layout: ``key`` (without ``.weight``/``.bias``,
    with ``{block}``) and, for a fused ``qkv``, which third of its rows (``chunk``)."""
    key: str
    chunk: Optional[int] = None


@dataclass(frozen=True)
class KeyLayout:
    """One host's weight names for an architecture (``comfyui`` fused qkv, ``diffusers`` split q/k/v)."""
    name: str
    markers: tuple[str, ...]  # keys that, all present, identify this layout of this architecture
    block_pattern: str  # regex whose group 1 is a block number
    places: Mapping[str, Mapping[str, TensorPlace]]  # slot → canonical tensor name → place
    modules: Mapping[str, str] = field(default_factory=dict)  # slot → the attention module's path ({block})

    def place(self, slot: str, name: str, block: int) -> Optional[TensorPlace]:
        place = self.places.get(slot, {}).get(name)
        return None if place is None else TensorPlace(place.key.format(block=block), place.chunk)


@dataclass(frozen=True)
class Architecture:
    """A transformer structure several families share; hosts patch by architecture facts, not names."""
    name: str  # "pixart" | "mmdit"
    joint: bool  # the "attn" slot is MMDiT joint text–image attention (else plain self-attention)
    slots: tuple[str, ...]  # the slots a layer can be converted in ("attn", and MMDiT-X's "attn2")
    layouts: tuple[KeyLayout, ...]
    probe: Callable[[Mapping[str, torch.Tensor], KeyLayout], dict]  # state dict → evidence
    probe_config: Callable[[Mapping[str, Any]], dict]  # diffusers transformer config → evidence
    diffusers_class: str  # the diffusers transformer class
    heads_in_weights: bool  # False: the head count must come from elsewhere (PixArt)
    default_head_dim: int  # the head width when nothing says otherwise

    def layout(self, name: str) -> KeyLayout:
        for layout in self.layouts:
            if layout.name == name:
                return layout
        raise KeyError(f"{self.name} has no {name!r} key layout")


@dataclass(frozen=True)
class Geometry:
    """A released model's shape, for benchmarks and documentation (detection never requires it)."""
    num_blocks: int
    hidden_size: int
    num_heads: int
    patch_size: int
    text_tokens: int
    native_resolution: int
    attn2_blocks: tuple[int, ...] = ()


@dataclass(frozen=True)
class Family:
    name: str  # the one spelling: adapters, CLIs, nodes, docs
    title: str  # "PixArt-Sigma"
    short_title: str  # "PixArt-Σ", for tables
    architecture: Architecture
    match: Mapping[str, Any]  # evidence values that identify this family within its architecture
    default_variant: str
    prediction: str  # "epsilon" | "flow"
    schedule: Mapping[str, Any]  # {"kind": "ddpm", betas…} | {"kind": "flow", …}: the training noise schedule
    sampling_shift: float  # the flow shift the model samples with (1 for ε-prediction)
    conditioning: tuple[str, ...]  # diffusers call keys of the text conditioning
    text_width_key: str  # diffusers config key of the text embedding width
    pipelines: tuple[str, ...]  # diffusers pipeline class names
    reference: Geometry
    reference_config: Mapping[str, Any]  # diffusers config of the released transformer
    aliases: tuple[str, ...] = ()  # accepted on the command line, never written

    @property
    def joint(self) -> bool:
        return self.architecture.joint

    @property
    def needs_pooled(self) -> bool:
        return "pooled_projections" in self.conditioning

    def matches(self, evidence: Mapping[str, Any]) -> bool:
        return all(evidence.get(key) == value for key, value in self.match.items())

    def __str__(self) -> str:
        return self.title


@dataclass
class TeacherSpec:
    """A detected model: its family and attention geometry."""
    family: str
    layout: str  # "comfyui" | "diffusers"
    num_blocks: int
    hidden_size: int
    num_heads: int
    head_dim: int
    qk_norm: Optional[str] = None  # "rms" or None
    attn2_blocks: list[int] = field(default_factory=list)  # MMDiT-X dual-attention layers
    prefix: str = ""

    @property
    def record(self) -> Family:
        from . import get_family

        return get_family(self.family)

    @property
    def title(self) -> str:
        return self.record.title

    def describe(self) -> str:
        return f"{self.title} ({self.num_blocks} blocks, width {self.hidden_size})"


def strip_prefix(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict, str]:
    for prefix in PREFIXES:
        if any(k.startswith(prefix) for k in state_dict):
            return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}, prefix
    return dict(state_dict), ""


def block_indices(keys, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})
