"""The three distillation losses (paper-spec §3), all MSE in fp32.

    L = w_task · L_task + w_kd · L_KD + w_feat · L_feat        (defaults 1 / 0.5 / 0.5; data-free: w_task = 0)

- ``layer_loss``: per converted layer, MSE between the student's and the teacher's attention output
  (after the output projection) on the same layer input; averaged over the pairs that depend on a
  trainable tensor. An SD3.5 joint layer gives an image and a text pair (the last block no text pair); with
  frozen projections MM-EDiT's text rows are the teacher's exact softmax, so their pairs carry no gradient
  and would only dilute the mean (23 of 60 pairs on SD3.5-M), and they are left out.
- ``output_kd_loss``: student vs teacher prediction over every output channel (PixArt-Σ: ε and the
  learned variance, as LiT recommends).
- ``task_loss``: the student's prediction vs the true target (ε, or the flow velocity), on the first
  ``channels`` output channels. Needs real data: on teacher samples it would only re-teach the teacher.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .host import LayerPair


@dataclass
class LossWeights:
    task: Optional[float] = None  # None: 1.0 with real images, 0.0 on teacher samples
    kd: float = 0.5
    feature: float = 0.5

    def resolved(self, has_images: bool) -> "LossWeights":
        task = (1.0 if has_images else 0.0) if self.task is None else float(self.task)
        weights = LossWeights(task, float(self.kd), float(self.feature))
        if min(weights.task, weights.kd, weights.feature) < 0:
            raise ValueError(f"loss weights must be ≥ 0, got {asdict(weights)}")
        if weights.task + weights.kd + weights.feature <= 0:
            raise ValueError("every loss weight is 0: nothing would be trained")
        return weights

    def as_dict(self) -> dict:
        return asdict(self)


def layer_loss(pairs: Sequence[LayerPair]) -> torch.Tensor:
    if not pairs:
        raise ValueError("no converted layer recorded an output pair (is EDiT applied to this model?)")
    trainable = [p for p in pairs if p.student.requires_grad]
    losses = [F.mse_loss(p.student.float(), p.teacher.float()) for p in (trainable or pairs)]
    return torch.stack(losses).mean()


def output_kd_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(student.float(), teacher.float())


def task_loss(student: torch.Tensor, target: torch.Tensor, channels: int) -> torch.Tensor:
    return F.mse_loss(student[:, :channels].float(), target.float())


__all__ = ["LossWeights", "layer_loss", "output_kd_loss", "task_loss"]
