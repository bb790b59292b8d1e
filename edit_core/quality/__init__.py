"""Measured quality against trained tiny teachers (``edit_core.tiny_teachers``): ``training_free`` for the
training-free KV compression. ``run`` evaluates and writes ``QUALITY.md`` and ``quality.json``."""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Callable, Optional, Sequence

import torch

from . import training_free

QUICK = dict(items=16, sample_items=2, steps=6)
QUICK_SETTINGS = (training_free.Setting(2), training_free.Setting(2, percent=(0.5, 1.0)))


def run(families: Sequence[str], out_dir: Optional[str], *, quick: bool = False,
        log: Callable[[str], None] = print) -> dict:
    from ..families import get_family

    started = time.perf_counter()
    options = QUICK if quick else {}
    settings = QUICK_SETTINGS if quick else training_free.DEFAULT_SETTINGS
    rows = []
    for family in families:
        rows += training_free.evaluate(get_family(family).name, settings, log=log, **options)
    minutes = (time.perf_counter() - started) / 60
    result = {"date": time.strftime("%Y-%m-%d"), "device": f"cpu ({platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} threads)", "torch": torch.__version__, "quick": quick,
              "minutes": round(minutes, 2), "training_free": rows}
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "quality.json"), "w") as f:
            json.dump(result, f, indent=1)
        with open(os.path.join(out_dir, "QUALITY.md"), "w") as f:
            f.write("\n".join(report_lines(result)) + "\n")
    return result


def report_lines(result: dict) -> list[str]:
    return ["# Quality against trained tiny teachers", "",
            f"Measured {result['date']} on {result['device']}, torch {result['torch']}, in {result['minutes']} min"
            f"{' (--quick)' if result['quick'] else ''}. Regenerate: `python -m edit_core quality --out bench`.", "",
            "Teachers: `edit_core/data/tiny_teachers/` (PixArt-Σ and SD3.5-M layouts trained on CPU on crops of "
            "scikit-image's photos; their attention is local — see the README there). Errors are relative, "
            "‖student − teacher‖ / ‖teacher‖: *output error* on the held-out noisy crops, timesteps spread over "
            "the whole range; *sample error* on clean latents after 20-step deterministic sampling from the same "
            "noise, compression on only in the given part of sampling.", "",
            "## Training-free KV compression (no training)", "", *training_free.markdown(result["training_free"])]


__all__ = ["run", "report_lines", "training_free"]
