"""What a ComfyUI host patcher is, and the per-slot container every patched unit is.

A ``ComfyHost`` knows one diffusion-model class of ComfyUI: whether a MODEL is one of its kind, what the
weights cannot say (PixArt's head count), the patch size, and how to object-patch a clone so that the
planned (block, slot) layers run the variant's attention. It returns ``{(block, slot): module}`` — the
attention module now running in each converted slot — and knows nothing of training.

Every patched unit is an ``AttentionSlots`` module: ``slots[slot]`` is what runs in a slot,
``softmax_slots[slot]`` is the model's own softmax attention for it (used for slots that are not
converted). Both are plain dicts, not registered children: the adapter layers live in their own
ModelPatcher, and the softmax modules' children are the unit's own. Distillation (``nodes/distill_host``)
wraps ``slots`` entries; ``layer_outputs`` says what a slot's output is after its output projection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch


class AttentionSlots(torch.nn.Module):
    block: int
    slots: dict
    softmax_slots: dict

    def layer_outputs(self, slot: str, output) -> dict[str, torch.Tensor]:
        """``{suffix: tensor}``: a slot's output after its output projection ("" the image stream, ".text")."""
        raise NotImplementedError


@dataclass(frozen=True)
class ComfyHost:
    name: str
    accepts: Callable[[torch.nn.Module], bool]  # diffusion_model → is it this host's class?
    num_heads: Callable[[torch.nn.Module], Optional[int]]  # what the weights cannot tell (None: they can)
    patch_size: Callable[[torch.nn.Module], int]
    patch: Callable[..., dict]  # (clone, plan, layers) → {(block, slot): module}
