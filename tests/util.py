"""Helpers shared by the tests (import as ``from tests.util import ...``)."""

from __future__ import annotations

import torch


def rel_rmse(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Relative RMS error, computed in float64."""
    a, e = actual.detach().double(), expected.detach().double()
    return float((a - e).pow(2).mean().sqrt() / (e.pow(2).mean().sqrt() + 1e-30))


def poisoned_like(t: torch.Tensor) -> torch.Tensor:
    """A NaN-filled tensor shaped like ``t`` (for ``out=``-style buffers and to catch unwritten rows)."""
    return torch.full_like(t, float("nan"))
