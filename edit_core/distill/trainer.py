"""The host-independent distillation loop.

One optimizer step, per micro-batch (``grad_accum`` of them):

1. the global batch of this step (``BatchPlan``; the same on every rank), this rank's rows of it, and
   noise / timesteps / caption dropout drawn for the whole global batch from a generator seeded by
   (seed, step, micro-batch) — so a step's data depends on nothing but its number;
2. a teacher-forced pass: the teacher's prediction and every layer's (teacher, student) attention
   output → ``w_feat · L_feat``, backward;
3. a student pass → ``w_kd · L_KD + w_task · L_task``, backward (skipped when both weights are 0);

then gradients are averaged over ranks, clipped, AdamW steps (fp32 master weights), the EMA follows.
Every ``checkpoint_every`` steps (and at the end, and when ``should_stop`` says so) rank 0 writes a
checkpoint that a resumed run continues from bit for bit, plus the loss-curve PNG. Losses and the
learning rate go to a JSONL log.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import torch

from ..adapter import FINETUNE_NAMES, Adapter, AdapterConfig
from .checkpoint import (load_checkpoint, optimizer_state_from_tensors, optimizer_state_to_tensors,
                         restore_rng_state, rng_state_tensors, save_checkpoint)
from .data import BatchPlan, LatentDataset, Stage, drop_conditioning, stage_at
from .distributed import (DistContext, any_rank, average_gradients, broadcast_parameters, mean_across_ranks)
from .host import DistillHost
from .losses import LossWeights, layer_loss, output_kd_loss, task_loss
from .plot import plot_losses

logger = logging.getLogger("edit_core.distill")

ProgressCallback = Callable[[int, int, dict], None]
"""(steps done, total steps, the step's logged values)."""


class DistillError(ValueError):
    """A distillation setting or input that cannot work; raised before any training step."""


@dataclass
class DistillConfig:
    steps: int = 1000
    batch_size: int = 1  # per rank and micro-batch; the global batch is batch_size × world size
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # "constant" | "cosine" (to 0 at the last step, after warm-up)
    max_grad_norm: Optional[float] = 1.0
    weights: LossWeights = field(default_factory=LossWeights)
    uncond_prob: float = 0.1  # caption dropout to the empty prompt (needs the dataset's null_cond)
    ema_decay: Optional[float] = None  # e.g. 0.999; the exported adapter is then the EMA
    gradient_checkpointing: bool = False
    fp16_loss_scaling: bool = False  # GradScaler; set for fp16 autocast
    checkpoint_every: int = 0  # 0: only at the end and on stop
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0

    def validate(self) -> None:
        problems = []
        for name in ("steps", "batch_size", "grad_accum", "log_every"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            problems.append(f"lr must be positive, got {self.lr}")
        if self.lr_schedule not in ("constant", "cosine"):
            problems.append(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if not 0 <= self.uncond_prob < 1:
            problems.append(f"uncond_prob must be in [0, 1), got {self.uncond_prob}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            problems.append(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.checkpoint_every < 0 or self.warmup_steps < 0:
            problems.append("checkpoint_every and warmup_steps must be ≥ 0")
        if problems:
            raise DistillError("; ".join(problems))


@dataclass
class DistillResult:
    adapter: Adapter
    steps: int  # optimizer steps done in total (including resumed ones)
    stopped: bool  # ended early by should_stop
    last: dict  # the last step's logged values
    log_path: Optional[str] = None
    plot_path: Optional[str] = None
    checkpoint: Optional[str] = None


def _step_seed(seed: int, step: int, micro: int) -> int:
    return (seed * 1_000_003 + step * 131 + micro) % (2 ** 63 - 1)


class Trainer:
    """Distil ``host``'s student on ``datasets`` (one per stage of ``stages``) with ``schedule``'s noise.

    ``work_dir`` (rank 0 writes there): ``log.jsonl``, ``loss.png``, ``checkpoints/``. Without it
    nothing is written and nothing can be resumed. ``progress(step, total, values)`` is called after
    every step; ``should_stop()`` is polled after every step (on rank 0; all ranks stop together) and
    ends the run early with a checkpoint. ``training_info`` is merged into the adapter's ``training``
    metadata."""

    def __init__(self, host: DistillHost, datasets: Sequence[LatentDataset], stages: Sequence[Stage], schedule,
                 config: DistillConfig, *, work_dir: Optional[str] = None, dist: Optional[DistContext] = None,
                 progress: Optional[ProgressCallback] = None, should_stop: Optional[Callable[[], bool]] = None,
                 training_info: Optional[dict] = None):
        config.validate()
        if len(datasets) != len(stages):
            raise DistillError(f"{len(stages)} stages but {len(datasets)} datasets")
        if not stages or stages[-1].stop != config.steps:
            raise DistillError("the stages must cover every step (use data.stage_plan)")
        self.host, self.datasets, self.stages, self.schedule = host, list(datasets), list(stages), schedule
        self.config, self.work_dir = config, work_dir
        self.dist = dist or DistContext(device=host.device)
        self.progress, self.should_stop = progress, should_stop
        self.training_info = dict(training_info or {})
        has_images = any(d.has_images for d in self.datasets)
        self.weights = config.weights.resolved(has_images)
        self.global_batch = config.batch_size * self.dist.world_size
        self.plans = [BatchPlan(d, self.global_batch, config.seed + 7919 * i) for i, d in enumerate(self.datasets)]

        self.params = host.trainable_parameters()
        self.names = list(self.params)
        if not self.names:
            raise DistillError("the host has no trainable parameters")
        broadcast_parameters(list(self.params.values()), self.dist)
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=config.lr, betas=tuple(config.betas),
                                           weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler(self.dist.device.type) if config.fp16_loss_scaling else None
        self.ema = ({k: p.detach().clone().float() for k, p in self.params.items()}
                    if config.ema_decay is not None else None)
        host.set_gradient_checkpointing(config.gradient_checkpointing)
        self.step = 0
        self.last: dict = {}
        self._warned_null = False

    # ------------------------------------------------------------------------------------------ paths

    def _path(self, *parts: str) -> Optional[str]:
        return os.path.join(self.work_dir, *parts) if self.work_dir else None

    @property
    def log_path(self) -> Optional[str]:
        return self._path("log.jsonl")

    @property
    def plot_path(self) -> Optional[str]:
        return self._path("loss.png")

    @property
    def checkpoint_dir(self) -> Optional[str]:
        return self._path("checkpoints")

    def run_fingerprint(self) -> dict:
        """Settings a resumed run must share for the continuation to be exact."""
        return {"global_batch": self.global_batch, "grad_accum": self.config.grad_accum, "seed": self.config.seed,
                "stages": [asdict(s) for s in self.stages], "trainable": self.names,
                "weights": self.weights.as_dict(), "schedule": self.schedule.describe()}

    # ------------------------------------------------------------------------------------------ state

    def _lr(self, step: int) -> float:
        c = self.config
        if c.warmup_steps and step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        if c.lr_schedule == "cosine":
            span = max(1, c.steps - c.warmup_steps)
            return c.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - c.warmup_steps) / span)))
        return c.lr

    def state_tensors(self) -> tuple[dict, dict]:
        tensors = {f"param.{k}": p.detach() for k, p in self.params.items()}
        opt_tensors, opt_info = optimizer_state_to_tensors(self.optimizer, self.names)
        tensors.update(opt_tensors)
        if self.ema is not None:
            tensors.update({f"ema.{k}": v for k, v in self.ema.items()})
        tensors.update(rng_state_tensors())
        stage = stage_at(self.stages, min(self.step, self.config.steps - 1))
        info = {"optimizer": opt_info, "run": self.run_fingerprint(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "python_rng": _jsonable(random.getstate()),
                "data_position": {"stage": stage, "resolution": self.stages[stage].resolution,
                                  **self.plans[stage].position(max(0, self.step - self.stages[stage].start) *
                                                               self.config.grad_accum)},
                "last": self.last}
        return tensors, info

    def load_state(self, tensors: dict, info: dict) -> None:
        mine, theirs = self.run_fingerprint(), info.get("run", {})
        different = sorted(k for k in mine if json.dumps(mine[k], sort_keys=True) !=
                           json.dumps(theirs.get(k), sort_keys=True))
        if different:
            raise DistillError(f"the checkpoint in {self.checkpoint_dir} is from a run with other settings "
                               f"({', '.join(different)} differ); resume with the same settings (batch × ranks, "
                               f"resolutions, steps, seed, loss weights) or use a new work folder")
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(tensors[f"param.{k}"].to(p.dtype))
        optimizer_state_from_tensors(self.optimizer, self.names, tensors, info["optimizer"])
        if self.ema is not None:
            for k in self.ema:
                self.ema[k] = tensors.get(f"ema.{k}", self.params[k].detach().float()).clone().to(self.params[k].device)
        if self.scaler is not None and info.get("scaler"):
            self.scaler.load_state_dict(info["scaler"])
        restore_rng_state(tensors)
        if info.get("python_rng"):
            random.setstate(_from_jsonable(info["python_rng"]))
        self.step = int(info["step"])
        self.last = dict(info.get("last") or {})

    def save_checkpoint(self) -> Optional[str]:
        if not self.work_dir:
            return None
        path = None
        if self.dist.is_main:  # every rank holds the same state; rank 0 writes it
            tensors, info = self.state_tensors()
            path = save_checkpoint(self.checkpoint_dir, self.step, tensors, info, self.config.keep_checkpoints)
            plot_losses(self.log_path, self.plot_path)
        self.dist.barrier()
        return path

    def resume(self) -> bool:
        """Continue from the newest checkpoint in ``work_dir``; False when there is none."""
        loaded = load_checkpoint(self.checkpoint_dir) if self.checkpoint_dir else None
        if loaded is None:
            return False
        self.load_state(*loaded)
        if self.dist.is_main and self.log_path and os.path.isfile(self.log_path):
            with open(self.log_path, encoding="utf-8") as f:
                lines = [line for line in f if line.strip() and _log_step(line) <= self.step]
            with open(self.log_path, "w", encoding="utf-8") as f:
                f.writelines(lines)
        return True

    # ------------------------------------------------------------------------------------------ training

    def _micro_batch(self, step: int, micro: int):
        stage_index = stage_at(self.stages, step)
        stage, dataset = self.stages[stage_index], self.datasets[stage_index]
        ids = self.plans[stage_index].batch((step - stage.start) * self.config.grad_accum + micro)
        lo, hi = self.dist.rank * self.config.batch_size, (self.dist.rank + 1) * self.config.batch_size
        x0, cond = dataset.load(ids[lo:hi])
        g = torch.Generator().manual_seed(_step_seed(self.config.seed, step, micro))
        shape = (len(ids), *x0.shape[1:])
        noise = torch.randn(shape, generator=g)[lo:hi]
        timesteps = self.schedule.sample_timesteps(len(ids), g)[lo:hi]
        drop = (torch.rand(len(ids), generator=g) < self.config.uncond_prob)[lo:hi]
        if self.config.uncond_prob > 0 and dataset.null_cond is None and not self._warned_null:
            self._warned_null = True
            logger.warning("uncond_prob is %s but the data has no empty-prompt conditioning: caption dropout is off",
                           self.config.uncond_prob)
        cond = drop_conditioning(cond, dataset.null_cond, drop)
        noised = self.schedule.add_noise(x0, noise, timesteps)
        device = self.host.device
        cond = {k: v.to(device) for k, v in cond.items()}
        return (noised.noisy.to(device), noised.timestep.to(device), noised.target.to(device), cond,
                stage.resolution, tuple(x0.shape[-2:]))

    def _backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def train_step(self) -> dict:
        c, w, step = self.config, self.weights, self.step
        lr = self._lr(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        sums = {"loss": 0.0, "loss_feature": 0.0, "loss_kd": 0.0, "loss_task": 0.0}
        resolution = latent = None
        for micro in range(c.grad_accum):
            x, t, target, cond, resolution, latent = self._micro_batch(step, micro)
            teacher = None
            if w.feature > 0:
                teacher, pairs = self.host.teacher_forced(x, t, cond)
                feature = layer_loss(pairs)
                self._backward(feature * (w.feature / c.grad_accum))
                sums["loss_feature"] += feature.item() / c.grad_accum
                del pairs
            elif w.kd > 0:
                teacher = self.host.predict(x, t, cond, mode="teacher")
            if w.kd > 0 or w.task > 0:
                student = self.host.predict(x, t, cond, mode="student")
                loss = student.new_zeros((), dtype=torch.float32)
                if w.kd > 0:
                    kd = output_kd_loss(student, teacher)
                    loss = loss + w.kd * kd
                    sums["loss_kd"] += kd.item() / c.grad_accum
                if w.task > 0:
                    tl = task_loss(student, target, self.host.latent_channels)
                    loss = loss + w.task * tl
                    sums["loss_task"] += tl.item() / c.grad_accum
                self._backward(loss / c.grad_accum)
        sums["loss"] = w.feature * sums["loss_feature"] + w.kd * sums["loss_kd"] + w.task * sums["loss_task"]
        params = list(self.params.values())
        average_gradients(params, self.dist)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = None
        if c.max_grad_norm:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, c.max_grad_norm))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            with torch.no_grad():
                for k, p in self.params.items():
                    self.ema[k].lerp_(p.detach().float(), 1.0 - c.ema_decay)
        self.step += 1
        values = mean_across_ranks(sums, self.dist)
        values.update({"step": self.step, "lr": lr, "resolution": resolution, "latent": list(latent)})
        if grad_norm is not None:
            values["grad_norm"] = grad_norm
        return values

    def _log(self, values: dict) -> None:
        if self.dist.is_main and self.log_path:
            os.makedirs(self.work_dir, exist_ok=True)
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(values, sort_keys=True) + "\n")

    def run(self, resume: bool = False) -> DistillResult:
        if resume:
            self.resume()
        c = self.config
        stopped, checkpoint, saved_at = False, None, None
        started, first_step = time.perf_counter(), self.step
        while self.step < c.steps:
            values = self.train_step()
            elapsed = time.perf_counter() - started
            values["steps_per_s"] = (self.step - first_step) / elapsed if elapsed > 0 else None
            self.last = {k: v for k, v in values.items() if k != "steps_per_s"}
            if self.step % c.log_every == 0 or self.step == c.steps:
                self._log(values)
            if c.checkpoint_every and self.step % c.checkpoint_every == 0 and self.step < c.steps:
                checkpoint, saved_at = self.save_checkpoint(), self.step
            if self.progress is not None:
                self.progress(self.step, c.steps, values)
            if any_rank(bool(self.should_stop and self.should_stop()), self.dist) and self.step < c.steps:
                if self.step % c.log_every:
                    self._log(values)
                stopped = True
                break
        if saved_at != self.step:
            checkpoint = self.save_checkpoint() or checkpoint
        plot = self.plot_path if self.plot_path and os.path.isfile(self.plot_path) else None
        return DistillResult(self.export_adapter(stopped), self.step, stopped, dict(self.last), self.log_path,
                             plot, checkpoint)

    # ------------------------------------------------------------------------------------------ export

    def export_adapter(self, stopped: bool = False) -> Adapter:
        tensors = self.host.export_tensors()
        if self.ema is not None:
            tensors.update({k: v.detach().to("cpu", torch.float32).clone() for k, v in self.ema.items()})
        base: AdapterConfig = self.host.adapter_config
        training = {"stage": "distilled", "steps": self.step, "target_steps": self.config.steps,
                    "stopped_early": stopped, "resolutions": [s.resolution for s in self.stages],
                    "stages": [asdict(s) for s in self.stages], "global_batch": self.global_batch,
                    "grad_accum": self.config.grad_accum, "world_size": self.dist.world_size, "lr": self.config.lr,
                    "lr_schedule": self.config.lr_schedule, "optimizer": "AdamW",
                    "loss_weights": self.weights.as_dict(), "ema_decay": self.config.ema_decay,
                    "seed": self.config.seed, "schedule": self.schedule.describe(),
                    "data": "images" if any(d.has_images for d in self.datasets) else "teacher samples",
                    "trainable": "adapter+projections" if any(k.split(".")[3] in FINETUNE_NAMES
                                                             for k in self.names) else "adapter",
                    "final_losses": {k: self.last.get(k) for k in ("loss", "loss_feature", "loss_kd", "loss_task")},
                    **self.training_info}
        config = AdapterConfig(**{**asdict(base), "training": training})
        return Adapter(config, tensors, source="<distilled>")


def _log_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, ValueError, TypeError):
        return 1 << 62


def _jsonable(value):
    if isinstance(value, tuple):
        return {"tuple": [_jsonable(v) for v in value]}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _from_jsonable(value):
    if isinstance(value, dict) and "tuple" in value:
        return tuple(_from_jsonable(v) for v in value["tuple"])
    if isinstance(value, list):
        return [_from_jsonable(v) for v in value]
    return value


__all__ = ["Trainer", "DistillConfig", "DistillResult", "DistillError", "ProgressCallback"]
