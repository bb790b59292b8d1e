"""Distilled variants measured against the tiny trained teachers (``edit_core.tiny_teachers``).

Every distillable variant of a family (EDiT / MM-EDiT and the paper's baselines) is distilled with one
budget and one seed through the real command, ``python -m edit_core distill`` with its **default** recipe
(``edit_core.distill.recipe``); the only arguments given are the tiny teacher's own facts (``--guidance 1
--uncond-prob 0``, its 256 px latents, and for the SD3.5-layout teacher the shift it was trained with) and
the training data: random crops of the photos the teacher itself was trained on (``--latents``; crop seed
``CROP_SEED``, not the teacher's 0 nor the held-out set's 999).

Each student is then measured on the teacher's held-out noisy crops, timesteps spread over the whole range:

- ``output_error``: ‖student − teacher‖ / ‖teacher‖ of the model output (the task half: ε, or the velocity);
  ``error_by_t``: the same for the items in each quarter of the timestep range;
- ``student_loss`` next to ``teacher_loss``: the denoising loss against the true target;
- ``layer_errors``: each converted layer's attention output (after the output projection) vs the teacher's on
  the same layer input (a teacher-forced pass), relative;
- ``sample_error``: latents sampled from the same noise (deterministic sampler, ``sample_steps`` steps) vs the
  teacher's;
- ``curve``: the output error while training, every ``curve_every`` steps.

Rows for the untrained init of the family's default variant and for the training-free ``kv_pool`` (r = 2)
give the scale. ``evaluate(family, budget)`` returns a dict for ``markdown`` and ``figure``.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch

from ..families import get_family
from ..tiny_teachers import load_heldout, load_tiny_teacher, photo_crops, predict, teacher_path
from ..variants import distillable_variants
from .training_free import relative_error, sample_with

CROP_SEED = 1
TEACHER_ARGS = {"pixart_sigma": [], "sd35_medium": ["--flow-shift", "1"]}
"""The tiny teachers' own facts, passed as a user would: the SD3.5-layout teacher trained (and samples) with
shift 1 (plain logit-normal), not SD3.5-M's 3."""


@dataclass(frozen=True)
class Budget:
    steps: int = 1000
    batch: int = 16
    crops: int = 4096  # training crops (the photos hold far more distinct ones; 4096 covers 1000 × 16 draws well)
    curve_every: int = 50
    items: int = 64  # held-out items for every number
    sample_items: int = 4
    sample_steps: int = 20
    seed: int = 0


QUICK = Budget(steps=3, batch=2, crops=8, curve_every=3, items=4, sample_items=1, sample_steps=3)


def distillable(family: str) -> list[str]:
    """The family's distillable variants, its default first."""
    return distillable_variants(get_family(family))


# ---------------------------------------------------------------------------------------------- distilling

def heldout_batches(heldout: dict, family: str, items: int, size: int = 32):
    """(noisy latents, timesteps, conditioning) of the first ``items`` held-out crops, ``size`` at a time."""
    keys = [k for k in get_family(family).conditioning if k in heldout]
    for start in range(0, items, size):
        rows = slice(start, min(items, start + size))
        yield heldout["noisy"][rows], heldout["timestep"][rows], {k: heldout[k][rows] for k in keys}


def write_inputs(family: str, folder: str, budget: Budget) -> dict:
    """The files ``distill`` reads: one prompt, its text embeddings (the teacher's constant caption), and the
    training crops as ``--latents``."""
    from safetensors.torch import save_file

    from ..distill.teachers import save_text_embeddings

    heldout = load_heldout(family)
    cond = {k: heldout[k][:1].contiguous() for k in get_family(family).conditioning if k in heldout}
    paths = {"prompts": os.path.join(folder, "prompts.txt"), "embeddings": os.path.join(folder, "embeddings.safetensors"),
             "latents": os.path.join(folder, "latents.safetensors")}
    with open(paths["prompts"], "w", encoding="utf-8") as f:
        f.write("the tiny teacher's constant caption\n")
    save_text_embeddings(paths["embeddings"], cond, {k: torch.zeros_like(v) for k, v in cond.items()})
    save_file({"latents": photo_crops(budget.crops, CROP_SEED).contiguous()}, paths["latents"])
    return paths


def distill_argv(family: str, variant: str, paths: dict, out: str, budget: Budget) -> list[str]:
    """The ``distill`` command line: the defaults, the budget, the variant and the tiny teacher's facts."""
    return ["--teacher", teacher_path(family), "--text-embeddings", paths["embeddings"], "--prompts", paths["prompts"],
            "--latents", paths["latents"], "--out", out, "--steps", str(budget.steps), "--batch", str(budget.batch),
            "--variant", variant, "--guidance", "1", "--uncond-prob", "0", "--seed", str(budget.seed),
            *TEACHER_ARGS[family], "--device", "cpu", "--dtype", "fp32", "--no-progress", "--eval-batches", "0",
            "--checkpoint-every", "0", "--log-every", str(max(1, budget.curve_every))]


def _parse(argv: list[str]) -> argparse.Namespace:
    from ..distill import cli

    parser = argparse.ArgumentParser(prog="python -m edit_core distill")
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def distill(family: str, variant: str, budget: Budget, folder: str, paths: dict, heldout: dict,
            reference: torch.Tensor, log: Callable[[str], None]):
    """Run ``distill`` for one variant; returns (adapter, curve [(step, output error)], seconds)."""
    from ..adapter import load_adapter
    from ..distill import cli

    out = os.path.join(folder, f"{family}-{variant}.safetensors")
    curve: list[tuple[int, float]] = []
    channels = reference.shape[1]
    items = reference.shape[0]

    def on_step(step: int, host) -> None:
        if step % budget.curve_every and step != budget.steps:
            return
        with torch.no_grad():
            preds = [host.predict(x, t, cond, mode="student")[:, :channels].float()
                     for x, t, cond in heldout_batches(heldout, family, items)]
        curve.append((step, relative_error(torch.cat(preds), reference)))

    started = time.perf_counter()
    code = cli.run(_parse(distill_argv(family, variant, paths, out, budget)), on_step=on_step)
    if code != 0:
        raise RuntimeError(f"distill {variant} on the tiny {family} teacher failed (exit code {code})")
    seconds = time.perf_counter() - started
    log(f"{family:>13} {variant:<20} distilled: {budget.steps} steps × {budget.batch} in {seconds / 60:.1f} min, "
        f"error {curve[-1][1]:.4f}")
    return load_adapter(out), curve, seconds


# ---------------------------------------------------------------------------------------------- measuring

T_RANGES = ((0, 250), (250, 500), (500, 750), (750, 1000))
"""Timestep ranges for ``error_by_timestep``, in the models' units (PixArt's DDPM step, SD3's 1000σ)."""


def error_by_timestep(prediction: torch.Tensor, reference: torch.Tensor, timesteps: torch.Tensor) -> dict[str, float]:
    """The output error of the items in each of ``T_RANGES`` ("0–250": …), where the error concentrates."""
    t = timesteps.double().reshape(-1)
    out = {}
    for lo, hi in T_RANGES:
        rows = (t >= lo) & ((t < hi) if hi < 1000 else (t <= hi))
        if bool(rows.any()):
            out[f"{lo}–{hi}"] = relative_error(prediction[rows], reference[rows])
    return out


@torch.no_grad()
def layer_errors(teacher, adapter, heldout: dict, family: str, items: int) -> dict[str, float]:
    """Each converted layer's attention output vs the teacher's on the same layer input (teacher-forced)."""
    from ..distill.diffusers_host import DiffusersDistillHost

    host = DiffusersDistillHost(copy.deepcopy(teacher), adapter)
    sums: dict[str, list[float]] = {}
    for x, t, cond in heldout_batches(heldout, family, items):
        _, pairs = host.teacher_forced(x, t, cond)
        for pair in pairs:
            diff = (pair.student.double() - pair.teacher.double()).pow(2).sum().item()
            ref = pair.teacher.double().pow(2).sum().item()
            acc = sums.setdefault(pair.name, [0.0, 0.0])
            acc[0] += diff
            acc[1] += ref
    return {name: (d / max(r, 1e-30)) ** 0.5 for name, (d, r) in sums.items()}


def measure(teacher, student, adapter, family: str, heldout: dict, reference: torch.Tensor, budget: Budget,
            samples_reference: torch.Tensor, noise: torch.Tensor, cond: dict) -> dict:
    prediction = predict(student, heldout, family, items=budget.items)
    target = heldout["target"][:budget.items]
    row = {"output_error": relative_error(prediction, reference),
           "error_by_t": error_by_timestep(prediction, reference, heldout["timestep"][:budget.items]),
           "student_loss": float(torch.mean((prediction - target) ** 2))}
    if adapter is not None:
        row["layer_errors"] = layer_errors(teacher, adapter, heldout, family, budget.items)
    with torch.no_grad():
        samples = sample_with(teacher, student, family, noise, cond, steps=budget.sample_steps)
    row["sample_error"] = relative_error(samples, samples_reference)
    row["samples"] = samples
    return row


def evaluate(family: str, budget: Budget = Budget(), *, variants: Optional[list[str]] = None,
             log: Callable[[str], None] = print, work_dir: Optional[str] = None) -> dict:
    """Distil and measure every variant of ``family`` (or ``variants``); see the module docstring."""
    from ..adapter import init_adapter_from_teacher
    from ..integrations.diffusers import apply_edit, apply_training_free

    family = get_family(family).name
    torch.manual_seed(budget.seed)
    teacher = load_tiny_teacher(family)
    heldout = load_heldout(family)
    reference = predict(teacher, heldout, family, items=budget.items)
    target = heldout["target"][:budget.items]
    noise = heldout["noise"][:budget.sample_items]
    cond = {k: heldout[k][:budget.sample_items] for k in get_family(family).conditioning if k in heldout}
    with torch.no_grad():
        samples_reference = sample_with(teacher, teacher, family, noise, cond, steps=budget.sample_steps)
        unrelated = relative_error(sample_with(teacher, teacher, family, noise.roll(1, dims=0), cond,
                                               steps=budget.sample_steps), samples_reference)

    def measured(student, adapter):
        return measure(teacher, student, adapter, family, heldout, reference, budget, samples_reference, noise, cond)

    result = {"family": family, "budget": asdict(budget), "teacher_loss": float(torch.mean((reference - target) ** 2)),
              "unrelated_sample_error": unrelated, "teacher_samples": samples_reference, "rows": []}
    default = get_family(family).default_variant
    init = init_adapter_from_teacher(teacher.state_dict(), family, num_heads=teacher.config.num_attention_heads,
                                     variant=default, seed=budget.seed)
    result["rows"].append({"variant": default, "kind": "untrained init", **measured(
        apply_edit(copy.deepcopy(teacher), init), init)})
    result["rows"].append({"variant": "kv_pool", "kind": "training-free, r = 2", **measured(
        apply_training_free(copy.deepcopy(teacher), ratio=2, min_tokens=0), None)})

    with tempfile.TemporaryDirectory(prefix="edit-quality-", dir=work_dir) as folder:
        paths = write_inputs(family, folder, budget)
        for variant in variants or distillable(family):
            adapter, curve, seconds = distill(family, variant, budget, folder, paths, heldout, reference, log)
            row = {"variant": variant, "kind": "distilled", "default": variant == default, "seconds": seconds,
                   "curve": curve,
                   "trained_tensors": int(sum(v.numel() for v in adapter.tensors.values())),
                   **measured(apply_edit(copy.deepcopy(teacher), adapter), adapter)}
            result["rows"].append(row)
    for row in result["rows"]:
        log(f"{family:>13} {row['variant']:<20} {row['kind']:<22} output error {row['output_error']:.4f}  "
            f"sample error {row['sample_error']:.4f}")
    return result


__all__ = ["Budget", "QUICK", "CROP_SEED", "TEACHER_ARGS", "T_RANGES", "distillable", "distill_argv", "evaluate",
           "error_by_timestep", "layer_errors", "write_inputs"]
