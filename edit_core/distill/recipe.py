"""The default distillation recipe: one place that the CLI (``python -m edit_core distill``), the ComfyUI
Distill node and ``python -m edit_core quality`` all read, so "the default" means the same everywhere.

How these values were chosen is measured in ``bench/QUALITY.md`` (tiny trained teachers, every variant at
one budget); the README's "Make your own adapter" section gives the reasoning.
"""

from __future__ import annotations

TRAIN_PROJECTIONS = True
"""Fine-tune the converted attentions' own q/k/v/out projections (and qk-norms) with the new modules. A
linear attention cannot reuse softmax-trained q/k as they are; frozen projections leave most of the gap."""

LR = 1e-4
"""AdamW learning rate (constant after ``WARMUP_STEPS``)."""

WARMUP_STEPS = 0

KD_WEIGHT = 0.5
"""Weight of the output-distillation loss (student vs teacher prediction)."""

FEATURE_WEIGHT = 0.5
"""Weight of the per-layer attention-output loss (teacher-forced pairs that a trainable tensor can move)."""

FLOW_SHIFT = None
"""Rectified-flow timestep shift for the training noise: None = the teacher's own sampling shift (its
scheduler config in diffusers, its ``model_sampling`` in ComfyUI), so the student trains on the noise
levels it will be sampled at."""

__all__ = ["TRAIN_PROJECTIONS", "LR", "WARMUP_STEPS", "KD_WEIGHT", "FEATURE_WEIGHT", "FLOW_SHIFT"]
