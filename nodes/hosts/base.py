"""What a ComfyUI host patcher is, and the per-slot container every patched unit is.

A ``ComfyHost`` knows one diffusion-model class of ComfyUI: whether a MODEL is one of its kind, what the
weights cannot say (PixArt's head count), the patch size, and how to object-patch a clone so that the
planned (block, slot) layers run the variant's attention. It returns ``{(block, slot): module}`` — the
attention module now running in each converted slot — and knows nothing of training. A ``gate``
(``gate(num_image_tokens) -> bool``) lets a converted slot fall back to the model's own softmax for a call
(the training-free mode's ``min_tokens`` and sampling range). Patches stack: a unit that is already patched
keeps the converted slots a new patch does not convert, and with ``fill_only`` a patch converts only slots
that still run softmax (the training-free mode never replaces an adapter's layers).

Every patched unit is an ``AttentionSlots`` module: ``slots[slot]`` is what runs in a slot,
``softmax_slots[slot]`` is the model's own softmax attention for it (used for slots that are not
converted). Both are plain dicts, not registered children: the adapter layers live in their own
ModelPatcher, and the softmax modules' children are the unit's own. Distillation (``nodes/distill_host``)
wraps ``slots`` entries; ``layer_outputs`` says what a slot's output is after its output projection. A slot
module may carry ``projection_weights`` (``nodes.projections.ProjectionWeights``, set only by distillation):
the tensors it, and the unit's output projection after it, use instead of the model's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch


class AttentionSlots(torch.nn.Module):
    block: int
    slots: dict
    softmax_slots: dict

    def layer_outputs(self, slot: str, output, weights=None) -> dict[str, torch.Tensor]:
        """``{suffix: tensor}``: a slot's output after its output projection ("" the image stream, ".text");
        ``weights``: the ``ProjectionWeights`` the output projection uses (None: the model's own)."""
        raise NotImplementedError


def projection_weights(module):
    """The ``ProjectionWeights`` a slot module runs with (None: the model's own weights)."""
    return getattr(module, "projection_weights", None)


@dataclass(frozen=True)
class ComfyHost:
    name: str
    accepts: Callable[[torch.nn.Module], bool]  # diffusion_model → is it this host's class?
    num_heads: Callable[[torch.nn.Module], Optional[int]]  # what the weights cannot tell (None: they can)
    patch_size: Callable[[torch.nn.Module], int]
    patch: Callable[..., dict]  # (clone, plan, layers, *, gate, fill_only) → {(block, slot): module}


def slot_is_free(unit, slot: str) -> bool:
    """Whether ``unit`` (whatever is at a patch point now) runs the model's own softmax in ``slot``."""
    if not isinstance(unit, AttentionSlots):
        return True
    return slot in unit.slots and is_softmax(unit.slots[slot], unit.softmax_slots.get(slot))


def is_softmax(module, softmax) -> bool:
    return module is softmax or isinstance(module, SoftmaxAttention)


class SoftmaxAttention(torch.nn.Module):
    """Marks a host's own softmax slot attention (what a slot runs when nothing converts it)."""
