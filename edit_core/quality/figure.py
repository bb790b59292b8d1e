"""``bench/quality.png``: per family, a bar chart of every student's output error, the output error while
training, and the samples the teacher and each student generate from the same noise. matplotlib's Agg canvas
(no GUI backend, no global state)."""

from __future__ import annotations

from typing import Optional

import torch

from ..tiny_teachers import teacher_facts


def to_rgb(latents: torch.Tensor, family: str) -> torch.Tensor:
    """The tiny teachers' latents are standardised R, G, B, gray: undo the standardisation, keep RGB, [N, H, W, 3]
    in 0..1."""
    data = teacher_facts(family)["data"]
    mean = torch.tensor(data["mean"][:3]).view(1, 3, 1, 1)
    std = torch.tensor(data["std"][:3]).view(1, 3, 1, 1)
    return (latents[:, :3].float() * std + mean).clamp(0, 1).permute(0, 2, 3, 1)


def _label(row: dict) -> str:
    return row["variant"] if row["kind"] == "distilled" else f"{row['variant']}\n({row['kind']})"


def draw(results: list[dict], path: str, title: Optional[str] = None) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    families = len(results)
    fig = Figure(figsize=(12, 5.6 * families), dpi=100)
    FigureCanvasAgg(fig)
    outer = fig.add_gridspec(2 * families, 1, height_ratios=[3.2, 1.6] * families, hspace=0.45)
    for i, result in enumerate(results):
        family, rows = result["family"], result["rows"]
        top = outer[2 * i].subgridspec(1, 2, width_ratios=[1.15, 1.0], wspace=0.3)
        bars = fig.add_subplot(top[0, 0])
        labels = [_label(r) for r in rows]
        values = [r["output_error"] for r in rows]
        colours = ["#999999" if r["kind"] != "distilled" else ("#d62728" if r.get("default") else "#1f77b4")
                   for r in rows]
        bars.barh(range(len(rows)), values, color=colours)
        bars.set_yticks(range(len(rows)), labels, fontsize=7)
        bars.invert_yaxis()
        for j, v in enumerate(values):
            bars.text(v, j, f" {v:.3f}", va="center", fontsize=7)
        bars.set_xlabel("output error vs teacher (held-out)", fontsize=8)
        bars.set_title(f"{family}: {result['budget']['steps']} steps × {result['budget']['batch']}", fontsize=9)
        bars.set_xlim(0, max(values) * 1.3)

        curves = fig.add_subplot(top[0, 1])
        for r in rows:
            if r.get("curve"):
                steps, errors = zip(*r["curve"])
                curves.plot(steps, errors, label=r["variant"], linewidth=1.2)
        curves.set_yscale("log")
        curves.set_xlabel("step", fontsize=8)
        curves.set_title("output error while training", fontsize=9)
        curves.set_ylabel("output error", fontsize=8)
        curves.grid(True, which="both", alpha=0.3)
        curves.legend(fontsize=6)
        curves.tick_params(labelsize=7)

        pictures = [("teacher", result["teacher_samples"])] + [(_label(r).replace("\n", " "), r["samples"])
                                                               for r in rows]
        strip = outer[2 * i + 1].subgridspec(1, max(8, len(pictures)), wspace=0.08)
        for j, (name, latents) in enumerate(pictures):
            ax = fig.add_subplot(strip[0, j])
            rgb = to_rgb(latents[:1], family)[0]
            ax.imshow(rgb.numpy(), interpolation="nearest")
            ax.set_title(name.replace(" (", "\n("), fontsize=6)
            ax.axis("off")
    fig.suptitle(title or "EDiT and the paper's baselines distilled from the tiny trained teachers "
                          "(samples: same noise, first sample)", fontsize=11)
    fig.subplots_adjust(left=0.12, right=0.98, top=1 - 0.6 / (5.6 * families), bottom=0.03)  # 0.6 in for the title
    fig.savefig(path)
    return path


__all__ = ["draw", "to_rgb"]
