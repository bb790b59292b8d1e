"""The host interface of the distillation trainer.

The trainer (``trainer.py``) never touches a model directly: it talks to a ``DistillHost``, which owns
one teacher whose converted attention layers can run in three modes:

    teacher          every converted layer runs the teacher's original attention (the frozen teacher)
    student          every converted layer runs EDiT / MM-EDiT (the student being trained)
    teacher-forced   every converted layer runs both on the SAME layer input, records the pair
                     (teacher output, student output) and passes the teacher's output on, so the
                     network as a whole computes the teacher and each student layer sees exactly the
                     teacher's input (layers are trained in isolation; one pass gives the teacher's
                     prediction and every layer pair)

Everything else in the network is the teacher's and stays frozen. Hosts: ``diffusers_host``
(diffusers ``PixArtTransformer2DModel`` / ``SD3Transformer2DModel``); a ComfyUI host implements the
same few members for its patched models.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Mapping, Protocol, runtime_checkable

import torch
from torch import nn

from ..adapter import AdapterConfig

Conditioning = Mapping[str, torch.Tensor]
"""The host's conditioning tensors, batch first (diffusers: ``encoder_hidden_states``,
``encoder_attention_mask`` for PixArt-Σ, ``pooled_projections`` for SD3.5). The trainer only slices,
concatenates and moves them; their meaning belongs to the host."""

PREDICTIONS = ("epsilon", "flow")


@dataclass
class LayerPair:
    """One converted layer's output in a teacher-forced pass, both [B, N, C] after the output projection.

    ``name`` is the adapter layer (``blocks.3.attn``, ``blocks.0.attn2``) plus ``.text`` for the text
    stream of an MM-EDiT joint attention."""
    name: str
    teacher: torch.Tensor
    student: torch.Tensor


@runtime_checkable
class DistillHost(Protocol):
    """What the trainer needs from a model host.

    Attributes: ``family`` ("pixart_sigma" | "sd35_medium"), ``prediction`` ("epsilon": the output's
    first ``latent_channels`` channels predict the noise, any further ones are PixArt-Σ's learned
    variance; "flow": the output is the rectified-flow velocity noise − x0), ``latent_channels``,
    ``patch_size`` (latent pixels per token side), ``adapter_config`` (geometry of the adapter being
    trained), ``device``.

    Timesteps are in the model's own units (0..1000). With gradient checkpointing a host may re-run a
    forward during ``backward``: call ``backward`` on one pass's loss before the next host call."""

    family: str
    prediction: str
    latent_channels: int
    patch_size: int
    adapter_config: AdapterConfig
    device: torch.device

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Every trainable tensor under its canonical adapter key (``blocks.{i}.{slot}.conv_fusion...``,
        and ``blocks.{i}.{slot}.to_q.weight`` etc. when teacher projections are fine-tuned), in a fixed
        order. Kept in fp32 (master weights) whatever the teacher's dtype."""
        ...

    def predict(self, x: torch.Tensor, timestep: torch.Tensor, cond: Conditioning, *,
                mode: str = "student") -> torch.Tensor:
        """The model output [B, C_out, H, W] for latents ``x`` [B, C, H, W]; ``mode`` "teacher" | "student"."""
        ...

    def teacher_forced(self, x: torch.Tensor, timestep: torch.Tensor,
                       cond: Conditioning) -> tuple[torch.Tensor, list[LayerPair]]:
        """The teacher's output (no graph) and every converted layer's (teacher, student) pair; the
        student halves carry the graph to the trainable parameters."""
        ...

    def export_tensors(self) -> dict[str, torch.Tensor]:
        """The adapter file's tensors (CPU, fp32, canonical keys): every converted layer's new modules,
        plus the fine-tuned projections when those are trained."""
        ...

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        ...


MODES = ("teacher", "student", "teacher_forced")


@dataclass
class ModeSwitch:
    """Shared by one host's converted layers: the current mode ("teacher": run the original attention;
    "student": run EDiT; "teacher_forced": run both on the same input, record the pair, pass the
    teacher's output on) and the pairs recorded in a teacher-forced pass."""
    mode: str = "student"
    recording: bool = False
    pairs: list[LayerPair] = field(default_factory=list)


class SwitchedHost:
    """``predict`` / ``teacher_forced`` for a host whose converted layers read a ``ModeSwitch``.
    Subclasses set ``self.switch`` and implement ``_forward(x, timestep, cond)`` (one model call)."""

    switch: ModeSwitch

    def _forward(self, x: torch.Tensor, timestep: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, x: torch.Tensor, timestep: torch.Tensor, cond: Conditioning, *,
                mode: str = "student") -> torch.Tensor:
        if mode not in ("teacher", "student"):
            raise ValueError(f"predict mode must be 'teacher' or 'student', got {mode!r}")
        self.switch.mode, self.switch.recording = mode, False
        with torch.no_grad() if mode == "teacher" else contextlib.nullcontext():
            return self._forward(x, timestep, cond)

    def teacher_forced(self, x: torch.Tensor, timestep: torch.Tensor,
                       cond: Conditioning) -> tuple[torch.Tensor, list[LayerPair]]:
        self.switch.mode, self.switch.recording, self.switch.pairs = "teacher_forced", True, []
        try:
            out = self._forward(x, timestep, cond)
        finally:
            self.switch.recording = False  # a checkpointed block re-run during backward records nothing
        pairs, self.switch.pairs = self.switch.pairs, []
        return out.detach(), pairs


__all__ = ["DistillHost", "LayerPair", "Conditioning", "PREDICTIONS", "MODES", "ModeSwitch", "SwitchedHost"]
