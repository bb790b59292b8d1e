"""How close the student is to the teacher: relative RMS error of the predictions on held-out noise and
timesteps (drawn from their own seed, never used in training)."""

from __future__ import annotations

import torch

from .data import LatentDataset
from .host import DistillHost


@torch.no_grad()
def prediction_error(host: DistillHost, dataset: LatentDataset, schedule, *, seed: int = 12345,
                     batches: int = 2, batch_size: int = 4) -> float:
    """Mean over ``batches`` of ‖student − teacher‖ / ‖teacher‖ (RMS, float64) on noisy latents of
    ``dataset``'s items at timesteps from ``schedule``."""
    g = torch.Generator().manual_seed(seed)
    buckets = [ids for _, ids in sorted(dataset.buckets().items()) if ids]
    errors: list[float] = []
    for i in range(batches):
        ids = buckets[i % len(buckets)]
        pick = [ids[j] for j in torch.randint(0, len(ids), (batch_size,), generator=g).tolist()]
        x0, cond = dataset.load(pick)
        noise = torch.randn(x0.shape, generator=g)
        noised = schedule.add_noise(x0, noise, schedule.sample_timesteps(batch_size, g))
        teacher = host.predict(noised.noisy, noised.timestep, cond, mode="teacher").double()
        student = host.predict(noised.noisy, noised.timestep, cond, mode="student").double()
        errors.append(float((student - teacher).pow(2).mean().sqrt() / teacher.pow(2).mean().sqrt().clamp_min(1e-30)))
    return sum(errors) / len(errors)


__all__ = ["prediction_error"]
