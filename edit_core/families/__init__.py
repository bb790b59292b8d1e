"""Model families: one module each (a ``Family`` record, data first), and the registry below.

Detection reads a state dict's key names and shapes (ComfyUI/original or diffusers keys, with or without a
``model.diffusion_model.`` / ``diffusion_model.`` / ``transformer.`` prefix) or a diffusers config: the
architecture's probe gathers the evidence, and the family whose ``match`` it satisfies wins.
``teacher_attention_weights`` returns one converted layer's projection weights under the canonical
(diffusers-style) names used by ``modules.attention`` and by fine-tuned adapter tensors.

Adding a family: one module here with its ``FAMILY`` record, one ``register_family`` line below, and the
hosts' registration lines (``nodes/hosts``, ``integrations/diffusers``).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from . import pixart_alpha, pixart_sigma, sd3_medium, sd35_large, sd35_medium
from .architectures import ARCHITECTURES
from .base import (Architecture, Family, FamilyError, Geometry, KeyLayout, TeacherSpec, TensorPlace, block_indices,
                   strip_prefix)

_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    if family.name in _FAMILIES and _FAMILIES[family.name] is not family:
        raise ValueError(f"model family {family.name!r} is registered twice")
    _FAMILIES[family.name] = family
    return family


register_family(pixart_sigma.FAMILY)
register_family(pixart_alpha.FAMILY)
register_family(sd35_medium.FAMILY)
register_family(sd35_large.FAMILY)
register_family(sd3_medium.FAMILY)


def list_families() -> list[Family]:
    return list(_FAMILIES.values())


def family_names() -> list[str]:
    return list(_FAMILIES)


def get_family(name: str) -> Family:
    """The family called ``name`` (its one spelling, or an alias). KeyError with the known names otherwise."""
    if isinstance(name, Family):
        return name
    if name in _FAMILIES:
        return _FAMILIES[name]
    for family in _FAMILIES.values():
        if name in family.aliases:
            return family
    raise KeyError(f"unknown model family {name!r}; known: {', '.join(_FAMILIES)}")


def is_family(name: str) -> bool:
    return name in _FAMILIES


def family_title(name: str) -> str:
    """The family's title, or the name itself for a family this version does not know (error messages)."""
    return _FAMILIES[name].title if name in _FAMILIES else str(name)


def _supported_titles() -> str:
    return ", ".join(f.title for f in _FAMILIES.values())


def _architectures() -> list[Architecture]:
    seen = []
    for family in _FAMILIES.values():
        if family.architecture not in seen:
            seen.append(family.architecture)
    return seen


def _family_for(architecture: Architecture, evidence: Mapping[str, Any]) -> Family:
    candidates = [f for f in _FAMILIES.values() if f.architecture is architecture and f.matches(evidence)]
    if not candidates:
        shown = ", ".join(f"{k}={evidence.get(k)!r}" for k in ("num_blocks", "hidden_size", "qk_norm", "attn2_blocks",
                                                                 "micro_conditions") if k in evidence)
        raise FamilyError(f"a {architecture.name} model ({shown}) that matches no known family (known: "
                          f"{_supported_titles()})")
    return candidates[0]


def _spec(architecture: Architecture, layout: str, evidence: Mapping[str, Any], num_heads: Optional[int],
          prefix: str) -> TeacherSpec:
    family = _family_for(architecture, evidence)
    hidden = int(evidence["hidden_size"])
    head_dim = evidence.get("head_dim")
    if head_dim and architecture.heads_in_weights:  # the weights say it (qk-norm): a different count is an error
        heads = hidden // int(head_dim)
        if num_heads and int(num_heads) != heads:
            raise FamilyError(f"num_heads={num_heads} disagrees with the model's qk-norm head dim ({heads} heads of "
                              f"{head_dim})")
    elif num_heads:
        heads = int(num_heads)
    elif head_dim:
        heads = hidden // int(head_dim)
    elif hidden % architecture.default_head_dim == 0:
        heads = hidden // architecture.default_head_dim
    else:
        raise FamilyError(f"cannot tell the number of attention heads of a {family.title} model with hidden size "
                          f"{hidden} (not a multiple of {architecture.default_head_dim}): pass num_heads")
    if heads < 1 or hidden % heads:
        raise FamilyError(f"{heads} heads do not divide the width {hidden}")
    return TeacherSpec(family.name, layout, int(evidence["num_blocks"]), hidden, heads, hidden // heads,
                       evidence.get("qk_norm"), list(evidence.get("attn2_blocks", [])), prefix)


def _check_expected(spec: TeacherSpec, family: Optional[str]) -> TeacherSpec:
    if family is not None and get_family(family).name != spec.family:
        raise FamilyError(f"the teacher is {spec.describe()}, not {get_family(family).title}")
    return spec


def detect_teacher(state_dict: Mapping[str, torch.Tensor], family: Optional[str] = None,
                   num_heads: Optional[int] = None) -> TeacherSpec:
    """Detect the family and attention geometry of a state dict (ComfyUI or diffusers keys; tensors or
    shape-only stand-ins). ``num_heads`` is needed where the weights do not say it (PixArt off 72-wide heads)."""
    sd, prefix = strip_prefix(state_dict)
    for architecture in _architectures():
        for layout in architecture.layouts:
            if all(marker in sd for marker in layout.markers):
                evidence = architecture.probe(sd, layout)
                return _check_expected(_spec(architecture, layout.name, evidence, num_heads, prefix), family)
    raise FamilyError(f"not a model this pack converts ({_supported_titles()}): none of their attention key layouts "
                      "(PixArt 'blocks.N.attn.qkv' / 'transformer_blocks.N.attn1', MMDiT 'joint_blocks' / "
                      "'transformer_blocks.N.attn.add_q_proj') was found")


def detect_from_config(config: Mapping[str, Any], family: Optional[str] = None) -> TeacherSpec:
    """The family and geometry of a diffusers transformer from its ``config.json`` (``_class_name`` picks the
    architecture)."""
    name = config.get("_class_name")
    for architecture in _architectures():
        if architecture.diffusers_class == name:
            try:
                evidence = architecture.probe_config(config)
            except (KeyError, TypeError, ValueError) as e:
                raise FamilyError(f"the {name} config lacks or mangles {e}") from None
            return _check_expected(_spec(architecture, "diffusers", evidence, config.get("num_attention_heads"), ""),
                                   family)
    raise FamilyError(f"a {name} is not a model this pack converts (diffusers classes: "
                      f"{', '.join(sorted({a.diffusers_class for a in _architectures()}))})")


def family_for_pipeline(class_name: str) -> list[Family]:
    """The families a diffusers pipeline class can hold (SD3's one pipeline holds three)."""
    return [f for f in _FAMILIES.values() if class_name in f.pipelines]


def family_for_diffusers_class(class_name: str) -> list[Family]:
    return [f for f in _FAMILIES.values() if f.architecture.diffusers_class == class_name]


def tensor_place(spec: TeacherSpec, block: int, slot: str, name: str, layout: Optional[str] = None
                 ) -> Optional[TensorPlace]:
    """Where canonical tensor ``name`` ("to_q", "to_out", …) of (block, slot) lives in ``layout`` (default: the
    spec's own) — a key without ``.weight``/``.bias``, and a fused-qkv chunk or None. None: nowhere."""
    key_layout = spec.record.architecture.layout(layout or spec.layout)
    return key_layout.place(slot, name, block)


def attention_module_path(spec: TeacherSpec, block: int, slot: str, layout: Optional[str] = None) -> str:
    key_layout = spec.record.architecture.layout(layout or spec.layout)
    if slot not in key_layout.modules:
        raise KeyError(f"{spec.title} has no {slot!r} attention")
    return key_layout.modules[slot].format(block=block)


def teacher_attention_weights(state_dict: Mapping[str, torch.Tensor], spec: TeacherSpec, block: int,
                              slot: str = "attn") -> dict[str, torch.Tensor]:
    """Canonical projection weights of one attention layer (``slot`` "attn" or MMDiT-X's "attn2")."""
    sd, _ = strip_prefix(state_dict)
    places = spec.record.architecture.layout(spec.layout).places.get(slot, {})
    out: dict[str, torch.Tensor] = {}
    for name, place in places.items():
        for part in ("weight", "bias"):
            value = sd.get(f"{place.key.format(block=block)}.{part}")
            if value is None:
                continue
            if place.chunk is not None:
                value = value.chunk(3, dim=0)[place.chunk]
            out[f"{name}.{part}"] = value
    return out


__all__ = ["Family", "Architecture", "Geometry", "KeyLayout", "TensorPlace", "TeacherSpec", "FamilyError",
           "register_family", "get_family", "list_families", "family_names", "is_family", "family_title",
           "detect_teacher", "detect_from_config", "family_for_pipeline", "family_for_diffusers_class",
           "tensor_place", "attention_module_path", "teacher_attention_weights", "strip_prefix", "block_indices",
           "ARCHITECTURES"]
