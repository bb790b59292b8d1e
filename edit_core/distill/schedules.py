"""Training noise for each teacher: which timesteps, how clean latents are noised, what the task target is.

- ``DDPMSchedule`` (PixArt-Σ, ε-prediction): ``x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε`` with integer t uniform in
  [0, T), ᾱ from PixArt-Σ's betas (linear 1e-4 → 0.02 over 1000 steps); target ε.
- ``FlowSchedule`` (SD3.5, rectified flow): σ = shift·s / (1 + (shift−1)·s) with s = sigmoid(u),
  u ~ N(mean, std) (logit-normal, as SD3 trains; shift 1 = plain logit-normal), ``x_t = (1−σ)·x0 + σ·ε``,
  model timestep 1000·σ; target the velocity ε − x0.

Both draw from an explicit ``torch.Generator`` on the CPU, so a step's noise depends only on its seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class NoisedBatch:
    noisy: torch.Tensor  # x_t [B, C, H, W]
    timestep: torch.Tensor  # [B] in the model's units (0..1000)
    target: torch.Tensor  # the task target [B, C, H, W]: ε (DDPM) or ε − x0 (flow)


@dataclass
class DDPMSchedule:
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"  # "linear" | "scaled_linear"
    name: str = "ddpm_epsilon"

    def __post_init__(self):
        if self.beta_schedule == "linear":
            betas = torch.linspace(self.beta_start, self.beta_end, self.num_train_timesteps, dtype=torch.float64)
        elif self.beta_schedule == "scaled_linear":
            betas = torch.linspace(self.beta_start ** 0.5, self.beta_end ** 0.5, self.num_train_timesteps,
                                   dtype=torch.float64) ** 2
        else:
            raise ValueError(f"unsupported beta_schedule {self.beta_schedule!r} (linear or scaled_linear)")
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)

    def sample_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.num_train_timesteps, (n,), generator=generator)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> NoisedBatch:
        ab = self.alphas_cumprod[timesteps.long()].to(torch.float32).view(-1, 1, 1, 1)
        noisy = ab.sqrt() * x0.float() + (1 - ab).sqrt() * noise.float()
        return NoisedBatch(noisy, timesteps.to(torch.float32), noise.float())

    def describe(self) -> dict:
        return {"schedule": self.name, "beta_schedule": self.beta_schedule, "beta_start": self.beta_start,
                "beta_end": self.beta_end, "num_train_timesteps": self.num_train_timesteps}


@dataclass
class FlowSchedule:
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0
    name: str = "rectified_flow"

    def sample_sigmas(self, n: int, generator: torch.Generator) -> torch.Tensor:
        s = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(n, generator=generator))
        return self.shift * s / (1 + (self.shift - 1) * s)

    def sample_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.sample_sigmas(n, generator) * 1000.0

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> NoisedBatch:
        sigma = (timesteps.to(torch.float32) / 1000.0).view(-1, 1, 1, 1)
        noisy = (1 - sigma) * x0.float() + sigma * noise.float()
        return NoisedBatch(noisy, timesteps.to(torch.float32), noise.float() - x0.float())

    def describe(self) -> dict:
        return {"schedule": self.name, "logit_mean": self.logit_mean, "logit_std": self.logit_std,
                "shift": self.shift}


def schedule_for(family: str, scheduler_config: Optional[dict] = None, *, shift: Optional[float] = None,
                 **overrides):
    """The training schedule of a family (its record's ``schedule``); ``scheduler_config`` (a diffusers
    scheduler config) may refine a DDPM schedule. ``shift``: a flow schedule's timestep shift (ignored by DDPM
    families); pass the teacher's sampling shift so the student trains on the noise levels it is sampled at."""
    from ..families import get_family

    facts = dict(get_family(family).schedule)
    kind = facts.pop("kind")
    if kind == "ddpm":
        config = dict(scheduler_config or {})
        facts.update({k: config[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")
                      if k in config})
        facts.update(overrides)
        return DDPMSchedule(**facts)
    if kind == "flow":
        if shift is not None:
            facts["shift"] = float(shift)
        facts.update(overrides)
        return FlowSchedule(**facts)
    raise ValueError(f"no training schedule of kind {kind!r}")


__all__ = ["DDPMSchedule", "FlowSchedule", "NoisedBatch", "schedule_for"]
