"""Latency benchmark: the softmax teacher and EDiT side by side, in one process, on the same inputs
(``python -m edit_core bench``).

- ``config``: settings, defaults, parsing and checks (``BenchConfig``, ``Shapes``, the benchmarked families).
- ``teachers``: the random softmax teacher layers of the layer sections and EDiT built on their weights.
- ``models``: whole random-weight diffusers transformers for the ``model`` section, their inputs and FLOPs.
- ``measure`` / ``planning`` / ``references``: how calls are timed, which cases run, device references.
- ``sections``: the sections and ``run_benchmark``; ``results`` / ``report``: rows, JSON, text, markdown, plot.
"""

from .config import (BANDWIDTH_TOKENS, DEFAULT_SECTIONS, FAMILIES, FULL_SHAPES, MODEL_RESOLUTIONS, SECTION_ORDER,
                     TINY_BANDWIDTH_TOKENS, TINY_RESOLUTIONS, TINY_SHAPES, BenchConfig, BenchError, default_repeats,
                     family_sections, parse_families, parse_resolutions, parse_tokens, validate)
from .measure import measure_interleaved
from .models import ProcessorSwitch, build_random_model, model_config, model_flops, model_inputs
from .planning import timing_problem
from .report import report_lines, require_matplotlib, write_json, write_markdown, write_plot
from .results import BenchResults
from .sections import run_benchmark

__all__ = ["BenchConfig", "BenchError", "BenchResults", "run_benchmark", "report_lines", "write_json",
           "write_markdown", "write_plot", "require_matplotlib", "validate", "default_repeats", "parse_tokens",
           "parse_resolutions", "parse_families", "family_sections", "FAMILIES", "SECTION_ORDER", "DEFAULT_SECTIONS",
           "FULL_SHAPES", "TINY_SHAPES", "BANDWIDTH_TOKENS", "TINY_BANDWIDTH_TOKENS", "MODEL_RESOLUTIONS",
           "TINY_RESOLUTIONS", "measure_interleaved", "timing_problem", "model_config", "model_flops",
           "build_random_model", "model_inputs", "ProcessorSwitch"]
