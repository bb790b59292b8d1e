"""The benchmark's sections and ``run_benchmark``: the softmax teacher and EDiT side by side, in one process,
on the same inputs.

Sections (each at every token count N, on a square h×w = N token grid, batch 1 by default):

- ``op``: ``scaled_dot_product_attention(q, k, v)`` over N tokens vs ``linear_attention`` over the
  compressed keys/values (M = ⌈h/2⌉·⌈w/2⌉ ≈ N/4), PixArt-Σ heads (16 × 72).
- ``layer``: a PixArt-Σ self-attention (width 1152, 16 × 72): fused qkv Linear + SDPA + out projection,
  vs ``EDiTSelfAttention`` (ConvFusion + projections + spatial compressors + linear attention + out).
- ``joint``: an SD3.5-Medium joint attention (width 1536, 24 × 64, RMS qk-norm, 154 text tokens): one
  SDPA over [text; image] vs ``MMEDiTJointAttention`` (the MM-EDiT hybrid).
- ``block``: a full-width PixArt-Σ transformer block (adaLN-single modulation, self-attention,
  cross-attention to 120 caption tokens, 4× GELU MLP) with softmax vs EDiT self-attention.

Run only when asked (``--sections memory,op-bw,model``); op-bw and model with their own size lists:

- ``op-bw``: the same op comparison at 4096…262144 tokens for each family's heads (PixArt-Σ 16 × 72,
  SD3.5-M 24 × 64), with the linear-attention op's effective bandwidth: the bytes it must move (read q, k,
  v, write out; the D×D state is negligible) over its time, against a measured copy bandwidth.
- ``memory``: the peak memory of one EDiT call of the ``layer`` (PixArt-Σ) and ``joint`` (SD3.5-M) modules
  per token count, no teacher and no timing protocol: how memory grows with N.
- ``model``: one full transformer forward with random weights, each family's diffusers transformer at its
  released config, at 1024²…8192² pixels: SDPA (the teacher) vs the same model after ``apply_edit`` with an
  initial adapter, per backend, with analytic FLOPs (``model_flops``) turned into TFLOP/s against a measured
  matmul peak. The first size's budget check uses FLOPs / matmul peak, later ones the previous time scaled
  by the FLOP ratio.

How calls are timed and memory measured: ``measure``; which cases run and how often: ``planning``.
"""

from __future__ import annotations

import gc
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..families import get_family
from ..modules import EDiTSelfAttention, MMEDiTJointAttention, compressed_grid
from ..ops import linear_attention
from .config import DTYPES, SECTION_ORDER, TRAINING_FREE_SECTIONS, VAE_FACTOR, BenchConfig, validate
from .environment import environment
from .measure import Timing, free_memory_bytes
from .models import (ProcessorSwitch, build_random_model, max_resolution, model_config, model_flops, model_inputs,
                     model_parameter_count)
from .planning import Plan, contenders, measure_planned, plan_case, record_times
from .references import bandwidth_timer, measure_copy_bandwidth, measure_matmul_peak
from .report import footer_lines, format_row, header_lines, section_lines
from .results import BenchResults, Row
from .teachers import (KVCompressedJointAttention, KVCompressedSelfAttention, PixArtShapedBlock,
                       SoftmaxJointAttention, SoftmaxSelfAttention, edit_from_softmax,
                       mm_edit_from_softmax)


@dataclass
class Case:
    """One section at one token count: the teacher call and a factory of EDiT calls per backend."""
    teacher: Callable[[], Any]
    edit: Callable[[str], Callable[[], Any]]
    teacher_bytes: int
    edit_bytes: int


class Suite:
    """Builds each section's modules once (weights do not depend on N) and its inputs per token count."""

    def __init__(self, config: BenchConfig):
        self.config = config
        self.factory = dict(device=torch.device(config.device), dtype=DTYPES[config.dtype])
        self.generator = torch.Generator().manual_seed(config.seed)
        self._modules: dict[str, tuple] = {}
        self.elem = torch.finfo(DTYPES[config.dtype]).bits // 8

    def _randn(self, *shape) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator).to(**self.factory)

    def modules(self, section: str) -> tuple:
        if section not in self._modules:
            s, f, g = self.config.shapes, self.factory, self.generator
            if section == "layer":
                teacher = SoftmaxSelfAttention(s.pixart_width, s.pixart_heads, **f).eval()
                self._modules[section] = (teacher, edit_from_softmax(teacher, s.pixart_heads, s.reduction, g).eval())
            elif section == "joint":
                teacher = SoftmaxJointAttention(s.sd35_width, s.sd35_heads, **f).eval()
                self._modules[section] = (teacher, mm_edit_from_softmax(teacher, s.sd35_heads, s.reduction, g).eval())
            elif section == "block":
                attn = SoftmaxSelfAttention(s.pixart_width, s.pixart_heads, **f)
                teacher = PixArtShapedBlock(s.pixart_width, s.pixart_heads, attn, s.mlp_ratio, **f).eval()
                edit = teacher.with_self_attention(edit_from_softmax(attn, s.pixart_heads, s.reduction, g)).eval()
                self._modules[section] = (teacher, edit)
            elif section == "tf-layer":
                teacher = self.modules("layer")[0]
                self._modules[section] = (teacher, KVCompressedSelfAttention(teacher, s.kv_ratio).eval())
            elif section == "tf-joint":
                teacher = self.modules("joint")[0]
                self._modules[section] = (teacher, KVCompressedJointAttention(teacher, s.kv_ratio).eval())
            elif section == "tf-block":
                teacher = self.modules("block")[0]
                self._modules[section] = (teacher,
                                          teacher.with_self_attention(KVCompressedSelfAttention(teacher.attn,
                                                                                                s.kv_ratio)).eval())
            else:
                self._modules[section] = ()
        return self._modules[section]

    def case(self, section: str, tokens: int) -> Case:
        s, b = self.config.shapes, self.config.batch
        side = math.isqrt(tokens)
        grid = (side, side)
        mh, mw = compressed_grid(grid)
        m = mh * mw
        if section in ("op", "layer", "block", "tf-layer", "tf-block"):
            width, heads = s.pixart_width, s.pixart_heads
        else:
            width, heads = s.sd35_width, s.sd35_heads
        d = width // heads
        state_bytes = b * heads * d * (d + 1) * 4
        if section == "op":
            q, k, v = (self._randn(b, heads, tokens, d) for _ in range(3))
            lq, lk, lv = F.relu(self._randn(b, heads, tokens, d)), F.relu(self._randn(b, heads, m, d)), \
                self._randn(b, heads, m, d)

            def edit_op(backend):
                return lambda: linear_attention(lq, lk, lv, backend=backend)
            return Case(lambda: F.scaled_dot_product_attention(q, k, v), edit_op,
                        b * heads * tokens * tokens * self.elem, state_bytes)
        teacher, converted = self.modules(section)
        kind = section.removeprefix("tf-")

        attentions = [m for m in converted.modules() if isinstance(m, (EDiTSelfAttention, MMEDiTJointAttention))]

        def with_backend(call):
            def factory(backend):
                def call_with_backend():  # set on every call: backends are measured interleaved
                    for attention in attentions:  # (none in the training-free sections: one SDPA call)
                        attention.backend = backend
                    return call()
                return call_with_backend
            return factory

        if section in TRAINING_FREE_SECTIONS:  # softmax over pooled K/V: the score matrix shrinks by ratio²
            text = s.text_tokens if kind == "joint" else 0
            keys = -(-grid[0] // s.kv_ratio) * -(-grid[1] // s.kv_ratio)
            state_bytes = b * heads * (tokens + text) * (keys + text) * self.elem
        if kind == "layer":
            x = self._randn(b, tokens, width)
            return Case(lambda: teacher(x, grid), with_backend(lambda: converted(x, grid)),
                        b * heads * tokens * tokens * self.elem, state_bytes)
        if kind == "joint":
            image, text = self._randn(b, tokens, width), self._randn(b, s.text_tokens, width)
            joint = tokens + s.text_tokens
            return Case(lambda: teacher(image, text, grid), with_backend(lambda: converted(image, text, grid)),
                        b * heads * joint * joint * self.elem, state_bytes)
        x = self._randn(b, tokens, width)
        context = self._randn(b, s.caption_tokens, width)
        modulation = self._randn(b, 6, width)
        return Case(lambda: teacher(x, context, modulation, grid),
                    with_backend(lambda: converted(x, context, modulation, grid)),
                    b * heads * tokens * tokens * self.elem, state_bytes)


def _release(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _run_layer_section(section: str, config: BenchConfig, suite: "Suite", results: BenchResults):
    """``op``, ``layer``, ``joint``, ``block`` and the training-free ``tf-*``: rows as each token count finishes
    (a ``tf-*`` row's backend is "sdpa": KV compression stays softmax, so linear-attention backends do not apply)."""
    history: dict[str, list[tuple[int, float]]] = {}
    training_free = section in TRAINING_FREE_SECTIONS
    backends = ("sdpa",) if training_free else config.backends
    for tokens in config.tokens:
        side = math.isqrt(tokens)
        case = suite.case(section, tokens)
        plans = plan_case(contenders(config, backends, power=2 if training_free else 1), history, tokens, config)
        calls = [case.teacher] + [case.edit(b) for b in backends]
        timings = measure_planned(calls, plans, config)
        record_times(history, plans, tokens, timings)
        timings[0].theoretical_bytes = case.teacher_bytes
        for backend, edit in zip(backends, timings[1:]):
            edit.theoretical_bytes = case.edit_bytes
            yield Row(section, tokens, f"{side}x{side}", backend, timings[0], edit)
        del case


def _run_memory_section(section: str, config: BenchConfig, suite: "Suite", results: BenchResults):
    """``memory``: per family and token count, the peak memory of one EDiT call of its attention layer (the
    ``layer`` / ``joint`` sections' modules and inputs, the inputs made before measuring), no teacher."""
    from .measure import measure

    for family in config.families:
        kind = "joint" if get_family(family).joint else "layer"
        for tokens in config.tokens:
            side = math.isqrt(tokens)
            case = suite.case(kind, tokens)
            for backend in config.backends:
                edit = measure(case.edit(backend), config.device, warmup=0, repeats=1)
                yield Row(section, tokens, f"{side}x{side}", backend, Timing(skipped="not run (memory section)"),
                          edit, family=family)
            del case
            _release(config.device)


def _run_bandwidth_section(section: str, config: BenchConfig, suite: "Suite", results: BenchResults):
    """``op-bw``: per family's heads and token count, SDPA over N and linear_attention over the compressed
    K/V per backend; inputs made on the device, only for contenders that run."""
    s, b, device, dtype = config.shapes, config.batch, config.device, DTYPES[config.dtype]
    elem = torch.finfo(dtype).bits // 8
    generator = torch.Generator(device=device).manual_seed(config.seed)
    do_bench = results.references.get("op_bw_timer") == "triton.testing.do_bench"

    def randn(*shape):
        return torch.randn(*shape, generator=generator, device=device, dtype=dtype)

    for family in config.families:
        width, heads = s.attention(family)
        d = width // heads
        history: dict[str, list[tuple[int, float]]] = {}
        for tokens in config.bandwidth_tokens:
            side = math.isqrt(tokens)
            mh, mw = compressed_grid((side, side))
            m = mh * mw
            plans = plan_case(contenders(config), history, tokens, config)
            calls: list[Optional[Callable[[], Any]]] = [None] * len(plans)
            if plans[0].skipped is None:
                q, k, v = randn(b, heads, tokens, d), randn(b, heads, tokens, d), randn(b, heads, tokens, d)
                calls[0] = lambda: F.scaled_dot_product_attention(q, k, v)
            if any(p.skipped is None for p in plans[1:]):
                lq, lk, lv = F.relu(randn(b, heads, tokens, d)), F.relu(randn(b, heads, m, d)), randn(b, heads, m, d)
                for i, backend in enumerate(config.backends, start=1):
                    calls[i] = (lambda backend=backend: linear_attention(lq, lk, lv, backend=backend))
            timings = measure_planned(calls, plans, config, do_bench=do_bench)
            record_times(history, plans, tokens, timings)
            timings[0].theoretical_bytes = b * heads * tokens * tokens * elem
            for backend, edit in zip(config.backends, timings[1:]):
                edit.theoretical_bytes = b * heads * d * (d + 1) * 4
                yield Row(section, tokens, f"{side}x{side}", backend, timings[0], edit, family=family,
                          heads=f"{heads}x{d}", edit_bytes=b * heads * (2 * tokens * d + 2 * m * d) * elem,
                          teacher_flops=4 * b * heads * tokens * tokens * d,
                          edit_flops=2 * b * heads * (m * d * d + tokens * d * d + tokens * d))
            calls = q = k = v = lq = lk = lv = None  # noqa: F841 - free before the next size
            _release(device)


def _run_model_section(section: str, config: BenchConfig, suite: "Suite", results: BenchResults):
    """``model``: per family and resolution, one forward of the random-weight transformer with SDPA and after
    ``apply_edit`` per backend. The model is built (directly on the device, in the dtype) at the first
    resolution that runs, and freed before the next family."""
    s, device, dtype = config.shapes, config.device, DTYPES[config.dtype]
    peak = results.references.get("matmul_tflops")
    generator = torch.Generator(device=device).manual_seed(config.seed)
    for family in config.families:
        model_cfg = model_config(family, config.tiny)
        text = s.context_tokens(family)
        cap, patch = max_resolution(model_cfg), int(model_cfg["patch_size"])
        history: dict[str, list[tuple[int, float]]] = {}
        model = switch = unavailable = None
        for px in config.resolutions:
            side = px // VAE_FACTOR // patch
            grid, tokens = (side, side), side * side
            flops = {"teacher": model_flops(family, model_cfg, grid, text, edit=False, batch=config.batch,
                                            reduction=s.reduction),
                     "edit": model_flops(family, model_cfg, grid, text, edit=True, batch=config.batch,
                                         reduction=s.reduction)}

            def estimator(key: str, power: int) -> tuple[Optional[float], bool]:
                work = flops["teacher" if key == "teacher" else "edit"]
                if history.get(key):
                    last_flops, last_seconds = history[key][-1]
                    return last_seconds * work / last_flops, False
                return (work / (peak * 1e12), True) if peak else (None, False)

            runners = contenders(config)
            if cap is not None and px > cap:
                title = get_family(family).short_title
                why = f"pos_embed_max_size {model_cfg['pos_embed_max_size']} caps {title} at {cap}² px"
                runners = [(key, power, why) for key, power, _ in runners]
            elif unavailable:
                runners = [(key, power, unavailable) for key, power, _ in runners]
            plans = plan_case(runners, history, flops["teacher"], config, estimator)
            if model is None and any(p.skipped is None for p in plans):
                need = model_parameter_count(family, model_cfg) * (torch.finfo(dtype).bits // 8)
                free = free_memory_bytes(device)
                if free is not None and need > 0.8 * free:
                    unavailable = (f"its {need / 2**30:.1f} GiB of weights leave too little of the "
                                   f"{free / 2**30:.1f} GiB free for activations")
                    plans = [Plan(p.key, skipped=p.skipped or unavailable) for p in plans]
                else:
                    model = build_random_model(family, model_cfg, device, dtype)
                    switch = ProcessorSwitch(model, family, s.reduction, config.seed)
            timings = [Timing(skipped=p.skipped) for p in plans]
            if any(p.skipped is None for p in plans):
                inputs = model_inputs(family, model_cfg, px, text, config.batch, device, dtype, generator)
                timings = _time_model_case(model, switch, inputs, plans, config)
                del inputs
                _release(device)
            for plan, timing in zip(plans, timings):
                if timing.median_s is not None:
                    history.setdefault(plan.key, []).append((flops["teacher" if plan.key == "teacher" else "edit"],
                                                             timing.median_s))
            for backend, edit in zip(config.backends, timings[1:]):
                yield Row(section, tokens, f"{side}x{side}", backend, timings[0], edit, family=family,
                          resolution=px, teacher_flops=flops["teacher"], edit_flops=flops["edit"])
        model = switch = None
        _release(device)


def _time_model_case(model: nn.Module, switch: ProcessorSwitch, inputs: dict, plans: list[Plan],
                     config: BenchConfig) -> list[Timing]:
    """The teacher and each backend's EDiT on one model, interleaved; holds no reference once it returns."""
    def forward():
        return model(**inputs)

    prepares = [switch.teacher] + [switch.edit(b) for b in config.backends]
    return measure_planned([forward] * len(plans), plans, config, prepares=prepares)


_SECTION_RUNNERS = {"memory": _run_memory_section, "op-bw": _run_bandwidth_section, "model": _run_model_section}


def run_benchmark(config: BenchConfig, log: Callable[[str], None] = print) -> BenchResults:
    """Run every section at every size; ``log`` receives the report line by line as rows finish."""
    validate(config)
    torch.manual_seed(config.seed)
    results = BenchResults(config, environment(config))
    start = time.perf_counter()
    for line in header_lines(results):
        log(line)
    sections = [s for s in SECTION_ORDER if s in config.sections]
    if "op-bw" in sections:
        results.references.update(measure_copy_bandwidth(config), op_bw_timer=bandwidth_timer(config))
    if "model" in sections:
        results.references.update(measure_matmul_peak(config))
    suite = Suite(config)
    for section in sections:
        for line in section_lines(results, section):
            log(line)
        for row in _SECTION_RUNNERS.get(section, _run_layer_section)(section, config, suite, results):
            results.rows.append(row)
            log(format_row(row, results.references))
    results.total_seconds = time.perf_counter() - start
    if hasattr(os, "getloadavg"):
        results.environment["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    log("")
    for line in footer_lines(results):
        log(line)
    return results


__all__ = ["run_benchmark", "Suite", "Case"]
