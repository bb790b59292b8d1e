"""Make EDiT / MM-EDiT adapters by distillation from the user's own teacher (pure torch; no host imports here).

- ``host``: the ``DistillHost`` interface (teacher / student / teacher-forced passes) the trainer talks to;
  ``diffusers_host`` implements it for diffusers PixArt-Σ and SD3.5-M transformers.
- ``trainer``: the loop (layer + output-KD + task losses, AdamW with fp32 master weights, EMA,
  gradient checkpointing, exact resume, torch.distributed data parallelism, progress / stop hooks).
- ``data`` / ``cache`` / ``sampling`` / ``schedules``: stages, buckets, teacher-sample caches, noise.
- ``quick``: ``quick_distill``, a seconds-long run on an embedded tiny model (the demo).
- ``cli``: ``python -m edit_core distill`` (also ``python -m edit_core.distill``).
"""

from .data import Stage, TensorDataset, stage_plan
from .host import DistillHost, LayerPair
from .losses import LossWeights, layer_loss, output_kd_loss, task_loss
from .schedules import DDPMSchedule, FlowSchedule, schedule_for
from .trainer import DistillConfig, DistillError, DistillResult, Trainer

__all__ = ["DistillHost", "LayerPair", "Trainer", "DistillConfig", "DistillResult", "DistillError", "LossWeights",
           "layer_loss", "output_kd_loss", "task_loss", "DDPMSchedule", "FlowSchedule", "schedule_for", "Stage",
           "TensorDataset", "stage_plan", "quick_distill"]


def __getattr__(name):  # quick_distill pulls in diffusers: import it on first use only
    if name == "quick_distill":
        from .quick import quick_distill
        return quick_distill
    raise AttributeError(name)
