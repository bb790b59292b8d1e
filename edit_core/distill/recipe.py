"""The default distillation recipe: one place that the CLI (``python -m edit_core distill``), the ComfyUI
Distill node and ``python -m edit_core quality`` all read, so "the default" means the same everywhere.

The values were chosen on the tiny trained PixArt-Σ-layout teacher, one setting at a time
(``tools/recipe_ablation.py``, 200 steps × 16); the README's "Make your own adapter" and "Quality" sections
give the numbers, and ``bench/QUALITY.md`` what the recipe reaches for every variant.
"""

from __future__ import annotations

TRAIN_PROJECTIONS = True
"""Fine-tune the converted attentions' own q/k/v/out projections (and qk-norms) with the new modules. A
linear attention cannot reuse softmax-trained q/k as they are (tiny teacher, 200 steps: output error 0.089
trained, 0.139 frozen)."""

LR = None
"""AdamW learning rate (constant after ``WARMUP_STEPS``); None = ``learning_rate(width)``."""

LR_ANCHOR = (1e-3, 96)
"""(learning rate, model width) measured on the tiny PixArt-Σ-layout teacher: 1e-3 beat 3e-4 (0.089 vs 0.102)."""


def learning_rate(width: int) -> float:
    """The default learning rate for a model of hidden width ``width``: Adam's step on a C×C matrix changes its
    outputs by about lr·C, so the rate scales as 1/width (as μP prescribes for hidden weights), anchored at
    ``LR_ANCHOR``: 1e-3 at width 96 gives 8.3e-5 for PixArt-Σ (1152) and 6.3e-5 for SD3.5-Medium (1536), the
    usual fine-tuning rates of those models."""
    rate, at = LR_ANCHOR
    return rate * at / max(1, int(width))


WARMUP_STEPS = 0

TASK_WEIGHT = 0.0
"""Weight of the task loss (the student's prediction vs the true noise / velocity) on real data. Off: the
goal is the teacher's output, and the task loss pulls towards the data instead (tiny PixArt-Σ teacher,
200 steps on real crops: output error 0.089 without it, 0.119 with weight 1)."""

KD_WEIGHT = 0.5
"""Weight of the output-distillation loss (student vs teacher prediction)."""

FEATURE_WEIGHT = 0.5
"""Weight of the per-layer attention-output loss (teacher-forced pairs that a trainable tensor can move)."""

FLOW_SHIFT = None
"""Rectified-flow timestep shift for the training noise: None = the teacher's own sampling shift (its
scheduler config in diffusers, its ``model_sampling`` in ComfyUI), so the student trains on the noise
levels it will be sampled at."""

__all__ = ["TRAIN_PROJECTIONS", "LR", "LR_ANCHOR", "learning_rate", "WARMUP_STEPS", "TASK_WEIGHT", "KD_WEIGHT", "FEATURE_WEIGHT", "FLOW_SHIFT"]
