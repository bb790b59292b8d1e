"""The report of finished results: the printed text tables, markdown, JSON and the latency plot.

Every section is one table (columns per section kind); ``op-bw`` and ``model`` rows name their family by
its ``short_title``. ``run_benchmark`` prints the same lines as rows finish; ``report_lines`` reprints them
from saved results.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Optional

import torch

from ..families import get_family
from .config import (LAYER_SECTIONS, TRAINING_FREE_SECTIONS, FULL_SHAPES, LONG_CALL_SECONDS, MIN_TIMED_CALLS, SECTION_ORDER, BenchConfig,
                     BenchError)
from .environment import describe_device
from .results import BenchResults, Row, percent
from .titles import section_titles


def report_lines(results: BenchResults) -> list[str]:
    """The whole printed report of finished results (what ``run_benchmark`` logs as it goes)."""
    lines = header_lines(results)
    for section in [s for s in SECTION_ORDER if s in results.config.sections]:
        lines += section_lines(results, section)
        lines += [format_row(r, results.references) for r in results.rows if r.section == section]
    return lines + [""] + footer_lines(results)


def format_seconds(seconds: Optional[float]) -> str:
    if seconds is None:
        return "—"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"


def format_bytes(n: Optional[int]) -> str:
    if n is None:
        return "—"
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.1f} MiB"


def _format_number(value: Optional[float]) -> str:
    """Three significant figures or so: 1234 → "1234", 56.78 → "56.8", 0.1234 → "0.12"."""
    if value is None:
        return "—"
    digits = 0 if value >= 100 else 1 if value >= 10 else 2
    return f"{value:.{digits}f}"


def _format_percent(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.0f}%" if value >= 10 else f"{value:.1f}%"


_COLUMNS = (("tokens", 7), ("grid", 9), ("backend", 8), ("teacher", 10), ("EDiT", 10), ("speed-up", 9),
            ("teacher mem", 12), ("EDiT mem", 10))
_BANDWIDTH_COLUMNS = (("model", 8), ("heads", 6), ("tokens", 7), ("grid", 9), ("backend", 8), ("SDPA", 10), ("lin-attn", 10),
                      ("speed-up", 9), ("GB/s", 7), ("% copy", 7), ("SDPA TFLOP/s", 13), ("lin-attn mem", 13))
_MODEL_COLUMNS = (("model", 8), ("image", 11), ("tokens", 7), ("backend", 8), ("SDPA", 10), ("EDiT", 10),
                  ("speed-up", 9), ("SDPA TFLOP/s", 13), ("EDiT TFLOP/s", 13), ("% peak", 7), ("SDPA mem", 10),
                  ("EDiT mem", 10))


_MEMORY_COLUMNS = (("model", 8), ("layer", 6), ("tokens", 7), ("grid", 9), ("backend", 8), ("EDiT mem", 10),
                   ("per token", 10), ("time", 9))
_TRAINING_FREE_COLUMNS = tuple((name.replace("EDiT", "KV-comp"), width + (3 if "EDiT" in name else 0))
                               for name, width in _COLUMNS)
_TEXT_COLUMNS = ("model", "layer", "backend", "notes")


def _columns(section: str) -> tuple[tuple[str, int], ...]:
    if section in TRAINING_FREE_SECTIONS:
        return _TRAINING_FREE_COLUMNS
    return {"op-bw": _BANDWIDTH_COLUMNS, "model": _MODEL_COLUMNS, "memory": _MEMORY_COLUMNS}.get(section, _COLUMNS)


def table_header(section: str = "op") -> str:
    return " ".join(f"{name:>{width}}" for name, width in _columns(section))


def _model_name(row: Row) -> str:
    return get_family(row.family).short_title if row.family else ""


def _cells(row: Row, references: dict) -> list[str]:
    speedup = "—" if row.speedup is None else f"{row.speedup:.1f}×"
    teacher, edit = format_seconds(row.teacher.median_s), format_seconds(row.edit.median_s)
    if row.section == "op-bw":
        return [_model_name(row), (row.heads or "").replace("x", "×"), str(row.tokens), row.grid.replace("x", "×"),
                row.backend, teacher, edit, speedup, _format_number(row.edit_gbps),
                _format_percent(percent(row.edit_gbps, references.get("copy_gbps"))),
                _format_number(row.teacher_tflops), format_bytes(row.edit.peak_bytes)]
    if row.section == "memory":
        peak = row.edit.peak_bytes
        return [_model_name(row), "joint" if get_family(row.family).joint else "self", str(row.tokens),
                row.grid.replace("x", "×"), row.backend, format_bytes(peak),
                "—" if peak is None else f"{peak / row.tokens / 1024:.1f} KiB", edit]
    if row.section == "model":
        return [_model_name(row), f"{row.resolution}²", str(row.tokens), row.backend, teacher, edit, speedup,
                _format_number(row.teacher_tflops), _format_number(row.edit_tflops),
                _format_percent(percent(row.edit_tflops, references.get("matmul_tflops"))),
                format_bytes(row.teacher.peak_bytes), format_bytes(row.edit.peak_bytes)]
    return [str(row.tokens), row.grid.replace("x", "×"), row.backend, teacher, edit, speedup,
            format_bytes(row.teacher.peak_bytes), format_bytes(row.edit.peak_bytes)]


def _notes(row: Row) -> str:
    if row.section == "memory":  # no teacher by design
        return f"skipped: {row.edit.skipped}" if row.edit.skipped else ""
    teacher = "teacher" if row.section in LAYER_SECTIONS else "SDPA"
    if row.teacher.skipped and row.teacher.skipped == row.edit.skipped:
        return f"skipped: {row.teacher.skipped}"
    return "; ".join(f"{who} skipped: {t.skipped}" for who, t in ((teacher, row.teacher), ("EDiT", row.edit))
                     if t.skipped)


def format_row(row: Row, references: Optional[dict] = None) -> str:
    columns = _columns(row.section)
    line = " ".join(f"{cell:>{width}}" for cell, (_, width) in zip(_cells(row, references or {}), columns))
    notes = _notes(row)
    return line + (f"   ({notes})" if notes else "")


def _timing_text(config: BenchConfig) -> str:
    """How many calls are timed, as ``planning.call_counts`` decides: only the clauses that can apply."""
    rules = []
    if config.warmup > 0:
        rules.append(f"no warm-up where a call is estimated > {LONG_CALL_SECONDS:g} s")
    if config.repeats > MIN_TIMED_CALLS:  # at or below it the time cap never cuts a call
        rules.append(f"at most {config.case_seconds:g} s of timed calls per contender and case, never fewer "
                     f"than {MIN_TIMED_CALLS} calls")
    text = f"median of {config.repeats} after {config.warmup} warm-up"
    return f"{text} ({'; '.join(rules)})" if rules else text


def _budget_text(config: BenchConfig) -> str:
    return (f"a case is skipped when its time per call extrapolated from the previous sizes (teacher a·N + b·N², "
            f"EDiT ∝ N; model: by the FLOP ratio, or FLOPs / matmul peak at the first) exceeds "
            f"{config.budget_seconds:g} s")


def header_lines(results: BenchResults) -> list[str]:
    c, env = results.config, results.environment
    lines = [f"EDiT latency benchmark — {env['date']}",
             f"device: {describe_device(env)}; torch {env.get('torch', torch.__version__)}; {c.dtype}; batch {c.batch}",
             f"timing: {_timing_text(c)}; speed-up = teacher time / EDiT time",
             f"budget: {_budget_text(c)}"]
    if c.command:
        lines.insert(1, f"command: {c.command}")
    if c.shapes != FULL_SHAPES or c.tiny:
        lines.append(f"shapes: {asdict(c.shapes)} (NOT the real model widths)")
    load = env.get("load_average")
    if c.device == "cpu" and load and load[0] > env["device"]["torch_threads"]:
        lines.append(f"warning: load average {load[0]} exceeds the {env['device']['torch_threads']} torch threads; "
                     "other processes are competing for the CPU and timings are noisy")
    return lines


def reference_lines(results: BenchResults, section: str) -> list[str]:
    """The measured references a section's percentages use ("copy bandwidth X GB/s", "matmul peak X TFLOP/s")."""
    refs, lines = results.references, []
    if section == "op-bw":
        if refs.get("copy_gbps"):
            lines.append(f"copy bandwidth {_format_number(refs['copy_gbps'])} GB/s ({refs['copy_method']}); "
                         "% copy = the op's GB/s / this")
        timer = refs.get("op_bw_timer")
        if timer == "triton.testing.do_bench":
            lines.append("timing: triton.testing.do_bench median per contender (25 ms warm-up, ≥ 100 ms and ≥ "
                         f"{MIN_TIMED_CALLS} timed calls, L2 flushed before each), after one untimed call")
    if section == "model" and refs.get("matmul_tflops"):
        lines.append(f"matmul peak {_format_number(refs['matmul_tflops'])} TFLOP/s ({refs['matmul_method']}); TFLOP/s = "
                     "model_flops() (2 per multiply-add of Linears, convs, attention products) / time; "
                     "% peak = EDiT's TFLOP/s / matmul peak")
    return lines


def section_lines(results: BenchResults, section: str) -> list[str]:
    """A section's preamble: blank line, title, references, column header."""
    title = section_titles(results.config.shapes, results.config.tiny)[section]
    return ["", f"[{title}]"] + reference_lines(results, section) + [table_header(section)]


def _summary_key(row: Row) -> str:
    return row.section if row.family is None else f"{row.section} {_model_name(row)}"


def footer_lines(results: BenchResults) -> list[str]:
    c = results.config
    load = results.environment.get("load_average_end")
    lines = [f"memory: {results.environment['memory_method']}.",
             "theoretical score-matrix sizes (B·H·N·N_keys, what a non-fused softmax would hold) are in the JSON "
             "output as teacher.theoretical_bytes.",
             f"total wall time {results.total_seconds:.0f} s"
             + (f"; load average (1/5/15 min) at start {results.environment['load_average']}, at end {load}"
                if load else "")]
    best = [r for r in results.rows if r.speedup is not None]
    if best:
        by_key: dict[str, Row] = {}
        for r in best:
            key = _summary_key(r)
            if key not in by_key or r.tokens > by_key[key].tokens:
                by_key[key] = r
        summary = ", ".join(f"{key} {r.speedup:.1f}× at " + (f"{r.resolution}² px" if r.resolution else str(r.tokens))
                            for key, r in by_key.items())
        lines.insert(0, f"largest measured size per section: {summary} ({c.dtype})")
    return lines


def markdown_lines(results: BenchResults) -> list[str]:
    """The report as a markdown section (device, date, command, then one table per section), ready to paste
    into bench/RESULTS.md or the README."""
    c, env = results.config, results.environment

    def escape(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [f"## {env['device']['name']} ({env['device']['type']}) — {env['date']}", "",
             "| | |", "|---|---|",
             f"| device | {escape(describe_device(env))} |",
             f"| torch, dtype, batch | {escape(str(env.get('torch', torch.__version__)))}, {c.dtype}, batch {c.batch} |",
             f"| date | {env['date']} (total wall time {results.total_seconds:.0f} s) |",
             f"| command | `{escape(c.command or 'python -m edit_core bench')}` |",
             f"| timing | {escape(_timing_text(c))} |",
             f"| budget | {escape(_budget_text(c))} |"]
    if c.shapes != FULL_SHAPES or c.tiny:
        lines.append("| shapes | **tiny: NOT the real model widths** |")
    for section in [s for s in SECTION_ORDER if s in c.sections]:
        names = [name for name, _ in _columns(section)] + ["notes"]
        lines += ["", f"### {escape(section_titles(c.shapes, c.tiny)[section])}", ""]
        refs = reference_lines(results, section)
        if refs:
            lines += [escape(line) + "  " for line in refs] + [""]
        lines += ["| " + " | ".join(names) + " |",
                  "|" + "|".join(":---" if name in _TEXT_COLUMNS else "---:" for name in names) + "|"]
        for row in (r for r in results.rows if r.section == section):
            cells = _cells(row, results.references) + [_notes(row)]
            lines.append("| " + " | ".join(escape(cell) for cell in cells) + " |")
    lines += [""] + [escape(line) + "  " for line in footer_lines(results)]
    return lines


def write_markdown(results: BenchResults, path: str) -> None:
    with open(path, "w") as f:
        f.write("\n".join(markdown_lines(results)) + "\n")


def write_json(results: BenchResults, path: str) -> None:
    with open(path, "w") as f:
        json.dump(results.to_json(), f, indent=2)
        f.write("\n")


def require_matplotlib():
    """Import matplotlib with the Agg backend, or raise BenchError saying how to install it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BenchError("--plot needs matplotlib: pip install matplotlib") from None
    return plt


def _plot_panels(results: BenchResults) -> list[tuple[str, Optional[str]]]:
    panels = []
    for section in [s for s in SECTION_ORDER if s in results.config.sections]:
        if section == "memory":  # no latency to plot
            continue
        if section in LAYER_SECTIONS:
            panels.append((section, None))
        else:
            panels += [(section, f) for f in results.config.families
                       if any(r.section == section and r.family == f for r in results.rows)]
    return panels


def write_plot(results: BenchResults, path: str) -> None:
    """Latency vs tokens, log-log, one panel per section (and family in op-bw / model): teacher solid, EDiT
    dashed per backend."""
    plt = require_matplotlib()
    c = results.config
    panels = _plot_panels(results)
    cols = 2 if len(panels) > 1 else 1
    rows_n = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(6.2 * cols, 4.2 * rows_n), squeeze=False)
    titles = section_titles(c.shapes, c.tiny)
    for ax, (section, family) in zip(axes.flat, panels):
        rows = [r for r in results.rows if r.section == section and r.family == family]
        teacher = sorted({(r.tokens, r.teacher.median_s) for r in rows if r.teacher.median_s})
        if teacher:
            ax.plot(*zip(*teacher), "o-", color="tab:red", label="softmax (teacher)")
        for i, backend in enumerate(c.backends):
            edit = [(r.tokens, r.edit.median_s) for r in rows if r.backend == backend and r.edit.median_s]
            if edit:
                ax.plot(*zip(*edit), "s--", color=("tab:blue", "tab:green", "tab:purple")[i % 3],
                        label=f"EDiT ({backend})")
        for r in rows:
            if r.speedup and r.backend == c.backends[0]:
                ax.annotate(f"{r.speedup:.1f}×", (r.tokens, r.edit.median_s), textcoords="offset points",
                            xytext=(0, 7), ha="center", fontsize=8, color="tab:blue")
        ticks = sorted({r.tokens for r in rows})
        ax.set_xscale("log", base=2)
        ax.margins(x=0.08, y=0.12)
        ax.set_yscale("log")
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.set_xlabel("image tokens N")
        ax.set_ylabel("seconds per call (median)")
        if family:
            what = {"op-bw": "linear_attention op vs SDPA", "model": "one transformer forward"}[section]
            ax.set_title(f"{section} {get_family(family).short_title}: {what}", fontsize=9)
        else:
            name, rest = titles[section].split(":", 1)
            ax.set_title(name + ": " + rest.split(",")[0].strip(), fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    env = results.environment
    fig.suptitle(f"EDiT vs softmax latency — {describe_device(env)}, torch {env.get('torch', torch.__version__)}, "
                 f"{c.dtype}, batch {c.batch}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["report_lines", "header_lines", "section_lines", "footer_lines", "format_row", "table_header",
           "format_seconds", "format_bytes", "markdown_lines", "write_markdown", "write_json", "require_matplotlib",
           "write_plot"]
