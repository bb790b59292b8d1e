"""Measured quality against the tiny trained teachers (``edit_core.tiny_teachers``).

- ``distilled``: every distillable variant (EDiT / MM-EDiT and the paper's baselines) distilled by the default
  ``distill`` recipe with one budget and seed, then measured on held-out crops of real photos;
- ``training_free``: the training-free KV pooling's settings.

``run`` writes ``QUALITY.md``, ``quality.json`` and ``quality.png`` to its folder. Families are merged into
what the folder already holds, so one family can be re-measured (or two run as separate processes) without
losing the other's results; the samples behind the picture are kept beside them
(``quality-samples.safetensors``, fp16, one sample per student).
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import replace
from typing import Callable, Optional, Sequence

import torch

from . import distilled, training_free

QUICK = dict(items=16, sample_items=2, steps=6)
QUICK_SETTINGS = (training_free.Setting(2), training_free.Setting(2, percent=(0.5, 1.0)))
SAMPLES_FILE = "quality-samples.safetensors"


def run(families: Sequence[str], out_dir: Optional[str], *, quick: bool = False, steps: Optional[int] = None,
        variants: Optional[Sequence[str]] = None, parts: Sequence[str] = ("distilled", "training_free"),
        log: Callable[[str], None] = print) -> dict:
    from ..families import get_family

    started = time.perf_counter()
    families = [get_family(f).name for f in families]
    budget = distilled.QUICK if quick else distilled.Budget()
    if steps is not None:
        budget = replace(budget, steps=int(steps), curve_every=max(1, min(budget.curve_every, int(steps))))
    fresh: dict = {"distilled": {}, "training_free": []}
    for family in families:
        if "distilled" in parts:
            chosen = [v for v in (variants or distilled.distillable(family)) if v in distilled.distillable(family)]
            fresh["distilled"][family] = distilled.evaluate(family, budget, variants=chosen or None, log=log)
        if "training_free" in parts:
            fresh["training_free"] += training_free.evaluate(
                family, QUICK_SETTINGS if quick else training_free.DEFAULT_SETTINGS, log=log,
                **(QUICK if quick else {}))
    minutes = (time.perf_counter() - started) / 60
    run_facts = {"date": time.strftime("%Y-%m-%d"), "device": f"cpu ({platform.processor() or platform.machine()}, "
                 f"{torch.get_num_threads()} threads)", "torch": torch.__version__, "quick": quick,
                 "minutes": round(minutes, 2)}
    result = _merge(out_dir, fresh, run_facts, families)
    if out_dir:
        _write(out_dir, result)
    return result


# ---------------------------------------------------------------------------------------------- files

def _strip(result: dict) -> dict:
    """A distilled result without tensors (JSON)."""
    out = {k: v for k, v in result.items() if k != "teacher_samples"}
    out["rows"] = [{k: v for k, v in row.items() if k != "samples"} for row in result["rows"]]
    return out


def _merge(out_dir: Optional[str], fresh: dict, run_facts: dict, families: list[str]) -> dict:
    """The folder's earlier results with this run's families replaced (each family keeps its own run facts)."""
    previous = {}
    path = os.path.join(out_dir, "quality.json") if out_dir else None
    if path and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            previous = json.load(f)
        if previous.get("quick") != run_facts["quick"]:
            previous = {}  # never mix a --quick run with a full one
    samples = _read_samples(out_dir) if previous else {}
    merged_distilled = {k: v for k, v in previous.get("distilled", {}).items() if k not in fresh["distilled"]}
    for family, result in fresh["distilled"].items():
        merged_distilled[family] = {**_strip(result), "run": run_facts}
        samples[f"{family}.teacher"] = result["teacher_samples"][:1]
        for i, row in enumerate(result["rows"]):
            samples[f"{family}.{i}"] = row["samples"][:1]
    ran_free = {row["family"] for row in fresh["training_free"]}
    merged_free = [row for row in previous.get("training_free", []) if row["family"] not in ran_free]
    merged_free += [{**row, "run": run_facts} for row in fresh["training_free"]]
    order = ["pixart_sigma", "sd35_medium"]
    return {**run_facts, "families_run": families, "quick": run_facts["quick"],
            "distilled": dict(sorted(merged_distilled.items(), key=lambda kv: order.index(kv[0])
                                     if kv[0] in order else 9)),
            "training_free": merged_free, "_samples": samples}


def _read_samples(out_dir: Optional[str]) -> dict:
    path = os.path.join(out_dir, SAMPLES_FILE) if out_dir else None
    if not path or not os.path.isfile(path):
        return {}
    from safetensors.torch import load_file

    return {k: v.float() for k, v in load_file(path).items()}


def _write(out_dir: str, result: dict) -> None:
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    samples = result["_samples"]
    save_file({k: v.to(torch.float16).contiguous() for k, v in samples.items()}, os.path.join(out_dir, SAMPLES_FILE))
    with open(os.path.join(out_dir, "quality.json"), "w", encoding="utf-8") as f:
        json.dump({k: v for k, v in result.items() if k != "_samples"}, f, indent=1)
    figures = _with_samples(result)
    if figures:
        try:
            from .figure import draw

            draw(figures, os.path.join(out_dir, "quality.png"))
            result["figure"] = "quality.png"
        except ImportError:  # matplotlib is optional
            pass
    with open(os.path.join(out_dir, "QUALITY.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(report_lines(result)) + "\n")


def _with_samples(result: dict) -> list[dict]:
    samples, out = result["_samples"], []
    for family, res in result["distilled"].items():
        if f"{family}.teacher" not in samples:
            continue
        rows = [{**row, "samples": samples.get(f"{family}.{i}", samples[f"{family}.teacher"])}
                for i, row in enumerate(res["rows"])]
        out.append({**res, "rows": rows, "teacher_samples": samples[f"{family}.teacher"]})
    return out


# ---------------------------------------------------------------------------------------------- report

def report_lines(result: dict) -> list[str]:
    from ..families import get_family

    steps = sorted({res["budget"]["steps"] for res in result["distilled"].values()})
    budget = f" --steps {steps[0]}" if len(steps) == 1 and steps[0] != distilled.Budget().steps else ""
    budget = " --quick" if result["quick"] else budget
    lines = ["# Quality against trained tiny teachers", "",
             f"Regenerate: `python -m edit_core quality --out bench{budget}` (both parts, both teachers; "
             f"`--families`, `--parts`, `--steps` to run less). "
             f"{'This is a --quick run: its numbers mean nothing. ' if result['quick'] else ''}"
             "Teachers: `edit_core/data/tiny_teachers/` (PixArt-Σ and SD3.5-M layouts trained on CPU on crops of "
             "scikit-image's photos; their attention is local — see the README there). Errors are relative, "
             "‖student − teacher‖ / ‖teacher‖ on the held-out noisy crops, timesteps spread over the whole range.", ""]
    if result["distilled"]:
        lines += ["## Distilled variants (the default `distill` recipe, one budget and seed)", "",
                  "Each student was made by `python -m edit_core distill` with its defaults (`edit_core/distill/"
                  "recipe.py`), the budget below, `--variant`, and the tiny teacher's facts: `--guidance 1 "
                  "--uncond-prob 0`, 256 px (32×32 latents), `--flow-shift 1` for the SD3.5-layout teacher (it was "
                  "trained that way). Training data (`--latents`): random 32×32 crops of the teacher's own training "
                  f"photos, crop seed {distilled.CROP_SEED}. *output error*: the model output; *denoising loss*: MSE "
                  "to the true target, teacher → student; *layers*: the attention output of each converted layer on "
                  "the teacher's own layer input (mean, worst); *sample error*: latents sampled from the same noise "
                  "(deterministic, 20 steps) vs the teacher's, next to *other noise* (teacher samples from different "
                  "noise: the scale of a different picture).", ""]
        if result.get("figure"):
            lines += ["![quality](quality.png)", ""]
        for family, res in result["distilled"].items():
            b, run = res["budget"], res["run"]
            lines += [f"### {get_family(family).title} layout", "",
                      f"Budget: {b['steps']} steps × batch {b['batch']}, seed {b['seed']}; measured {run['date']} on "
                      f"{run['device']}, torch {run['torch']}, {run['minutes']} min for this family. Teacher's "
                      f"denoising loss {res['teacher_loss']:.4f}; other noise: sample error "
                      f"{res['unrelated_sample_error']:.3f}.", "",
                      "| student | kind | output error | denoising loss | layers (mean / worst) | sample error | "
                      "trained tensors | minutes |", "|---|---|---|---|---|---|---|---|"]
            for row in res["rows"]:
                layers = row.get("layer_errors") or {}
                layer_text = (f"{sum(layers.values()) / len(layers):.3f} / {max(layers.values()):.3f}"
                              if layers else "—")
                name = f"**{row['variant']}** (default)" if row.get("default") else row["variant"]
                minutes = f"{row['seconds'] / 60:.1f}" if "seconds" in row else "—"
                tensors = f"{row['trained_tensors']:,}" if "trained_tensors" in row else "—"
                lines.append(f"| {name} | {row['kind']} | {row['output_error']:.4f} | "
                             f"{res['teacher_loss']:.4f} → {row['student_loss']:.4f} | {layer_text} | "
                             f"{row['sample_error']:.3f} | {tensors} | {minutes} |")
            by_t = [row for row in res["rows"] if row.get("error_by_t")]
            if by_t:
                ranges = list(by_t[0]["error_by_t"])
                lines += ["", "Output error by timestep (t in the model's units; 0 is the cleanest input):", "",
                          "| student | kind | " + " | ".join(f"t {r}" for r in ranges) + " |",
                          "|---|---|" + "---|" * len(ranges)]
                for row in by_t:
                    lines.append(f"| {row['variant']} | {row['kind']} | "
                                 + " | ".join(f"{row['error_by_t'].get(r, float('nan')):.4f}" for r in ranges) + " |")
            curves = [row for row in res["rows"] if row.get("curve")]
            if curves:
                steps = [s for s, _ in curves[0]["curve"]]
                marks = sorted({steps[min(len(steps) - 1, round(f * (len(steps) - 1)))]
                                for f in (0, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0)})
                lines += ["", "Output error while training:", "",
                          "| student | " + " | ".join(f"step {s}" for s in marks) + " |",
                          "|---|" + "---|" * len(marks)]
                for row in curves:
                    by_step = dict((int(s), e) for s, e in row["curve"])
                    lines.append(f"| {row['variant']} | " + " | ".join(f"{by_step[s]:.4f}" for s in marks) + " |")
            lines.append("")
    if result["training_free"]:
        run = result["training_free"][-1].get("run", result)
        lines += ["## Training-free KV pooling (no training)", "",
                  f"Measured {run['date']} on {run['device']}. *sample error* here: compression on only in the given "
                  "part of sampling.", "", *training_free.markdown(result["training_free"])]
    return lines


__all__ = ["run", "report_lines", "distilled", "training_free"]
