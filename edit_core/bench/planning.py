"""Which contenders run at a case, and how many calls each gets.

Cases estimated at over ``LONG_CALL_SECONDS`` per call skip the warm-up (it would only absorb millisecond
one-time costs), and a contender gets at most ``case_seconds`` of timed calls per case (never fewer than
``MIN_TIMED_CALLS``). A case is skipped, not run, when its time per call extrapolated from the previous
sizes (teacher a·N + b·N² through the last two, EDiT ∝ N; the ``model`` section passes its own estimator)
exceeds the budget. A backend that cannot be timed here (triton without CUDA, or under
``TRITON_INTERPRET=1``, whose CPU interpreter is for tests) is skipped with the reason, never run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .config import LONG_CALL_SECONDS, MIN_TIMED_CALLS, BenchConfig
from .measure import Timing, measure_do_bench, measure_interleaved


def triton_interpreted() -> bool:
    """True when Triton kernels would run in Triton's CPU interpreter (``TRITON_INTERPRET=1``)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    try:
        from ..ops.linear_attention import triton_impl
    except Exception:  # noqa: BLE001 - no triton: nothing is interpreted
        return False
    return triton_impl.kernels_interpreted()


def timing_problem(backend: str, device: str) -> Optional[str]:
    """Why EDiT's ``backend`` cannot be timed on ``device`` in this process, or None when it can.

    Triton without CUDA, or with ``TRITON_INTERPRET=1`` (the test suite sets it), would run the kernels in
    Triton's CPU interpreter, or not at all: such rows are reported as skipped with this reason, never
    timed. ``auto`` on CPU is the torch path (it never picks the interpreter), so it is always timed there."""
    if backend not in ("triton", "auto"):
        return None
    from ..ops import backends

    backends.load_backend("linear_attention", "triton")
    if backend == "triton" and "triton" not in backends.available_backends("linear_attention"):
        return backends.unavailable_reason("triton") or "the triton backend is not registered"
    interpreted = triton_interpreted()
    if device == "cpu":
        if backend == "auto":
            return None
        if interpreted:
            return ("TRITON_INTERPRET=1 would run the Triton kernels in Triton's CPU interpreter, which is for "
                    "tests, not timing; time the triton backend with --device cuda")
        return "the triton backend needs a CUDA device (Triton kernels do not run on CPU); use --device cuda"
    if interpreted:
        return ("TRITON_INTERPRET=1 is set: the Triton kernels would run in Triton's CPU interpreter, not on the "
                "GPU; unset it to time them")
    return None


def extrapolate(history: list[tuple[int, float]], tokens: int, power: int) -> Optional[float]:
    """Time per call at ``tokens`` from earlier (tokens, seconds) measurements.

    EDiT (``power`` 1): linear in N from the last point. Teacher (``power`` 2): a·N + b·N² through the
    last two points (a layer is projections, linear in N, plus attention, quadratic), or b·N² from one;
    whenever the fit is not non-negative, the conservative pure-N² extrapolation of the last point."""
    if not history:
        return None
    n1, t1 = history[-1]
    pure = t1 * (tokens / n1) ** power
    if power != 2 or len(history) < 2:
        return pure
    n0, t0 = history[-2]
    b = (t1 / n1 - t0 / n0) / (n1 - n0)  # t/N = a + b·N
    a = t1 / n1 - b * n1
    return a * tokens + b * tokens ** 2 if a >= 0 and b >= 0 else pure


@dataclass
class Plan:
    """What one contender does at one case: skipped (why), or its warm-up and timed call counts."""
    key: str
    skipped: Optional[str] = None
    estimate: Optional[float] = None
    warmup: int = 0
    timed: int = 0


def call_counts(estimate: Optional[float], config: BenchConfig) -> tuple[int, int]:
    """(warm-up, timed) calls: the configured counts, cut for slow calls to ≈ ``case_seconds`` of timed calls
    (never fewer than MIN_TIMED_CALLS) and a quarter of that of warm-up (none over LONG_CALL_SECONDS)."""
    if estimate is None or estimate <= 0:
        return config.warmup, config.repeats
    warmup = 0 if estimate > LONG_CALL_SECONDS else min(config.warmup, max(1, int(config.case_seconds / 4 / estimate)))
    timed = min(config.repeats, max(MIN_TIMED_CALLS, int(config.case_seconds / estimate)))
    return warmup, timed


Estimator = Callable[[str, int], tuple[Optional[float], bool]]
"""(history key, cost exponent) → (seconds per call or None, whether it is only a lower bound)."""


def plan_case(contenders: list[tuple[str, int, Optional[str]]], history: dict, size: int, config: BenchConfig,
               estimator: Optional[Estimator] = None) -> list[Plan]:
    """Plans for (history key, cost exponent, reason it cannot run or None) contenders at ``size``."""
    plans = []
    for key, power, problem in contenders:
        if problem is not None:
            plans.append(Plan(key, skipped=problem))
            continue
        estimate, lower_bound = estimator(key, power) if estimator else (extrapolate(history.get(key, []), size, power),
                                                                         False)
        if estimate is not None and estimate > config.budget_seconds:
            how = ("≥", " (FLOPs / matmul peak)") if lower_bound else ("", "")
            plans.append(Plan(key, skipped=f"est. {how[0]}{estimate:.0f}s{how[1]} > budget {config.budget_seconds:g}s"))
            continue
        warmup, timed = call_counts(estimate, config)
        plans.append(Plan(key, estimate=estimate, warmup=warmup, timed=timed))
    return plans


def measure_planned(calls: list[Optional[Callable[[], Any]]], plans: list[Plan], config: BenchConfig, *,
                     prepares: Optional[list] = None, do_bench: bool = False) -> list[Timing]:
    """Time the planned contenders (interleaved, or one by one with do_bench); skipped ones stay skipped."""
    timings: list[Optional[Timing]] = [Timing(skipped=p.skipped) if p.skipped else None for p in plans]
    run = [i for i, p in enumerate(plans) if p.skipped is None]
    if do_bench:
        for i in run:
            timings[i] = measure_do_bench(calls[i], plans[i].estimate, min(MIN_TIMED_CALLS, plans[i].timed))
    elif run:
        prepares = prepares or [None] * len(plans)
        measured = measure_interleaved([calls[i] for i in run], config.device, [plans[i].warmup for i in run],
                                       [plans[i].timed for i in run], [prepares[i] for i in run])
        for i, timing in zip(run, measured):
            timings[i] = timing
    return timings


def record_times(history: dict, plans: list[Plan], size, timings: list[Timing]) -> None:
    """Add each measured contender's (size, median seconds) to its history, for ``extrapolate``."""
    for plan, timing in zip(plans, timings):
        if timing.median_s is not None:
            history.setdefault(plan.key, []).append((size, timing.median_s))


def contenders(config: BenchConfig, backends: Optional[tuple[str, ...]] = None,
               power: int = 1) -> list[tuple[str, int, Optional[str]]]:
    """Teacher (cost ∝ N²) and one converted contender per backend (∝ N^power: 1 for EDiT, 2 for KV compression),
    with the reason a backend cannot be timed."""
    backends = config.backends if backends is None else backends
    return [("teacher", 2, None)] + [(f"edit[{b}]", power, None if b == "sdpa" else timing_problem(b, config.device))
                                     for b in backends]


__all__ = ["Plan", "Estimator", "extrapolate", "call_counts", "plan_case", "measure_planned", "record_times",
           "contenders", "timing_problem", "triton_interpreted"]
