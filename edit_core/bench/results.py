"""Finished measurements: one ``Row`` per section, size and backend, and ``BenchResults`` with the run's
settings, environment and device references, to and from the JSON that ``bench --json`` writes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import torch

from ..families import get_family
from .config import (BANDWIDTH_TOKENS, LAYER_SECTIONS, DEFAULT_TOKENS, FAMILIES, FULL_SHAPES, MODEL_RESOLUTIONS,
                     SECTION_ORDER, BenchConfig, BenchError, Shapes)
from .measure import Timing
from .models import model_config
from .titles import section_titles


@dataclass
class Row:
    section: str
    tokens: int
    grid: str
    backend: str
    teacher: Timing
    edit: Timing
    family: Optional[str] = None
    """``op-bw``, ``model``: the family's canonical name, e.g. "pixart_sigma"."""
    heads: Optional[str] = None
    """``op-bw``: heads × head dim, e.g. "16x72"."""
    resolution: Optional[int] = None
    """``model``: the square image size in pixels."""
    edit_bytes: Optional[int] = None
    """``op-bw``: the bytes linear attention must move: read q [B,H,N,D], k, v [B,H,M,D], write out [B,H,N,D]."""
    teacher_flops: Optional[int] = None
    edit_flops: Optional[int] = None

    @property
    def speedup(self) -> Optional[float]:
        if self.teacher.median_s and self.edit.median_s:
            return self.teacher.median_s / self.edit.median_s
        return None

    @property
    def edit_gbps(self) -> Optional[float]:
        if self.edit_bytes and self.edit.median_s:
            return self.edit_bytes / self.edit.median_s / 1e9
        return None

    @property
    def teacher_tflops(self) -> Optional[float]:
        return self.teacher_flops / self.teacher.median_s / 1e12 if self.teacher_flops and self.teacher.median_s else None

    @property
    def edit_tflops(self) -> Optional[float]:
        return self.edit_flops / self.edit.median_s / 1e12 if self.edit_flops and self.edit.median_s else None


def percent(value: Optional[float], reference: Optional[float]) -> Optional[float]:
    return 100.0 * value / reference if value and reference else None


_ROW_FIELDS = ("family", "heads", "resolution", "edit_bytes", "teacher_flops", "edit_flops")


def _row_from_json(data: dict) -> Row:
    extra = {name: data.get(name) for name in _ROW_FIELDS}
    if extra["family"]:  # files from before the family registry say "pixart" / "sd35"
        extra["family"] = get_family(extra["family"]).name
    return Row(data["section"], data["tokens"], data["grid"], data["backend"], Timing(**data["teacher"]),
               Timing(**data["edit"]), **extra)


@dataclass
class BenchResults:
    config: BenchConfig
    environment: dict
    rows: list[Row] = field(default_factory=list)
    total_seconds: float = 0.0
    references: dict = field(default_factory=dict)
    """Measured device references: copy bandwidth (``op-bw``) and matmul peak (``model``)."""

    @classmethod
    def from_json(cls, data: dict) -> "BenchResults":
        """Results written by ``write_json`` (to print, plot or write markdown again without re-running)."""
        try:
            standard = sorted({r["tokens"] for r in data["rows"] if r["section"] in LAYER_SECTIONS})
            shapes = Shapes(**data["shapes"])
            config = BenchConfig(
                device=data["device"]["type"], dtype=data["dtype"],
                tokens=tuple(data.get("tokens") or standard or DEFAULT_TOKENS), warmup=data["warmup"],
                repeats=data["repeats"], backends=tuple(data["backends"]), budget_seconds=data["budget_seconds"],
                sections=tuple(s for s in SECTION_ORDER if s in data["sections"]), batch=data["batch"],
                shapes=shapes, command=data.get("command", ""),
                families=tuple(get_family(f).name for f in data.get("families", FAMILIES)),  # old files: "pixart"
                bandwidth_tokens=tuple(data.get("bandwidth_tokens", BANDWIDTH_TOKENS)),
                resolutions=tuple(data.get("resolutions", MODEL_RESOLUTIONS)),
                case_seconds=data.get("case_seconds", BenchConfig.case_seconds),
                tiny=data.get("tiny", shapes != FULL_SHAPES))
            environment = {"date": data["date"], "device": data["device"], "memory_method": data["memory_method"],
                           "torch": data.get("torch", "?"), "load_average": data.get("load_average"),
                           "load_average_end": data.get("load_average_end")}
            rows = [_row_from_json(r) for r in data["rows"]]
        except (KeyError, TypeError, ValueError) as e:
            raise BenchError(f"not a results file written by 'bench --json' ({type(e).__name__}: {e})") from None
        return cls(config, environment, rows, data.get("total_seconds", 0.0), data.get("references") or {})

    def to_json(self) -> dict:
        c, refs = self.config, self.references
        device_name = self.environment["device"]["name"]
        data = {
            "benchmark": "python -m edit_core bench",
            "command": c.command,
            "date": self.environment["date"],
            "device": self.environment["device"],
            "torch": self.environment.get("torch", torch.__version__),
            "dtype": c.dtype,
            "batch": c.batch,
            "warmup": c.warmup,
            "repeats": c.repeats,
            "case_seconds": c.case_seconds,
            "budget_seconds": c.budget_seconds,
            "backends": list(c.backends),
            "families": list(c.families),
            "tokens": list(c.tokens),
            "bandwidth_tokens": list(c.bandwidth_tokens),
            "resolutions": list(c.resolutions),
            "tiny": c.tiny,
            "shapes": asdict(c.shapes),
            "sections": {name: section_titles(c.shapes, c.tiny)[name] for name in c.sections},
            "references": refs,
            "memory_method": self.environment["memory_method"],
            "load_average": self.environment.get("load_average"),
            "load_average_end": self.environment.get("load_average_end"),
            "total_seconds": round(self.total_seconds, 3),
            "rows": [],
        }
        if "model" in c.sections:
            data["models"] = {family: model_config(family, c.tiny) for family in c.families}
        for r in self.rows:
            row = {"section": r.section, "device": device_name, "tokens": r.tokens, "grid": r.grid,
                   "backend": r.backend, "teacher": asdict(r.teacher), "edit": asdict(r.edit), "speedup": r.speedup}
            row.update({name: getattr(r, name) for name in _ROW_FIELDS})
            row.update({"edit_gbps": r.edit_gbps, "copy_percent": percent(r.edit_gbps, refs.get("copy_gbps")),
                        "teacher_tflops": r.teacher_tflops, "edit_tflops": r.edit_tflops,
                        "peak_percent": percent(r.edit_tflops, refs.get("matmul_tflops"))})
            data["rows"].append(row)
        return data


__all__ = ["Row", "BenchResults", "percent"]
