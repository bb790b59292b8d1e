"""Teacher samples for data-free distillation: denoise noise into clean latents with the frozen teacher.

``sample_teacher`` runs the host in teacher mode with classifier-free guidance: DDIM (η = 0) for
ε-prediction teachers (PixArt-Σ), Euler on the rectified-flow ODE for flow teachers (SD3.5, with the
inference shift, 3.0 by default as SD3.5's scheduler). Host-independent, so any ``DistillHost`` can make
its own training data from prompts alone.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .host import Conditioning, DistillHost
from .schedules import DDPMSchedule


def _concat(a: Conditioning, b: Conditioning) -> dict[str, torch.Tensor]:
    return {k: torch.cat([a[k], b[k].expand(a[k].shape[0], *b[k].shape[1:]).to(a[k])]) for k in a}


def _guided(host: DistillHost, x: torch.Tensor, t: float, cond: Conditioning, null_cond: Optional[Conditioning],
            guidance: float) -> torch.Tensor:
    timestep = torch.full((x.shape[0],), float(t))
    if null_cond is None or guidance == 1.0:
        return host.predict(x, timestep, cond, mode="teacher").float()
    both = host.predict(torch.cat([x, x]), torch.cat([timestep, timestep]), _concat(cond, null_cond),
                        mode="teacher").float()
    conditional, unconditional = both.chunk(2)
    return unconditional + guidance * (conditional - unconditional)


@torch.no_grad()
def sample_teacher(host: DistillHost, noise: torch.Tensor, cond: Conditioning, *,
                   null_cond: Optional[Conditioning] = None, steps: int = 20, guidance: float = 4.5,
                   schedule: Optional[DDPMSchedule] = None, shift: float = 3.0) -> torch.Tensor:
    """Clean latents [B, C, H, W] (fp32, on the host's device) from ``noise`` [B, C, H, W] and ``cond``.

    ``null_cond``: the empty prompt's conditioning (batch 1 or B), used for guidance; without it, or with
    ``guidance`` 1, the teacher runs unguided."""
    channels = host.latent_channels
    return sample(lambda x, t, step: _guided(host, x, t, cond, null_cond, guidance)[:, :channels],
                  noise.to(host.device, torch.float32), host.prediction, steps=steps, schedule=schedule, shift=shift)


@torch.no_grad()
def sample(predict: Callable[[torch.Tensor, float, int], torch.Tensor], noise: torch.Tensor, prediction: str, *,
           steps: int = 20, schedule: Optional[DDPMSchedule] = None, shift: float = 3.0) -> torch.Tensor:
    """Deterministic sampling from ``noise`` with ``predict(x, timestep, step_index)`` → ε (``prediction``
    "epsilon": DDIM η = 0 on ``schedule``) or the flow velocity ε − x0 ("flow": Euler, σ shifted by ``shift``).
    Returns the clean latents (fp32)."""
    if steps < 1:
        raise ValueError("sampling needs at least one step")
    x = noise.to(torch.float32)
    if prediction == "epsilon":
        schedule = schedule or DDPMSchedule()
        ac = schedule.alphas_cumprod.to(torch.float32)
        T = schedule.num_train_timesteps
        timesteps = [int(round((T - 1) * (1 - i / steps))) for i in range(steps)]
        for i, t in enumerate(timesteps):
            eps = predict(x, t, i).float()
            a_t = ac[t]
            x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            if i + 1 == len(timesteps):
                return x0
            a_next = ac[timesteps[i + 1]]
            x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    sigmas = [1 - i / steps for i in range(steps)] + [0.0]
    sigmas = [shift * s / (1 + (shift - 1) * s) for s in sigmas]
    for i in range(steps):
        v = predict(x, 1000.0 * sigmas[i], i).float()
        x = x + (sigmas[i + 1] - sigmas[i]) * v
    return x


__all__ = ["sample_teacher", "sample"]
