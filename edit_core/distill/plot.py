"""The loss curve of a distillation run (PNG), from its JSONL log. matplotlib is imported lazily and
drawn through its Agg canvas, so no GUI backend and no global matplotlib state is touched."""

from __future__ import annotations

import json
import os
from typing import Optional

LOSS_KEYS = (("loss", "total"), ("loss_feature", "attention layers"), ("loss_kd", "output KD"),
             ("loss_task", "task"))


def read_log(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    entries = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
    return entries


def plot_losses(log_path: str, png_path: str, title: Optional[str] = None) -> Optional[str]:
    """Draw the losses (log scale) and the learning rate; returns the PNG path, or None without
    matplotlib or without any logged step."""
    entries = [e for e in read_log(log_path) if "step" in e]
    if not entries:
        return None
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    figure = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    steps = [e["step"] for e in entries]
    for key, label in LOSS_KEYS:
        values = [(s, e[key]) for s, e in zip(steps, entries) if e.get(key) not in (None, 0)]
        if values:
            axes.plot([v[0] for v in values], [v[1] for v in values], label=label, linewidth=1.2)
    axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel("loss (MSE)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="best")
    lr = [(s, e["lr"]) for s, e in zip(steps, entries) if "lr" in e]
    if lr:
        twin = axes.twinx()
        twin.plot([v[0] for v in lr], [v[1] for v in lr], color="grey", linestyle=":", linewidth=1.0)
        twin.set_ylabel("learning rate", color="grey")
    axes.set_title(title or "EDiT distillation")
    figure.tight_layout()
    tmp = png_path + ".tmp.png"
    figure.savefig(tmp, format="png")
    os.replace(tmp, png_path)
    return png_path


__all__ = ["plot_losses", "read_log"]
