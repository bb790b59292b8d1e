"""Latency benchmark: the softmax teacher and EDiT side by side, in one process, on the same inputs.

Sections (each at every token count N, on a square h×w = N token grid, batch 1 by default):

- ``op``: ``scaled_dot_product_attention(q, k, v)`` over N tokens vs ``linear_attention`` over the
  compressed keys/values (M = ⌈h/2⌉·⌈w/2⌉ ≈ N/4), PixArt-Σ heads (16 × 72).
- ``layer``: a PixArt-Σ self-attention (width 1152, 16 × 72): fused qkv Linear + SDPA + out projection,
  vs ``EDiTSelfAttention`` (ConvFusion + projections + spatial compressors + linear attention + out).
- ``joint``: an SD3.5-Medium joint attention (width 1536, 24 × 64, RMS qk-norm, 154 text tokens): one
  SDPA over [text; image] vs ``MMEDiTJointAttention`` (the MM-EDiT hybrid).
- ``block``: a full-width PixArt-Σ transformer block (adaLN-single modulation, self-attention,
  cross-attention to 120 caption tokens, 4× GELU MLP) with softmax vs EDiT self-attention.

Protocol (paper-spec §4): warm-up calls, then the median of timed calls under ``torch.inference_mode``;
CUDA calls are timed with events after a synchronize. Cases estimated at over ``LONG_CALL_SECONDS`` per
call skip the warm-up (it would only absorb millisecond one-time costs). A case is skipped, not run, when
its time per call extrapolated from the previous token counts (teacher a·N + b·N² through the last two,
EDiT ∝ N) exceeds the budget.

Memory is CUDA's ``max_memory_allocated`` above the memory held before the timed calls; on CPU it is the
growth of the process's resident set size during a case's first call, sampled every 2 ms by a thread
(buffers ≥ 256 KiB are memory-mapped meanwhile, so the heap cannot hide them; approximate to a few MiB).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .modules import (
    EDiTSelfAttention,
    MMEDiTJointAttention,
    compressed_grid,
    merge_heads,
)
from .ops import linear_attention

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_TOKENS = (1024, 4096, 16384, 65536)
SECTION_ORDER = ("op", "layer", "joint", "block")
FAMILY_SECTIONS = {"pixart": ("op", "layer", "block"), "sd35": ("joint",)}
CPU_MEMORY_METHOD = ("peak RSS growth during the first call of a case (sampled every 2 ms, buffers ≥ 256 KiB "
                     "memory-mapped meanwhile; approximate to a few MiB)")
CUDA_MEMORY_METHOD = "torch.cuda.max_memory_allocated above the memory held before the timed calls"
LONG_CALL_SECONDS = 5.0
"""A case whose extrapolated time per call exceeds this gets no warm-up: one-time costs (kernel selection,
allocator growth, lazy init) take milliseconds, and a warm-up call of a minute-long SDPA only costs time."""


class BenchError(ValueError):
    """A benchmark setting that cannot be run (the message says which and why)."""


@dataclass(frozen=True)
class Shapes:
    """Layer geometry. ``FULL_SHAPES`` are the real models'; ``TINY_SHAPES`` are for smoke tests."""
    pixart_width: int = 1152
    pixart_heads: int = 16
    sd35_width: int = 1536
    sd35_heads: int = 24
    text_tokens: int = 154  # SD3.5 joint context as ComfyUI feeds it (77 CLIP + 77 T5)
    caption_tokens: int = 120  # PixArt-Σ cross-attention context
    mlp_ratio: int = 4
    reduction: int = 4


FULL_SHAPES = Shapes()
TINY_SHAPES = Shapes(pixart_width=64, pixart_heads=4, sd35_width=64, sd35_heads=4, text_tokens=8, caption_tokens=8)


def section_titles(shapes: Shapes) -> dict[str, str]:
    s = shapes
    p_head, j_head = s.pixart_width // s.pixart_heads, s.sd35_width // s.sd35_heads
    return {
        "op": f"op: SDPA over N tokens vs linear_attention over compressed K/V (M≈N/4), {s.pixart_heads}×{p_head} heads",
        "layer": f"layer: PixArt-Σ self-attention, width {s.pixart_width} ({s.pixart_heads}×{p_head}): "
                 f"qkv+SDPA+out vs EDiTSelfAttention",
        "joint": f"joint: SD3.5-M joint attention, width {s.sd35_width} ({s.sd35_heads}×{j_head}, RMS qk-norm, "
                 f"{s.text_tokens} text tokens): SDPA over [text; image] vs MMEDiTJointAttention",
        "block": f"block: PixArt-Σ transformer block, width {s.pixart_width} (self-attn + cross-attn to "
                 f"{s.caption_tokens} tokens + {s.mlp_ratio}× MLP): softmax vs EDiT self-attention",
    }


@dataclass
class BenchConfig:
    device: str = "cpu"
    dtype: str = "fp32"
    tokens: tuple[int, ...] = DEFAULT_TOKENS
    warmup: int = 1
    repeats: int = 3
    backends: tuple[str, ...] = ("torch",)
    budget_seconds: float = 60.0
    sections: tuple[str, ...] = SECTION_ORDER
    batch: int = 1
    shapes: Shapes = FULL_SHAPES
    seed: int = 0
    command: str = ""


def default_repeats(device: str) -> tuple[int, int]:
    """(warmup, repeats): few on CPU, where one SDPA call at 16k tokens takes seconds; the protocol's on CUDA."""
    return (10, 30) if device == "cuda" else (1, 3)


def parse_tokens(text: str) -> tuple[int, ...]:
    """"1024,4096" → (1024, 4096); each must be a perfect square (the token grid is square)."""
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            n = int(part)
        except ValueError:
            raise BenchError(f"--tokens: {part!r} is not a whole number") from None
        side = math.isqrt(n) if n > 0 else 0
        if n < 4 or side * side != n:
            raise BenchError(f"--tokens: {n} is not a square token count ≥ 4 (the grid is square: use e.g. "
                             "1024 = 32², 4096 = 64², 16384 = 128², 65536 = 256²)")
        values.append(n)
    if not values:
        raise BenchError("--tokens: give at least one token count")
    return tuple(sorted(set(values)))


def validate(config: BenchConfig) -> None:
    if config.device not in ("cpu", "cuda"):
        raise BenchError(f"--device must be cpu or cuda, not {config.device!r}")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda: CUDA is not available here (no GPU, or a CPU-only torch build); use --device cpu")
    if config.dtype not in DTYPES:
        raise BenchError(f"--dtype must be one of {', '.join(DTYPES)}, not {config.dtype!r}")
    if config.repeats < 1 or config.warmup < 0:
        raise BenchError("--repeats must be ≥ 1 and --warmup ≥ 0")
    if config.budget_seconds <= 0:
        raise BenchError("--budget-seconds must be positive")
    if config.batch < 1:
        raise BenchError("--batch must be ≥ 1")
    unknown = [s for s in config.sections if s not in SECTION_ORDER]
    if unknown or not config.sections:
        raise BenchError(f"unknown section(s) {unknown}; choose from {', '.join(SECTION_ORDER)}")
    from .ops.backends import BACKEND_NAMES
    bad = [b for b in config.backends if b not in BACKEND_NAMES]
    if bad or not config.backends:
        raise BenchError(f"--backend: unknown backend(s) {bad}; choose from {', '.join(BACKEND_NAMES)}")


# ---------------------------------------------------------------------------------------------- models

def _rms(dim: int, factory) -> nn.RMSNorm:
    return nn.RMSNorm(dim, eps=1e-6, **factory)


class SoftmaxSelfAttention(nn.Module):
    """The teacher self-attention: fused qkv Linear (+ optional per-head RMS qk-norm) + SDPA + out projection,
    as PixArt-Σ's ``blocks[i].attn`` computes it."""

    def __init__(self, dim: int, heads: int, qk_norm: Optional[str] = None, **factory):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, **factory)
        self.proj = nn.Linear(dim, dim, **factory)
        self.norm_q = _rms(dim // heads, factory) if qk_norm == "rms" else None
        self.norm_k = _rms(dim // heads, factory) if qk_norm == "rms" else None

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # 3 × [B, H, N, D]
        if self.norm_q is not None:
            q, k = self.norm_q(q), self.norm_k(k)
        return q, k, v

    def forward(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        return self.proj(merge_heads(F.scaled_dot_product_attention(*self.project(x))))


class SoftmaxJointAttention(nn.Module):
    """The teacher MMDiT joint attention (SD3.5): each stream has its own qkv, RMS qk-norm and out projection;
    one SDPA runs over the concatenated [text; image] sequence (ComfyUI's order)."""

    def __init__(self, dim: int, heads: int, **factory):
        super().__init__()
        self.image = SoftmaxSelfAttention(dim, heads, qk_norm="rms", **factory)
        self.text = SoftmaxSelfAttention(dim, heads, qk_norm="rms", **factory)

    def forward(self, image: torch.Tensor, text: torch.Tensor, grid=None) -> tuple[torch.Tensor, torch.Tensor]:
        qi, ki, vi = self.image.project(image)
        qt, kt, vt = self.text.project(text)
        joint = F.scaled_dot_product_attention(torch.cat([qt, qi], 2), torch.cat([kt, ki], 2), torch.cat([vt, vi], 2))
        n_text = text.shape[1]
        return self.image.proj(merge_heads(joint[:, :, n_text:])), self.text.proj(merge_heads(joint[:, :, :n_text]))


class CrossAttention(nn.Module):
    """PixArt-Σ's caption cross-attention (softmax in both teacher and EDiT)."""

    def __init__(self, dim: int, heads: int, **factory):
        super().__init__()
        self.heads = heads
        self.q_linear = nn.Linear(dim, dim, **factory)
        self.kv_linear = nn.Linear(dim, 2 * dim, **factory)
        self.proj = nn.Linear(dim, dim, **factory)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        d = c // self.heads
        q = self.q_linear(x).view(b, n, self.heads, d).transpose(1, 2)
        k, v = self.kv_linear(context).view(b, context.shape[1], 2, self.heads, d).permute(2, 0, 3, 1, 4)
        return self.proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))


class PixArtShapedBlock(nn.Module):
    """A PixArt-Σ transformer block (``ada_norm_single``) around a pluggable self-attention."""

    def __init__(self, dim: int, heads: int, self_attention: nn.Module, mlp_ratio: int = 4, **factory):
        super().__init__()
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim, **factory) / dim ** 0.5)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6, **factory)
        self.attn = self_attention
        self.cross_attn = CrossAttention(dim, heads, **factory)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6, **factory)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim, **factory), nn.GELU(approximate="tanh"),
                                 nn.Linear(mlp_ratio * dim, dim, **factory))

    def with_self_attention(self, self_attention: nn.Module) -> "PixArtShapedBlock":
        """The same block (shared weights) with another self-attention."""
        other = PixArtShapedBlock.__new__(PixArtShapedBlock)
        nn.Module.__init__(other)
        for name, module in self.named_children():
            other.add_module(name, self_attention if name == "attn" else module)
        other.scale_shift_table = self.scale_shift_table
        return other

    def forward(self, x: torch.Tensor, context: torch.Tensor, modulation: torch.Tensor, grid) -> torch.Tensor:
        """x [B, N, C], context [B, T, C], modulation [B, 6, C] (the adaLN-single timestep embedding)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = \
            (self.scale_shift_table[None] + modulation).chunk(6, dim=1)
        x = x + gate_msa * self.attn(self.norm1(x) * (1 + scale_msa) + shift_msa, grid)
        x = x + self.cross_attn(x, context)
        return x + gate_mlp * self.mlp(self.norm2(x) * (1 + scale_mlp) + shift_mlp)


@torch.no_grad()
def edit_from_softmax(teacher: SoftmaxSelfAttention, heads: int, reduction: int, generator) -> EDiTSelfAttention:
    """``EDiTSelfAttention`` on the teacher's own projections, adapter at its documented init."""
    dim = teacher.proj.in_features
    w = teacher.qkv.weight
    edit = EDiTSelfAttention(dim, heads, reduction=reduction, qk_norm="rms" if teacher.norm_q is not None else None,
                             dtype=w.dtype, device=w.device)
    for name, weight, bias in zip(("to_q", "to_k", "to_v"), teacher.qkv.weight.chunk(3), teacher.qkv.bias.chunk(3)):
        getattr(edit, name).weight.copy_(weight)
        getattr(edit, name).bias.copy_(bias)
    edit.to_out.load_state_dict(teacher.proj.state_dict())
    if teacher.norm_q is not None:
        edit.norm_q.load_state_dict(teacher.norm_q.state_dict())
        edit.norm_k.load_state_dict(teacher.norm_k.state_dict())
    edit.edit.initialize(generator)
    return edit


@torch.no_grad()
def mm_edit_from_softmax(teacher: SoftmaxJointAttention, heads: int, reduction: int, generator) -> MMEDiTJointAttention:
    dim = teacher.image.proj.in_features
    w = teacher.image.qkv.weight
    edit = MMEDiTJointAttention(dim, heads, reduction=reduction, qk_norm="rms", dtype=w.dtype, device=w.device)
    for stream, names, out_name, norms in (
            (teacher.image, ("to_q", "to_k", "to_v"), "to_out", ("norm_q", "norm_k")),
            (teacher.text, ("add_q_proj", "add_k_proj", "add_v_proj"), "to_add_out", ("norm_added_q", "norm_added_k"))):
        for name, weight, bias in zip(names, stream.qkv.weight.chunk(3), stream.qkv.bias.chunk(3)):
            getattr(edit, name).weight.copy_(weight)
            getattr(edit, name).bias.copy_(bias)
        getattr(edit, out_name).load_state_dict(stream.proj.state_dict())
        getattr(edit, norms[0]).load_state_dict(stream.norm_q.state_dict())
        getattr(edit, norms[1]).load_state_dict(stream.norm_k.state_dict())
    edit.edit.initialize(generator)
    return edit


# ---------------------------------------------------------------------------------------------- measuring

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


def _is_backend_error(error: Exception) -> bool:
    return isinstance(error, RuntimeError) and "attention backend" in str(error)


def _is_out_of_memory(error: Exception) -> bool:
    return isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError)) or (
        isinstance(error, RuntimeError) and ("out of memory" in str(error) or "not enough memory" in str(error)))


class _Contender:
    """One callable being measured: its warm-ups, timed calls and memory."""

    def __init__(self, fn: Callable[[], Any], warmup: int, device: str):
        self.fn, self.device = fn, device
        self.timing = Timing(warmup=warmup)
        self.calls = 0
        self.events: list = []

    def call(self, timed: bool) -> None:
        """One call; the first of a case is the one whose memory is recorded."""
        try:
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


def measure_interleaved(fns: list[Callable[[], Any]], device: str, warmups: list[int], repeats: int) -> list[Timing]:
    """Warm each callable up, then time them round-robin (A B A B ...), ``repeats`` calls each; medians.

    Interleaving puts the teacher and EDiT under the same conditions when the machine's load drifts
    (a shared CPU, GPU clocks), which back-to-back blocks of calls do not."""
    contenders = [_Contender(fn, w, device) for fn, w in zip(fns, warmups)]
    with torch.inference_mode():
        if device == "cuda":
            torch.cuda.synchronize()
        for contender in contenders:
            for _ in range(contender.timing.warmup):
                if contender.timing.skipped is None:
                    contender.call(timed=False)
        if device == "cuda":
            torch.cuda.synchronize()
        for _ in range(repeats):
            for contender in contenders:
                if contender.timing.skipped is None:
                    contender.call(timed=True)
        if device == "cuda":
            torch.cuda.synchronize()
    return [contender.finish() for contender in contenders]


def measure(fn: Callable[[], Any], device: str, warmup: int, repeats: int) -> Timing:
    """Warm up, then time ``repeats`` calls of ``fn`` (median), with peak memory (see the module docstring)."""
    return measure_interleaved([fn], device, [warmup], repeats)[0]


# ---------------------------------------------------------------------------------------------- cases

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
            else:
                self._modules[section] = ()
        return self._modules[section]

    def case(self, section: str, tokens: int) -> Case:
        s, b = self.config.shapes, self.config.batch
        side = math.isqrt(tokens)
        grid = (side, side)
        mh, mw = compressed_grid(grid)
        m = mh * mw
        if section in ("op", "layer", "block"):
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
        teacher, edit = self.modules(section)

        def with_backend(module, call):
            attentions = [m for m in module.modules() if isinstance(m, (EDiTSelfAttention, MMEDiTJointAttention))]

            def factory(backend):
                def call_with_backend():  # set on every call: backends are measured interleaved
                    for attention in attentions:
                        attention.backend = backend
                    return call()
                return call_with_backend
            return factory

        if section == "layer":
            x = self._randn(b, tokens, width)
            return Case(lambda: teacher(x, grid), with_backend(edit, lambda: edit(x, grid)),
                        b * heads * tokens * tokens * self.elem, state_bytes)
        if section == "joint":
            image, text = self._randn(b, tokens, width), self._randn(b, s.text_tokens, width)
            joint = tokens + s.text_tokens
            return Case(lambda: teacher(image, text, grid), with_backend(edit, lambda: edit(image, text, grid)),
                        b * heads * joint * joint * self.elem, state_bytes)
        x = self._randn(b, tokens, width)
        context = self._randn(b, s.caption_tokens, width)
        modulation = self._randn(b, 6, width)
        return Case(lambda: teacher(x, context, modulation, grid),
                    with_backend(edit, lambda: edit(x, context, modulation, grid)),
                    b * heads * tokens * tokens * self.elem, state_bytes)


# ---------------------------------------------------------------------------------------------- running

@dataclass
class Row:
    section: str
    tokens: int
    grid: str
    backend: str
    teacher: Timing
    edit: Timing

    @property
    def speedup(self) -> Optional[float]:
        if self.teacher.median_s and self.edit.median_s:
            return self.teacher.median_s / self.edit.median_s
        return None


@dataclass
class BenchResults:
    config: BenchConfig
    environment: dict
    rows: list[Row] = field(default_factory=list)
    total_seconds: float = 0.0

    @classmethod
    def from_json(cls, data: dict) -> "BenchResults":
        """Results written by ``write_json`` (to print or plot them again without re-running)."""
        try:
            config = BenchConfig(device=data["device"]["type"], dtype=data["dtype"], tokens=tuple(sorted(
                {r["tokens"] for r in data["rows"]})), warmup=data["warmup"], repeats=data["repeats"],
                backends=tuple(data["backends"]), budget_seconds=data["budget_seconds"],
                sections=tuple(s for s in SECTION_ORDER if s in data["sections"]), batch=data["batch"],
                shapes=Shapes(**data["shapes"]), command=data.get("command", ""))
            environment = {"date": data["date"], "device": data["device"], "memory_method": data["memory_method"],
                           "load_average": data.get("load_average"), "load_average_end": data.get("load_average_end")}
            rows = [Row(r["section"], r["tokens"], r["grid"], r["backend"], Timing(**r["teacher"]), Timing(**r["edit"]))
                    for r in data["rows"]]
        except (KeyError, TypeError, ValueError) as e:
            raise BenchError(f"not a results file written by 'bench --json' ({type(e).__name__}: {e})") from None
        return cls(config, environment, rows, data.get("total_seconds", 0.0))

    def to_json(self) -> dict:
        c = self.config
        return {
            "benchmark": "python -m edit_core bench",
            "command": c.command,
            "date": self.environment["date"],
            "device": self.environment["device"],
            "torch": torch.__version__,
            "dtype": c.dtype,
            "batch": c.batch,
            "warmup": c.warmup,
            "repeats": c.repeats,
            "budget_seconds": c.budget_seconds,
            "backends": list(c.backends),
            "shapes": asdict(c.shapes),
            "sections": {name: section_titles(c.shapes)[name] for name in c.sections},
            "memory_method": self.environment["memory_method"],
            "load_average": self.environment.get("load_average"),
            "load_average_end": self.environment.get("load_average_end"),
            "total_seconds": round(self.total_seconds, 3),
            "rows": [{"section": r.section, "tokens": r.tokens, "grid": r.grid, "backend": r.backend,
                      "teacher": asdict(r.teacher), "edit": asdict(r.edit),
                      "speedup": r.speedup} for r in self.rows],
        }


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(config: BenchConfig) -> dict:
    if config.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        device = {"type": "cuda", "name": torch.cuda.get_device_name(0),
                  "memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda}
    else:
        device = {"type": "cpu", "name": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    env = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "device": device,
           "memory_method": CUDA_MEMORY_METHOD if config.device == "cuda" else CPU_MEMORY_METHOD}
    if hasattr(os, "getloadavg"):
        env["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return env


def describe_device(env: dict) -> str:
    d = env["device"]
    if d["type"] == "cuda":
        return f"cuda — {d['name']} ({d['memory_gib']} GiB, CUDA {d['cuda']})"
    return f"cpu — {d['name']}, {d['cores']} cores, {d['torch_threads']} torch threads"


def _estimate(history: list[tuple[int, float]], tokens: int, power: int) -> Optional[float]:
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


def run_benchmark(config: BenchConfig, log: Callable[[str], None] = print) -> BenchResults:
    """Run every section at every token count; ``log`` receives the table line by line as rows finish."""
    validate(config)
    torch.manual_seed(config.seed)
    results = BenchResults(config, environment(config))
    start = time.perf_counter()
    for line in header_lines(results):
        log(line)
    suite = Suite(config)
    titles = section_titles(config.shapes)
    for section in [s for s in SECTION_ORDER if s in config.sections]:
        log("")
        log(f"[{titles[section]}]")
        log(table_header())
        history: dict[str, list[tuple[int, float]]] = {}
        for tokens in config.tokens:
            side = math.isqrt(tokens)
            case = suite.case(section, tokens)
            contenders = [("teacher", case.teacher, 2)] + [(f"edit[{b}]", case.edit(b), 1) for b in config.backends]
            timings = _timed(contenders, history, tokens, config)
            timings[0].theoretical_bytes = case.teacher_bytes
            for backend, edit in zip(config.backends, timings[1:]):
                edit.theoretical_bytes = case.edit_bytes
                row = Row(section, tokens, f"{side}x{side}", backend, timings[0], edit)
                results.rows.append(row)
                log(format_row(row))
            del case
    results.total_seconds = time.perf_counter() - start
    if hasattr(os, "getloadavg"):
        results.environment["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    log("")
    for line in footer_lines(results):
        log(line)
    return results


def report_lines(results: BenchResults) -> list[str]:
    """The whole printed report of finished results (what ``run_benchmark`` logs as it goes)."""
    lines = header_lines(results)
    titles = section_titles(results.config.shapes)
    for section in [s for s in SECTION_ORDER if s in results.config.sections]:
        lines += ["", f"[{titles[section]}]", table_header()]
        lines += [format_row(r) for r in results.rows if r.section == section]
    return lines + [""] + footer_lines(results)


def _timed(contenders: list[tuple[str, Callable[[], Any], int]], history: dict, tokens: int,
           config: BenchConfig) -> list[Timing]:
    """Measure (key, call, cost exponent) contenders together, skipping those over budget."""
    timings: list[Optional[Timing]] = []
    run, warmups = [], []
    for key, fn, power in contenders:
        estimate = _estimate(history.get(key, []), tokens, power)
        if estimate is not None and estimate > config.budget_seconds:
            timings.append(Timing(skipped=f"est. {estimate:.0f}s > budget {config.budget_seconds:g}s"))
            continue
        timings.append(None)
        run.append(fn)
        warmups.append(0 if estimate is not None and estimate > LONG_CALL_SECONDS else config.warmup)
    measured = iter(measure_interleaved(run, config.device, warmups, config.repeats)) if run else iter(())
    timings = [t if t is not None else next(measured) for t in timings]
    for (key, _, _), timing in zip(contenders, timings):
        if timing.median_s is not None:
            history.setdefault(key, []).append((tokens, timing.median_s))
    return timings


# ---------------------------------------------------------------------------------------------- report

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


_COLUMNS = (("tokens", 7), ("grid", 9), ("backend", 8), ("teacher", 10), ("EDiT", 10), ("speed-up", 9),
            ("teacher mem", 12), ("EDiT mem", 10))


def table_header() -> str:
    return " ".join(f"{name:>{width}}" for name, width in _COLUMNS)


def format_row(row: Row) -> str:
    speedup = "—" if row.speedup is None else f"{row.speedup:.1f}×"
    cells = (str(row.tokens), row.grid.replace("x", "×"), row.backend, format_seconds(row.teacher.median_s),
             format_seconds(row.edit.median_s), speedup, format_bytes(row.teacher.peak_bytes),
             format_bytes(row.edit.peak_bytes))
    line = " ".join(f"{cell:>{width}}" for cell, (_, width) in zip(cells, _COLUMNS))
    notes = [f"{who} skipped: {t.skipped}" for who, t in (("teacher", row.teacher), ("EDiT", row.edit)) if t.skipped]
    return line + (f"   ({'; '.join(notes)})" if notes else "")


def header_lines(results: BenchResults) -> list[str]:
    c, env = results.config, results.environment
    lines = [f"EDiT latency benchmark — {env['date']}",
             f"device: {describe_device(env)}; torch {torch.__version__}; {c.dtype}; batch {c.batch}",
             f"timing: median of {c.repeats} after {c.warmup} warm-up (none where a call is estimated > "
             f"{LONG_CALL_SECONDS:g} s); speed-up = teacher time / EDiT time",
             f"budget: a case is skipped when its time per call extrapolated from the previous token counts "
             f"(teacher a·N + b·N², EDiT ∝ N) exceeds {c.budget_seconds:g} s"]
    if c.command:
        lines.insert(1, f"command: {c.command}")
    if c.shapes != FULL_SHAPES:
        lines.append(f"shapes: {asdict(c.shapes)} (NOT the real model widths)")
    load = env.get("load_average")
    if c.device == "cpu" and load and load[0] > env["device"]["torch_threads"]:
        lines.append(f"warning: load average {load[0]} exceeds the {env['device']['torch_threads']} torch threads; "
                     "other processes are competing for the CPU and timings are noisy")
    return lines


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
        by_section = {}
        for r in best:
            if r.section not in by_section or r.tokens > by_section[r.section].tokens:
                by_section[r.section] = r
        summary = ", ".join(f"{s} {r.speedup:.1f}× at {r.tokens}" for s, r in by_section.items())
        lines.insert(0, f"largest measured token count per section: {summary} ({c.dtype})")
    return lines


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


def write_plot(results: BenchResults, path: str) -> None:
    """Latency vs tokens, log-log, one panel per section: teacher solid, EDiT dashed per backend."""
    plt = require_matplotlib()
    c = results.config
    sections = [s for s in SECTION_ORDER if s in c.sections]
    cols = 2 if len(sections) > 1 else 1
    rows_n = math.ceil(len(sections) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(6.2 * cols, 4.2 * rows_n), squeeze=False)
    titles = section_titles(c.shapes)
    for ax, section in zip(axes.flat, sections):
        rows = [r for r in results.rows if r.section == section]
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
        ax.set_xscale("log", base=2)
        ax.margins(x=0.08, y=0.12)
        ax.set_yscale("log")
        ax.set_xticks(list(c.tokens))
        ax.set_xticklabels([str(t) for t in c.tokens])
        ax.set_xlabel("image tokens N")
        ax.set_ylabel("seconds per call (median)")
        ax.set_title(titles[section].split(":")[0] + ": " + titles[section].split(":", 1)[1].split(",")[0].strip(),
                     fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(sections):]:
        ax.axis("off")
    env = results.environment
    fig.suptitle(f"EDiT vs softmax latency — {describe_device(env)}, torch {torch.__version__}, {c.dtype}, "
                 f"batch {c.batch}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["BenchConfig", "BenchError", "BenchResults", "report_lines", "Shapes", "FULL_SHAPES", "TINY_SHAPES", "run_benchmark",
           "write_json", "write_plot", "parse_tokens", "default_repeats", "measure", "SoftmaxSelfAttention",
           "SoftmaxJointAttention", "PixArtShapedBlock", "section_titles", "FAMILY_SECTIONS", "SECTION_ORDER"]
