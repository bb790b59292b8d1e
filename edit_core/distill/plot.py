"""The loss curve of a distillation run: a PNG from its JSONL log, or pixels for a host's preview (the
ComfyUI node). matplotlib is imported lazily and drawn through its Agg canvas, so no GUI backend and no
global matplotlib state is touched."""

from __future__ import annotations

import json
import os
from typing import Optional

import torch

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


def _series(entries: list[dict], key: str) -> list[tuple[int, float]]:
    """(step, value) of every entry with a positive ``key`` (a log axis cannot show zero)."""
    return [(int(e["step"]), float(e[key])) for e in entries if e.get(key) and float(e[key]) > 0]


def loss_curve_figure(entries: list[dict], title: str, size: tuple[int, int] = (800, 450),
                      curves=LOSS_KEYS, learning_rate: bool = True):
    """The ``curves`` (key, label) over the steps on a log axis, and with ``learning_rate`` the logged
    learning rate on a second axis: a matplotlib ``Figure`` of ``size`` pixels on its own Agg canvas.
    ImportError without matplotlib."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    figure = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    drawn = False
    for key, label in curves:
        values = _series(entries, key)
        if values:
            axes.plot([v[0] for v in values], [v[1] for v in values], label=label, linewidth=1.2)
            drawn = True
    if drawn:
        axes.set_yscale("log")
        axes.legend(loc="best")
    else:
        axes.text(0.5, 0.5, "no training step yet", ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel("step")
    axes.set_ylabel("loss (MSE)")
    axes.grid(True, which="both", alpha=0.3)
    lr = [(e["step"], e["lr"]) for e in entries if "step" in e and "lr" in e]
    if learning_rate and lr:
        twin = axes.twinx()
        twin.plot([v[0] for v in lr], [v[1] for v in lr], color="grey", linestyle=":", linewidth=1.0)
        twin.set_ylabel("learning rate", color="grey")
    axes.set_title(title)
    figure.tight_layout()
    return figure


def loss_curve_pixels(entries: list[dict], title: str, size: tuple[int, int] = (800, 450), curves=LOSS_KEYS,
                      learning_rate: bool = True) -> torch.Tensor:
    """``loss_curve_figure`` rendered: uint8 RGB [H, W, 3]. ImportError without matplotlib."""
    canvas = loss_curve_figure(entries, title, size, curves, learning_rate).canvas
    canvas.draw()
    width, height = canvas.get_width_height()
    rgba = torch.frombuffer(bytearray(canvas.buffer_rgba()), dtype=torch.uint8)
    return rgba.reshape(int(height), int(width), 4)[..., :3]


def plot_losses(log_path: str, png_path: str, title: Optional[str] = None) -> Optional[str]:
    """Draw the losses (log scale) and the learning rate; returns the PNG path, or None without
    matplotlib or without any logged step."""
    entries = [e for e in read_log(log_path) if "step" in e]
    if not entries:
        return None
    try:
        figure = loss_curve_figure(entries, title or "EDiT distillation")
    except ImportError:
        return None
    tmp = png_path + ".tmp.png"
    figure.savefig(tmp, format="png")
    os.replace(tmp, png_path)
    return png_path


__all__ = ["plot_losses", "loss_curve_figure", "loss_curve_pixels", "read_log", "LOSS_KEYS"]
