"""``quick_distill``: a short, complete distillation on an embedded tiny model (the demo; CPU, seconds).

The tiny teachers come from ``edit_core.tiny`` (random weights in the real layouts) with one change that
gives their attention structure the untrained student cannot read: a constant offset on every key
(``key_offset``, subtracted from the key biases). Softmax ignores a constant key offset (for PixArt-Σ
exactly; with SD3.5's qk-norm it also flattens the logits), but ReLU linear attention sees mostly
negative keys, so the init adapter is far off, and a working distillation has to learn to undo it (the
compressor biases can) — a clear, fast signal that the losses, gradients and optimizer are wired
right. ``qk_scale`` scales the query/key weights (>1 sharpens the attention). Training data are smooth
random latents with random captions standing in for teacher samples.
"""

from __future__ import annotations


import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .. import tiny
from ..adapter import Adapter
from ..families import get_family
from .data import Stage, TensorDataset
from .diffusers_host import DiffusersDistillHost
from .evaluation import prediction_error
from .losses import LossWeights
from .schedules import schedule_for
from .trainer import DistillConfig, DistillResult, Trainer

# Found by sweeps on 2 CPU cores (see tests/distill/test_distill_learns.py): ≥ 5× lower error in 60–80 steps.
TEACHER_SETTINGS = {"pixart_sigma": {"qk_scale": 0.5, "key_offset": 1.0},
                    "sd35_medium": {"qk_scale": 1.0, "key_offset": 2.0}}
QUICK_LR = 3e-2


def structured_tiny_teacher(family: str = "pixart_sigma", *, seed: int = 0, qk_scale: Optional[float] = None,
                            key_offset: Optional[float] = None, config: Optional[dict] = None):
    """A tiny diffusers teacher (``tiny.PIXART_QUICK`` / ``tiny.SD35_TINY``) with its converted attentions'
    query/key weights scaled by ``qk_scale`` and ``key_offset`` subtracted from the key biases."""
    record = get_family(family)
    settings = TEACHER_SETTINGS.get(record.name, {"qk_scale": 1.0, "key_offset": 2.0})
    qk_scale = settings["qk_scale"] if qk_scale is None else qk_scale
    key_offset = settings["key_offset"] if key_offset is None else key_offset
    model = tiny.build_tiny(record.name, config, seed=seed)
    names = tuple(path.rsplit(".", 1)[1] for path in record.architecture.layout("diffusers").modules.values())
    with torch.no_grad():
        for block in model.transformer_blocks:
            for name in names:
                attention = getattr(block, name, None)
                if attention is None:
                    continue
                for proj in ("to_q", "to_k", "add_q_proj", "add_k_proj"):
                    linear = getattr(attention, proj, None)
                    if linear is not None:
                        linear.weight.mul_(qk_scale)
                for proj in ("to_k", "add_k_proj"):
                    linear = getattr(attention, proj, None)
                    if linear is not None and linear.bias is not None:
                        linear.bias.sub_(key_offset)
    return model


def tiny_dataset(model, *, items: int = 8, latent_size: int = 16, caption_tokens: int = 8, smooth: int = 4,
                 seed: int = 0) -> TensorDataset:
    """Smooth random latents (standing in for teacher samples) and random captions for a tiny model."""
    g = torch.Generator().manual_seed(seed)
    channels = int(model.config.in_channels)
    x0 = torch.randn(items, channels, latent_size, latent_size, generator=g)
    if smooth > 1:
        x0 = F.interpolate(F.avg_pool2d(x0, smooth), size=(latent_size, latent_size), mode="bilinear")
        x0 = x0 / x0.std()
    if hasattr(model.config, "caption_channels") and model.config.caption_channels:
        cond = {"encoder_hidden_states": torch.randn(items, caption_tokens, model.config.caption_channels, generator=g)}
        null = {"encoder_hidden_states": torch.zeros(1, caption_tokens, model.config.caption_channels)}
    else:
        cond = {"encoder_hidden_states": torch.randn(items, caption_tokens, model.config.joint_attention_dim,
                                                     generator=g),
                "pooled_projections": torch.randn(items, model.config.pooled_projection_dim, generator=g)}
        null = {k: torch.zeros(1, *v.shape[1:]) for k, v in cond.items()}
    return TensorDataset((x0, cond), null_cond=null)


@dataclass
class QuickDistillResult:
    adapter: Adapter
    error_before: float  # relative RMS error of the init adapter's prediction vs the teacher (held-out noise)
    error_after: float
    steps: int
    seconds: float
    result: DistillResult
    teacher: torch.nn.Module = field(repr=False)

    @property
    def improvement(self) -> float:
        return self.error_before / max(self.error_after, 1e-30)


def quick_distill(family: str = "pixart_sigma", *, teacher: Optional[torch.nn.Module] = None, steps: int = 80,
                  lr: float = QUICK_LR, batch_size: int = 4, latent_size: int = 16, items: int = 8, seed: int = 0,
                  train_projections: bool = False, weights: Optional[LossWeights] = None,
                  work_dir: Optional[str] = None, progress: Optional[Callable[[int, int, dict], None]] = None,
                  should_stop: Optional[Callable[[], bool]] = None) -> QuickDistillResult:
    """Distil an adapter for ``teacher`` (default: ``structured_tiny_teacher(family)``) in ``steps`` steps on
    tiny random data; returns it with the student's error before and after. The teacher is given back
    unconverted. ``progress``/``should_stop`` as in ``Trainer``; nothing is written without ``work_dir``."""
    model = teacher if teacher is not None else structured_tiny_teacher(family, seed=seed)
    torch.manual_seed(seed)
    host = DiffusersDistillHost(model, train_projections=train_projections, seed=seed)
    dataset = tiny_dataset(model, items=items, latent_size=latent_size, seed=seed)
    schedule = schedule_for(host.family)
    config = DistillConfig(steps=steps, batch_size=batch_size, lr=lr, weights=weights or LossWeights(),
                           uncond_prob=0.0, log_every=1, seed=seed)
    started = time.perf_counter()
    try:
        before = prediction_error(host, dataset, schedule)
        trainer = Trainer(host, [dataset], [Stage(latent_size * 8, 0, steps)], schedule, config, work_dir=work_dir,
                          progress=progress, should_stop=should_stop,
                          training_info={"teacher": f"tiny {host.family} (quick_distill)"})
        result = trainer.run()
        after = prediction_error(host, dataset, schedule)
    finally:
        host.restore()
    return QuickDistillResult(result.adapter, before, after, result.steps, time.perf_counter() - started, result, model)


__all__ = ["quick_distill", "QuickDistillResult", "structured_tiny_teacher", "tiny_dataset", "TEACHER_SETTINGS"]


