"""Timing and memory of callables: warm-up, then timed calls, interleaved across contenders.

Protocol (paper-spec §4): warm-up calls, then the median of timed calls under ``torch.inference_mode``;
CUDA calls are timed with events after a synchronize; ``measure_do_bench`` uses ``triton.testing.do_bench``
instead, which flushes the L2 cache between calls.

Memory is CUDA's ``max_memory_allocated`` above the memory held before the timed calls; on CPU it is the
growth of the process's resident set size during a case's first call, sampled every 2 ms by a thread
(buffers ≥ 256 KiB are memory-mapped meanwhile, so the heap cannot hide them; approximate to a few MiB).
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from .config import MIN_TIMED_CALLS


def _rss_bytes() -> Optional[int]:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001 - memory is optional information
        return None


def _glibc():
    """glibc's ``mallopt`` (Linux), or None elsewhere."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


_M_MMAP_THRESHOLD = -3
_MAP_EVERY_BUFFER = 256 * 1024  # during measurement: every buffer ≥ 256 KiB gets its own mapping, unmapped on free
_MAP_LARGE_BUFFERS = 32 * 2**20  # afterwards: glibc's own upper bound for its dynamic threshold


class RssPeak:
    """Context manager: ``growth`` = peak resident set size during the block minus the size before it.

    On entry glibc returns the heap's free pages to the system (``malloc_trim``), and while it is active it
    serves every new buffer of 256 KiB or more from its own memory mapping, unmapped when freed. Tensors
    therefore cannot hide in memory the heap kept from earlier cases, and the RSS follows the live tensor
    bytes (page granular). Buffers freed and reallocated between two 2 ms samples can still be missed."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.growth = interval, None
        self._stop = threading.Event()
        self._libc = _glibc()

    def _poll(self) -> None:
        while not self._stop.is_set():
            rss = _rss_bytes()
            if rss is not None:
                self._peak = max(self._peak, rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssPeak":
        if self._libc is not None:
            self._libc.malloc_trim(0)  # free heap pages back to the system: reusing them shows up in the RSS again
            self._libc.mallopt(_M_MMAP_THRESHOLD, _MAP_EVERY_BUFFER)
        self._base = _rss_bytes()
        self._peak = self._base or 0
        if self._base is not None:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._base is not None:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, _rss_bytes() or 0)
            self.growth = max(self._peak - self._base, 0)
        if self._libc is not None:
            self._libc.mallopt(_M_MMAP_THRESHOLD, _MAP_LARGE_BUFFERS)


@dataclass
class Timing:
    median_s: Optional[float] = None
    times_s: list[float] = field(default_factory=list)
    peak_bytes: Optional[int] = None
    skipped: Optional[str] = None
    warmup: Optional[int] = None
    theoretical_bytes: Optional[int] = None
    """Teacher: the B·H·N·N_keys score matrix a non-fused softmax would hold; EDiT: the fp32 state S, z."""
    timer: Optional[str] = None
    """How the calls were timed, where not the default (CUDA events / perf_counter): "triton.testing.do_bench"."""


def _is_backend_error(error: Exception) -> bool:
    return isinstance(error, RuntimeError) and "attention backend" in str(error)


def _is_out_of_memory(error: Exception) -> bool:
    return isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError)) or (
        isinstance(error, RuntimeError) and ("out of memory" in str(error) or "not enough memory" in str(error)))


class _Contender:
    """One callable being measured: its warm-ups, timed calls and memory."""

    def __init__(self, fn: Callable[[], Any], warmup: int, device: str, repeats: int = 1,
                 prepare: Optional[Callable[[], Any]] = None):
        self.fn, self.device, self.repeats, self.prepare = fn, device, repeats, prepare
        self.timing = Timing(warmup=warmup)
        self.calls = 0
        self.events: list = []

    def call(self, timed: bool) -> None:
        """One call; the first of a case is the one whose memory is recorded. ``prepare`` (untimed) runs first:
        the model section swaps attention processors there."""
        try:
            if self.prepare is not None:
                self.prepare()
            if self.device == "cuda":
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                self.fn()
                end.record()
                peak = torch.cuda.max_memory_allocated() - base  # host-side bookkeeping: no sync needed
                self.timing.peak_bytes = max(self.timing.peak_bytes or 0, peak)
                if timed:
                    self.events.append((start, end))
            else:
                memory = RssPeak() if self.calls == 0 else None
                t0 = time.perf_counter()
                if memory is not None:
                    with memory:
                        self.fn()
                    self.timing.peak_bytes = memory.growth
                else:
                    self.fn()
                if timed:
                    self.timing.times_s.append(time.perf_counter() - t0)
            self.calls += 1
        except Exception as error:  # noqa: BLE001 - sorted into "skipped" or re-raised
            if _is_backend_error(error):
                self.timing = Timing(skipped=str(error).split(": ", 1)[-1])
            elif _is_out_of_memory(error):
                if self.device == "cuda":
                    torch.cuda.empty_cache()
                self.timing = Timing(skipped="out of memory")
            else:
                raise

    def finish(self) -> Timing:
        if self.timing.skipped is None:
            if self.device == "cuda":
                self.timing.times_s = [start.elapsed_time(end) / 1e3 for start, end in self.events]
            self.timing.median_s = statistics.median(self.timing.times_s)
        return self.timing


def measure_interleaved(fns: list[Callable[[], Any]], device: str, warmups: list[int], repeats,
                        prepares: Optional[list[Optional[Callable[[], Any]]]] = None) -> list[Timing]:
    """Warm each callable up, then time them round-robin (A B A B ...), ``repeats`` calls each (an int, or
    one count per callable: a callable that has its count drops out of the round); medians.

    Interleaving puts the teacher and EDiT under the same conditions when the machine's load drifts
    (a shared CPU, GPU clocks), which back-to-back blocks of calls do not. ``prepares[i]``, if given, runs
    untimed before every call of ``fns[i]``."""
    counts = list(repeats) if isinstance(repeats, (list, tuple)) else [repeats] * len(fns)
    prepares = prepares or [None] * len(fns)
    contenders = [_Contender(fn, w, device, r, p) for fn, w, r, p in zip(fns, warmups, counts, prepares)]
    with torch.inference_mode():
        if device == "cuda":
            torch.cuda.synchronize()
        for contender in contenders:
            for _ in range(contender.timing.warmup):
                if contender.timing.skipped is None:
                    contender.call(timed=False)
        if device == "cuda":
            torch.cuda.synchronize()
        for round_ in range(max(counts, default=0)):
            for contender in contenders:
                if contender.timing.skipped is None and round_ < contender.repeats:
                    contender.call(timed=True)
        if device == "cuda":
            torch.cuda.synchronize()
    return [contender.finish() for contender in contenders]


def measure(fn: Callable[[], Any], device: str, warmup: int, repeats: int) -> Timing:
    """Warm up, then time ``repeats`` calls of ``fn`` (median), with peak memory (see the module docstring)."""
    return measure_interleaved([fn], device, [warmup], repeats)[0]


def triton_do_bench():
    """``triton.testing.do_bench``, or None without a working triton."""
    try:
        from triton.testing import do_bench
    except Exception:  # noqa: BLE001 - optional: CUDA events are the fallback
        return None
    return do_bench


def measure_do_bench(fn: Callable[[], Any], estimate: Optional[float], min_calls: int = MIN_TIMED_CALLS) -> Timing:
    """CUDA: one untimed call (memory, compilation, a time estimate), then ``triton.testing.do_bench``: 25 ms
    of warm-up and ≥ 100 ms of timed calls (at least ``min_calls``), the L2 cache flushed before each; the
    median of its per-call times."""
    do_bench = triton_do_bench()
    first = _Contender(fn, 0, "cuda")
    with torch.inference_mode():
        torch.cuda.synchronize()
        start = time.perf_counter()
        first.call(timed=False)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    if first.timing.skipped is not None:
        return first.timing
    estimate = max(estimate or 0.0, seconds)
    try:
        with torch.inference_mode():
            times_ms = do_bench(fn, warmup=25, rep=max(100.0, 1e3 * min_calls * estimate), return_mode="all")
    except Exception as error:  # noqa: BLE001 - sorted as in _Contender.call
        if _is_out_of_memory(error):
            torch.cuda.empty_cache()
            return Timing(skipped="out of memory")
        if _is_backend_error(error):
            return Timing(skipped=str(error).split(": ", 1)[-1])
        raise
    times = [t / 1e3 for t in (times_ms if isinstance(times_ms, list) else [times_ms])]
    return Timing(median_s=statistics.median(times), times_s=times, peak_bytes=first.timing.peak_bytes, warmup=None,
                  timer="triton.testing.do_bench")


def timer_name(device: str) -> str:
    """How ``measure`` times calls on ``device``."""
    return "CUDA events" if device == "cuda" else "time.perf_counter"


def free_memory_bytes(device: str) -> Optional[int]:
    """Memory free for new tensors on ``device`` (CPU: the kernel's MemAvailable), or None when unknown."""
    if device == "cuda":
        return int(torch.cuda.mem_get_info()[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


__all__ = ["RssPeak", "Timing", "measure", "measure_interleaved", "measure_do_bench", "triton_do_bench", "timer_name",
           "free_memory_bytes"]
