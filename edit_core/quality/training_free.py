"""How close the training-free mode (KV compression) stays to its teacher, measured on the tiny trained teachers.

Two numbers per setting, both relative errors ||student − teacher|| / ||teacher||:

- ``output_error``: the model output (the task half: ε for PixArt, the flow velocity for SD3) on the held-out
  noisy crops of real photos, timesteps spread uniformly over the whole range — compression always on;
- ``sample_error``: clean latents after deterministic sampling (DDIM / Euler, ``steps`` steps) from the same
  noise, compression on only in the setting's part of sampling (``percent``: ComfyUI's convention, 0 = the
  first, noisiest step).

Settings cover the ratio, the temperature rule, the blocks compressed (all, or the later half) and the part
of sampling. ``evaluate`` returns rows; ``markdown`` turns them into the table ``bench/QUALITY.md`` holds.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch

from ..distill.sampling import sample
from ..distill.schedules import schedule_for
from ..families import get_family
from ..integrations.diffusers import apply_training_free, forward_kwargs
from ..tiny_teachers import load_heldout, load_tiny_teacher, predict


@dataclass(frozen=True)
class Setting:
    ratio: int = 2
    temperature: str = "teacher"
    blocks: str = "all"  # "all" | "late half"
    percent: tuple[float, float] = (0.0, 1.0)

    @property
    def label(self) -> str:
        parts = [f"r={self.ratio}", self.temperature]
        if self.blocks != "all":
            parts.append(f"blocks: {self.blocks}")
        if self.percent != (0.0, 1.0):
            parts.append(f"sampling {self.percent[0]:.0%}–{self.percent[1]:.0%}")
        return ", ".join(parts)


DEFAULT_SETTINGS = (
    Setting(2), Setting(2, "proportional"), Setting(3), Setting(3, "proportional"), Setting(4),
    Setting(2, blocks="late half"), Setting(2, percent=(0.0, 0.5)), Setting(2, percent=(0.5, 1.0)),
)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected.double()).norm() / expected.double().norm().clamp_min(1e-30))


def _blocks(model, setting: Setting) -> Optional[tuple[int, int]]:
    depth = int(model.config.num_layers)
    return None if setting.blocks == "all" else (depth // 2, depth - 1)


def student_for(teacher, setting: Setting):
    return apply_training_free(copy.deepcopy(teacher), ratio=setting.ratio, min_tokens=0,
                               blocks=_blocks(teacher, setting), temperature=setting.temperature)


def _predictor(model, cond: dict, channels: int) -> Callable[[torch.Tensor, float], torch.Tensor]:
    def run(x: torch.Tensor, t: float) -> torch.Tensor:
        timestep = torch.full((x.shape[0],), float(t))
        return model(**forward_kwargs(model, x, timestep, cond))[0][:, :channels]
    return run


def sample_with(teacher, student, family: str, noise: torch.Tensor, cond: dict, *, steps: int,
                percent: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """Clean latents from ``noise`` by deterministic sampling: ``student`` at the steps whose progress i/steps
    lies in ``percent``, ``teacher`` at the others (pass the teacher twice for the teacher's own samples)."""
    record = get_family(family)
    channels = int(teacher.config.in_channels)
    teacher_fn, student_fn = _predictor(teacher, cond, channels), _predictor(student, cond, channels)
    schedule = schedule_for(record.name) if record.prediction == "epsilon" else None

    def switching(x, t, step):
        return (student_fn if percent[0] <= step / steps <= percent[1] else teacher_fn)(x, t)

    return sample(switching, noise, record.prediction, steps=steps, schedule=schedule, shift=1.0)


@torch.no_grad()
def evaluate(family: str, settings=DEFAULT_SETTINGS, *, items: int = 64, sample_items: int = 8, steps: int = 20,
             log: Callable[[str], None] = lambda line: None) -> list[dict]:
    """One row per setting: output error, denoising loss (teacher's and student's) and sample error."""
    torch.manual_seed(0)
    teacher = load_tiny_teacher(family)
    heldout = load_heldout(family)
    target = heldout["target"][:items]
    reference = predict(teacher, heldout, family, items=items)
    teacher_loss = float(torch.mean((reference - target) ** 2))
    cond = {k: heldout[k][:sample_items] for k in get_family(family).conditioning if k in heldout}
    noise = heldout["noise"][:sample_items]
    rows = []
    expected = sample_with(teacher, teacher, family, noise, cond, steps=steps)
    shuffled = sample_with(teacher, teacher, family, noise.roll(1, dims=0), cond, steps=steps)
    unrelated = relative_error(shuffled, expected)  # the scale of "a different image": samples from other noise
    log(f"{get_family(family).name:>13} teacher samples from other noise differ by {unrelated:.4f}")
    for setting in settings:
        started = time.perf_counter()
        student = student_for(teacher, setting)
        row = {"family": get_family(family).name, **asdict(setting), "label": setting.label,
               "teacher_loss": teacher_loss, "unrelated_sample_error": unrelated}
        if setting.percent == (0.0, 1.0):
            prediction = predict(student, heldout, family, items=items)
            row["output_error"] = relative_error(prediction, reference)
            row["student_loss"] = float(torch.mean((prediction - target) ** 2))
        got = sample_with(teacher, student, family, noise, cond, steps=steps, percent=setting.percent)
        row["sample_error"] = relative_error(got, expected)
        row["seconds"] = time.perf_counter() - started
        output = f"{row['output_error']:.4f}" if "output_error" in row else "  —   "
        log(f"{row['family']:>13} {setting.label:<40} output error {output}  sample error {row['sample_error']:.4f}")
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> list[str]:
    lines = ["| family | setting | output error | denoising loss (teacher → student) | sample error |",
             "|---|---|---|---|---|"]
    for family in dict.fromkeys(row["family"] for row in rows):
        unrelated = next(row["unrelated_sample_error"] for row in rows if row["family"] == family)
        lines.append(f"| {get_family(family).short_title} | *scale: teacher samples from other noise* | — | — | "
                     f"*{unrelated:.3f}* |")
    for row in rows:
        output = f"{row['output_error']:.3f}" if "output_error" in row else "—"
        loss = f"{row['teacher_loss']:.3f} → {row['student_loss']:.3f}" if "student_loss" in row else "—"
        lines.append(f"| {get_family(row['family']).short_title} | {row['label']} | {output} | {loss} | "
                     f"{row['sample_error']:.3f} |")
    return lines


__all__ = ["Setting", "DEFAULT_SETTINGS", "evaluate", "markdown", "relative_error", "student_for", "sample_with"]
