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

Run only when asked (``--sections op-bw,model``), with their own size lists:

- ``op-bw``: the same op comparison at 4096…262144 tokens for PixArt-Σ heads (16 × 72) and SD3.5-M heads
  (24 × 64), with the linear-attention op's effective bandwidth: the bytes it must move (read q, k, v,
  write out; the D×D state is negligible) over its time, against a measured copy bandwidth.
- ``model``: one full transformer forward with random weights, a diffusers ``PixArtTransformer2DModel``
  shaped like PixArt-Σ and an ``SD3Transformer2DModel`` shaped like SD3.5-Medium, at 1024²…8192² pixels:
  SDPA (the teacher) vs the same model after ``apply_edit`` with an initial adapter, per backend, with
  analytic FLOPs (``model_flops``) turned into TFLOP/s against a measured matmul peak.

Protocol (paper-spec §4): warm-up calls, then the median of timed calls under ``torch.inference_mode``;
CUDA calls are timed with events after a synchronize (``op-bw`` uses ``triton.testing.do_bench``, which
flushes the L2 cache between calls, when triton is installed). Cases estimated at over
``LONG_CALL_SECONDS`` per call skip the warm-up (it would only absorb millisecond one-time costs), and a
contender gets at most ``case_seconds`` of timed calls per case (never fewer than ``MIN_TIMED_CALLS``).
A case is skipped, not run, when its time per call extrapolated from the previous sizes (teacher
a·N + b·N² through the last two, EDiT ∝ N; in ``model`` the previous time scaled by the FLOP ratio, or
at the first size FLOPs / matmul peak) exceeds the budget. A backend that cannot be timed here (triton
without CUDA, or under ``TRITON_INTERPRET=1``, whose CPU interpreter is for tests) is skipped with the
reason, never run.

Memory is CUDA's ``max_memory_allocated`` above the memory held before the timed calls; on CPU it is the
growth of the process's resident set size during a case's first call, sampled every 2 ms by a thread
(buffers ≥ 256 KiB are memory-mapped meanwhile, so the heap cannot hide them; approximate to a few MiB).
"""

from __future__ import annotations

import datetime
import gc
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
BANDWIDTH_TOKENS = (4096, 16384, 65536, 262144)
MODEL_RESOLUTIONS = (1024, 2048, 4096, 8192)
TINY_BANDWIDTH_TOKENS = (64, 256)
TINY_RESOLUTIONS = (128, 256, 512)
SECTION_ORDER = ("op", "layer", "joint", "block", "op-bw", "model")
DEFAULT_SECTIONS = ("op", "layer", "joint", "block")
"""What runs without ``--sections``; ``op-bw`` and ``model`` run only when asked."""
FAMILIES = ("pixart", "sd35")
FAMILY_SECTIONS = {"pixart": ("op", "layer", "block", "op-bw", "model"), "sd35": ("joint", "op-bw", "model")}
FAMILY_TITLES = {"pixart": "PixArt-Σ", "sd35": "SD3.5-M"}
CPU_MEMORY_METHOD = ("peak RSS growth during the first call of a case (sampled every 2 ms, buffers ≥ 256 KiB "
                     "memory-mapped meanwhile; approximate to a few MiB)")
CUDA_MEMORY_METHOD = "torch.cuda.max_memory_allocated above the memory held before the timed calls"
LONG_CALL_SECONDS = 5.0
"""A case whose extrapolated time per call exceeds this gets no warm-up: one-time costs (kernel selection,
allocator growth, lazy init) take milliseconds, and a warm-up call of a minute-long SDPA only costs time."""
MIN_TIMED_CALLS = 3
"""The ``case_seconds`` cap never cuts a contender below this many timed calls (a median of 3)."""
VAE_FACTOR = 8
"""Image pixels per latent pixel (PixArt-Σ and SD3.5 VAEs): a 1024² image is a 128² latent, 64² tokens."""


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


def section_titles(shapes: Shapes, tiny: Optional[bool] = None) -> dict[str, str]:
    s = shapes
    tiny = s != FULL_SHAPES if tiny is None else tiny
    p_head, j_head = s.pixart_width // s.pixart_heads, s.sd35_width // s.sd35_heads
    pixart, sd35 = model_config("pixart", tiny), model_config("sd35", tiny)
    return {
        "op": f"op: SDPA over N tokens vs linear_attention over compressed K/V (M≈N/4), {s.pixart_heads}×{p_head} heads",
        "layer": f"layer: PixArt-Σ self-attention, width {s.pixart_width} ({s.pixart_heads}×{p_head}): "
                 f"qkv+SDPA+out vs EDiTSelfAttention",
        "joint": f"joint: SD3.5-M joint attention, width {s.sd35_width} ({s.sd35_heads}×{j_head}, RMS qk-norm, "
                 f"{s.text_tokens} text tokens): SDPA over [text; image] vs MMEDiTJointAttention",
        "block": f"block: PixArt-Σ transformer block, width {s.pixart_width} (self-attn + cross-attn to "
                 f"{s.caption_tokens} tokens + {s.mlp_ratio}× MLP): softmax vs EDiT self-attention",
        "op-bw": f"op-bw: linear_attention alone (q over N tokens, k/v over M≈N/4 compressed) vs SDPA over N tokens, "
                 f"PixArt-Σ {s.pixart_heads}×{p_head} and SD3.5-M {s.sd35_heads}×{j_head} heads; GB/s = bytes the op "
                 f"must move (read q, k, v + write out) / time",
        "model": f"model: one transformer forward, random weights: PixArt-Σ-shaped ({_describe_model('pixart', pixart)}, "
                 f"{s.caption_tokens} caption tokens) and SD3.5-M-shaped ({_describe_model('sd35', sd35)}, "
                 f"{s.text_tokens} text tokens); SDPA vs apply_edit with an initial adapter",
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
    families: tuple[str, ...] = FAMILIES
    """``op-bw`` and ``model``: which models' heads / transformers (the other sections are one family each)."""
    bandwidth_tokens: tuple[int, ...] = BANDWIDTH_TOKENS
    resolutions: tuple[int, ...] = MODEL_RESOLUTIONS
    """``model``: square image sizes in pixels (latent = px/8, tokens = (px/16)²)."""
    case_seconds: float = 30.0
    """At most this much time of timed calls per contender and case (never fewer than MIN_TIMED_CALLS)."""
    tiny: bool = False
    """``model`` uses tiny transformer configs (smoke tests); the other sections follow ``shapes``."""


def default_repeats(device: str) -> tuple[int, int]:
    """(warmup, repeats): few on CPU, where one SDPA call at 16k tokens takes seconds; the protocol's on CUDA."""
    return (10, 30) if device == "cuda" else (1, 3)


def _parse_numbers(text: str, option: str) -> list[int]:
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            values.append(int(part))
        except ValueError:
            raise BenchError(f"{option}: {part!r} is not a whole number") from None
    if not values:
        raise BenchError(f"{option}: give at least one value")
    return values


def parse_tokens(text: str, option: str = "--tokens") -> tuple[int, ...]:
    """"1024,4096" → (1024, 4096); each must be a perfect square (the token grid is square)."""
    values = _parse_numbers(text, option)
    for n in values:
        side = math.isqrt(n) if n > 0 else 0
        if n < 4 or side * side != n:
            raise BenchError(f"{option}: {n} is not a square token count ≥ 4 (the grid is square: use e.g. "
                             "1024 = 32², 4096 = 64², 16384 = 128², 65536 = 256², 262144 = 512²)")
    return tuple(sorted(set(values)))


def parse_resolutions(text: str) -> tuple[int, ...]:
    """"1024,2048" → (1024, 2048): square image sizes in pixels, multiples of 16 (VAE 8 × patch 2)."""
    values = _parse_numbers(text, "--resolutions")
    for px in values:
        if px < 16 or px % (2 * VAE_FACTOR):
            raise BenchError(f"--resolutions: {px} is not an image size in pixels that is a positive multiple of 16 "
                             "(VAE factor 8 × patch 2), e.g. 1024, 2048, 4096, 8192")
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
    bad_families = [f for f in config.families if f not in FAMILIES]
    if bad_families or not config.families:
        raise BenchError(f"--families: unknown {bad_families}; choose from {', '.join(FAMILIES)}")
    if config.case_seconds <= 0:
        raise BenchError("--case-seconds must be positive")
    from .ops.backends import BACKEND_NAMES
    bad = [b for b in config.backends if b not in BACKEND_NAMES]
    if bad or not config.backends:
        raise BenchError(f"--backend: unknown backend(s) {bad}; choose from {', '.join(BACKEND_NAMES)}")


def _triton_interpreted() -> bool:
    """True when Triton kernels would run in Triton's CPU interpreter (``TRITON_INTERPRET=1``)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    try:
        from .ops.linear_attention import triton_impl
    except Exception:  # noqa: BLE001 - no triton: nothing is interpreted
        return False
    return triton_impl._kernels_interpreted()


def timing_problem(backend: str, device: str) -> Optional[str]:
    """Why EDiT's ``backend`` cannot be timed on ``device`` in this process, or None when it can.

    Triton without CUDA, or with ``TRITON_INTERPRET=1`` (the test suite sets it), would run the kernels in
    Triton's CPU interpreter, or not at all: such rows are reported as skipped with this reason, never
    timed. ``auto`` on CPU is the torch path (it never picks the interpreter), so it is always timed there."""
    if backend not in ("triton", "auto"):
        return None
    from .ops import backends

    backends.load_backend("linear_attention", "triton")
    if backend == "triton" and "triton" not in backends.available_backends("linear_attention"):
        return backends._UNAVAILABLE.get("triton", "the triton backend is not registered")
    interpreted = _triton_interpreted()
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


def _do_bench():
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
    do_bench = _do_bench()
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


# ---------------------------------------------------------------------------------------------- full models

PIXART_SIGMA_CONFIG = dict(sample_size=128, patch_size=2, in_channels=4, out_channels=8, num_layers=28,
                           attention_head_dim=72, num_attention_heads=16, cross_attention_dim=1152,
                           caption_channels=4096, norm_type="ada_norm_single", norm_elementwise_affine=False,
                           norm_eps=1e-6, use_additional_conditions=False, interpolation_scale=2)
"""diffusers ``PixArtTransformer2DModel`` config of PixArt-Σ-XL-2-1024-MS (28 blocks, 16 × 72, T5 4096)."""
SD35_MEDIUM_CONFIG = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                          attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                          caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=384,
                          dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
"""diffusers ``SD3Transformer2DModel`` config of SD3.5-Medium (24 blocks, 24 × 64, dual attention 0..12)."""
TINY_MODEL_CONFIGS = {
    "pixart": dict(PIXART_SIGMA_CONFIG, sample_size=16, num_layers=2, attention_head_dim=16, num_attention_heads=4,
                   cross_attention_dim=64, caption_channels=32),
    "sd35": dict(SD35_MEDIUM_CONFIG, sample_size=16, num_layers=2, attention_head_dim=16, num_attention_heads=4,
                 joint_attention_dim=32, caption_projection_dim=64, pooled_projection_dim=32, pos_embed_max_size=16,
                 dual_attention_layers=(0,)),
}
"""The same layouts at width 64, 2 blocks, for smoke tests (SD3's position table caps it at 256² px)."""
_MODEL_CLASSES = {"pixart": "PixArtTransformer2DModel", "sd35": "SD3Transformer2DModel"}
_ADAPTER_FAMILIES = {"pixart": "pixart_sigma", "sd35": "sd35_medium"}


def model_config(family: str, tiny: bool = False) -> dict:
    return dict((TINY_MODEL_CONFIGS[family] if tiny else {"pixart": PIXART_SIGMA_CONFIG,
                                                          "sd35": SD35_MEDIUM_CONFIG}[family]))


def _describe_model(family: str, config: dict) -> str:
    return f"{config['num_layers']} blocks, {config['num_attention_heads']}×{config['attention_head_dim']}"


def max_resolution(family: str, config: dict) -> Optional[int]:
    """The largest square image a model's position embedding covers, in pixels (None: no limit).
    SD3's ``pos_embed_max_size`` patches × patch size × VAE factor: 384 × 2 × 8 = 6144 for SD3.5-M."""
    if family == "sd35" and config.get("pos_embed_max_size"):
        return int(config["pos_embed_max_size"]) * int(config["patch_size"]) * VAE_FACTOR
    return None


def _self_attention_macs(grid: tuple[int, int], width: int, head_dim: int, *, edit: bool, reduction: int) -> int:
    """One image self-attention over the grid's N tokens, projections included.

    Softmax: q, k, v, out projections 4·N·C², scores and values 2·N²·C. EDiT: ConvFusion (3×3 conv C → C/r and
    1×1 conv C/r → C: 10·N·C²/r), q, k, v, out 4·N·C², two depthwise 3×3 stride-2 compressors 2·9·M·C, the
    state kᵀv M·C·D, and q·S + q·z (N·C·D + N·C), with M = ⌈h/2⌉·⌈w/2⌉."""
    n, c = grid[0] * grid[1], width
    if not edit:
        return 4 * n * c * c + 2 * n * n * c
    mh, mw = compressed_grid(grid)
    m, hidden = mh * mw, width // reduction
    conv_fusion = n * (9 * c * hidden + hidden * c)
    return conv_fusion + 4 * n * c * c + 2 * 9 * m * c + m * c * head_dim + n * c * head_dim + n * c


def model_flops(family: str, config: dict, grid: tuple[int, int], text_tokens: int, *, edit: bool,
                batch: int = 1, reduction: int = 4) -> int:
    """FLOPs of one diffusers transformer forward, SDPA teacher (``edit=False``) or after ``apply_edit`` with
    an adapter converting every attention it can (``edit=True``; MM-EDiT with ``eta="approx"``).

    Counted: 2 FLOPs per multiply-add of every Linear, convolution and attention product (q·kᵀ, p·v, the
    linear-attention state and its application), bias adds excluded — the convention of
    ``torch.utils.flop_counter``. Not counted: norms, activations, softmax exponentials, sums, the blend.
    ``grid`` is the image token grid (latent / patch size), ``text_tokens`` the caption (PixArt-Σ) or joint
    text (SD3.5) length. PixArt-Σ: patch embedding, adaLN-single (per sample), caption projection, per block a
    self-attention, a cross-attention to the caption and a 4× MLP, the output projection. SD3.5: patch
    embedding, timestep and pooled-text embeddings, context embedder, per block the adaLN modulations, the
    joint attention (one softmax over [image; text], or MM-EDiT: text rows softmax over all tokens, image
    rows linear attention + softmax to the text), the dual-attention ``attn2`` where present, 4× MLPs for
    both streams (the last block has no text MLP and no text output projection), the output projection."""
    heads, head_dim = int(config["num_attention_heads"]), int(config["attention_head_dim"])
    c, p, t = heads * head_dim, int(config["patch_size"]), int(text_tokens)
    n = grid[0] * grid[1]
    macs = n * int(config["in_channels"]) * p * p * c + n * c * p * p * int(config["out_channels"])  # patch in, out
    self_attention = _self_attention_macs(grid, c, head_dim, edit=edit, reduction=reduction)
    if family == "pixart":
        macs += 256 * c + c * c + 6 * c * c  # adaLN-single: timestep MLP, 6 modulation vectors
        macs += t * (int(config["caption_channels"]) * c + c * c)  # caption projection (2 Linears)
        cross = 2 * n * c * c + 2 * t * int(config["cross_attention_dim"]) * c + 2 * n * t * c
        macs += int(config["num_layers"]) * (self_attention + cross + 8 * n * c * c)
    elif family == "sd35":
        macs += 256 * c + c * c + int(config["pooled_projection_dim"]) * c + c * c  # timestep + pooled text MLPs
        macs += t * int(config["joint_attention_dim"]) * c  # context embedder
        macs += 2 * c * c  # norm_out modulation
        layers, dual = int(config["num_layers"]), set(config.get("dual_attention_layers") or ())
        mh, mw = compressed_grid(grid)
        m, hidden = mh * mw, c // reduction
        for i in range(layers):
            last, total = i == layers - 1, n + t
            macs += (9 if i in dual else 6) * c * c + (2 if last else 6) * c * c  # adaLN-zero modulations
            text_out = 0 if last else t * c * c
            if edit:
                joint = (5 * n * c * c + n * (9 * c * hidden + hidden * c) + 2 * 9 * m * c + 3 * t * c * c
                         + (0 if last else 2 * t * total * c) + m * c * head_dim + n * c * head_dim + n * c
                         + 2 * n * t * c + text_out)  # q (plain + ConvFusion), k, v, out; text rows; image rows
            else:
                joint = 4 * n * c * c + 3 * t * c * c + 2 * total * total * c + text_out
            macs += joint + (self_attention if i in dual else 0)
            macs += 8 * n * c * c + (0 if last else 8 * t * c * c)
    else:
        raise ValueError(f"unknown model family {family!r}; choose from {', '.join(FAMILIES)}")
    return 2 * macs * batch


def _diffusers_class(family: str):
    try:
        import diffusers
    except ImportError:
        raise BenchError("the model section needs diffusers: pip install 'diffusers>=0.32'") from None
    return getattr(diffusers, _MODEL_CLASSES[family])


def model_parameter_count(family: str, config: dict) -> int:
    """Parameters of the model, counted on the meta device (no memory)."""
    with torch.device("meta"):
        model = _diffusers_class(family)(**config)
    return sum(p.numel() for p in model.parameters())


def build_random_model(family: str, config: dict, device: str, dtype: torch.dtype) -> nn.Module:
    """The diffusers transformer with its own random init, created directly on ``device`` in ``dtype`` (no
    fp32 copy of the weights anywhere, no host copy on CUDA), in eval mode without gradients."""
    cls = _diffusers_class(family)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(**config)
    finally:
        torch.set_default_dtype(previous)
    return model.to(device).eval().requires_grad_(False)  # buffers made from numpy start on the host


def _free_memory_bytes(device: str) -> Optional[int]:
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


def model_inputs(family: str, config: dict, resolution: int, text_tokens: int, batch: int, device: str,
                 dtype: torch.dtype, generator: torch.Generator) -> dict:
    """Random forward arguments for a square image of ``resolution`` pixels (latent = px/8); ``generator`` is
    on ``device``."""
    latent = resolution // VAE_FACTOR

    def randn(*shape):  # made on the device: no host copy of a 262k-token latent
        return torch.randn(*shape, generator=generator, device=device, dtype=dtype)

    kwargs = {"hidden_states": randn(batch, int(config["in_channels"]), latent, latent),
              "timestep": torch.full((batch,), 500.0, device=device), "return_dict": False}
    if family == "pixart":
        kwargs["encoder_hidden_states"] = randn(batch, text_tokens, int(config["caption_channels"]))
        kwargs["added_cond_kwargs"] = {"resolution": None, "aspect_ratio": None}
    else:
        kwargs["encoder_hidden_states"] = randn(batch, text_tokens, int(config["joint_attention_dim"]))
        kwargs["pooled_projections"] = randn(batch, int(config["pooled_projection_dim"]))
    return kwargs


class ProcessorSwitch:
    """One model, teacher and EDiT: ``apply_edit`` once, then swap each converted attention's processor
    (a few attribute writes, untimed) before every call, and set the EDiT processors' backend."""

    def __init__(self, model: nn.Module, family: str, reduction: int, seed: int):
        from diffusers.models.attention_processor import Attention

        from .adapter import init_adapter_from_teacher
        from .integrations.diffusers import apply_edit

        attentions = {name: m for name, m in model.named_modules() if isinstance(m, Attention)}
        teacher = {name: m.processor for name, m in attentions.items()}
        adapter = init_adapter_from_teacher(model.state_dict(), _ADAPTER_FAMILIES[family], reduction=reduction,
                                            num_heads=int(model.config.num_attention_heads), seed=seed)
        apply_edit(model, adapter, backend="torch")
        self.layers = [(m, teacher[name], m.processor) for name, m in attentions.items()
                       if m.processor is not teacher[name]]

    def teacher(self) -> None:
        for attention, teacher, _ in self.layers:
            attention.processor = teacher

    def edit(self, backend: str) -> Callable[[], None]:
        def switch() -> None:
            for attention, _, edit in self.layers:
                edit.backend = backend
                attention.processor = edit
        return switch


# ---------------------------------------------------------------------------------------------- running

@dataclass
class Row:
    section: str
    tokens: int
    grid: str
    backend: str
    teacher: Timing
    edit: Timing
    family: Optional[str] = None
    """``op-bw``, ``model``: "pixart" or "sd35"."""
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


def _percent(value: Optional[float], reference: Optional[float]) -> Optional[float]:
    return 100.0 * value / reference if value and reference else None


_ROW_FIELDS = ("family", "heads", "resolution", "edit_bytes", "teacher_flops", "edit_flops")


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
            standard = sorted({r["tokens"] for r in data["rows"] if r["section"] in DEFAULT_SECTIONS})
            shapes = Shapes(**data["shapes"])
            config = BenchConfig(
                device=data["device"]["type"], dtype=data["dtype"],
                tokens=tuple(data.get("tokens") or standard or DEFAULT_TOKENS), warmup=data["warmup"],
                repeats=data["repeats"], backends=tuple(data["backends"]), budget_seconds=data["budget_seconds"],
                sections=tuple(s for s in SECTION_ORDER if s in data["sections"]), batch=data["batch"],
                shapes=shapes, command=data.get("command", ""), families=tuple(data.get("families", FAMILIES)),
                bandwidth_tokens=tuple(data.get("bandwidth_tokens", BANDWIDTH_TOKENS)),
                resolutions=tuple(data.get("resolutions", MODEL_RESOLUTIONS)),
                case_seconds=data.get("case_seconds", BenchConfig.case_seconds),
                tiny=data.get("tiny", shapes != FULL_SHAPES))
            environment = {"date": data["date"], "device": data["device"], "memory_method": data["memory_method"],
                           "torch": data.get("torch", "?"), "load_average": data.get("load_average"),
                           "load_average_end": data.get("load_average_end")}
            rows = [Row(r["section"], r["tokens"], r["grid"], r["backend"], Timing(**r["teacher"]), Timing(**r["edit"]),
                        **{name: r.get(name) for name in _ROW_FIELDS}) for r in data["rows"]]
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
            row.update({"edit_gbps": r.edit_gbps, "copy_percent": _percent(r.edit_gbps, refs.get("copy_gbps")),
                        "teacher_tflops": r.teacher_tflops, "edit_tflops": r.edit_tflops,
                        "peak_percent": _percent(r.edit_tflops, refs.get("matmul_tflops"))})
            data["rows"].append(row)
        return data


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
           "torch": torch.__version__,
           "memory_method": CUDA_MEMORY_METHOD if config.device == "cuda" else CPU_MEMORY_METHOD}
    if hasattr(os, "getloadavg"):
        env["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return env


def describe_device(env: dict) -> str:
    d = env["device"]
    if d["type"] == "cuda":
        return f"cuda — {d['name']} ({d['memory_gib']} GiB, CUDA {d['cuda']})"
    return f"cpu — {d['name']}, {d['cores']} cores, {d['torch_threads']} torch threads"


def _timer_name(device: str) -> str:
    return "CUDA events" if device == "cuda" else "time.perf_counter"


def measure_copy_bandwidth(config: BenchConfig) -> dict:
    """The device's copy bandwidth: ``dst.copy_(src)`` of 1 GiB on CUDA (256 MiB on CPU, 16 MiB with
    ``tiny``), read + write bytes over the median time; do_bench on CUDA when triton is installed."""
    size = 16 * 2**20 if config.tiny else (2**30 if config.device == "cuda" else 256 * 2**20)
    src = torch.ones(size, dtype=torch.uint8, device=config.device)
    dst = torch.zeros_like(src)  # both written once: the pages are resident before timing

    def copy():
        dst.copy_(src)

    if config.device == "cuda" and _do_bench() is not None:
        timing, timer = measure_do_bench(copy, None), "triton.testing.do_bench"
    else:
        timing, timer = measure(copy, config.device, 2, 5), _timer_name(config.device)
    del src, dst
    return {"copy_gbps": 2 * size / timing.median_s / 1e9, "copy_bytes": size,
            "copy_method": f"{'device-to-device' if config.device == 'cuda' else 'host'} copy_ of "
                           f"{format_bytes(size)}, read + write counted, median of {timer}"}


def measure_matmul_peak(config: BenchConfig) -> dict:
    """A dense-matmul ceiling: ``torch.mm`` of n×n by n×n in the benchmark dtype (n = 8192 on CUDA, 2048 on
    CPU, 256 with ``tiny``), 2·n³ FLOPs over the median time."""
    n = 256 if config.tiny else (8192 if config.device == "cuda" else 2048)
    dtype = DTYPES[config.dtype]
    generator = torch.Generator(device=config.device).manual_seed(config.seed)
    a, b = (torch.randn(n, n, generator=generator, device=config.device, dtype=dtype) for _ in range(2))
    out = torch.empty_like(a)

    def matmul():
        torch.mm(a, b, out=out)

    if config.device == "cuda" and _do_bench() is not None:
        timing, timer = measure_do_bench(matmul, None), "triton.testing.do_bench"
    else:
        timing, timer = measure(matmul, config.device, 2, 5), _timer_name(config.device)
    del a, b, out
    return {"matmul_tflops": 2 * n ** 3 / timing.median_s / 1e12, "matmul_size": n,
            "matmul_method": f"torch.mm {n}×{n}×{n} {config.dtype}, median of {timer}"}


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


@dataclass
class _Plan:
    """What one contender does at one case: skipped (why), or its warm-up and timed call counts."""
    key: str
    skipped: Optional[str] = None
    estimate: Optional[float] = None
    warmup: int = 0
    timed: int = 0


def _call_counts(estimate: Optional[float], config: BenchConfig) -> tuple[int, int]:
    """(warm-up, timed) calls: the configured counts, cut for slow calls to ≈ ``case_seconds`` of timed calls
    (never fewer than MIN_TIMED_CALLS) and a quarter of that of warm-up (none over LONG_CALL_SECONDS)."""
    if estimate is None or estimate <= 0:
        return config.warmup, config.repeats
    warmup = 0 if estimate > LONG_CALL_SECONDS else min(config.warmup, max(1, int(config.case_seconds / 4 / estimate)))
    timed = min(config.repeats, max(MIN_TIMED_CALLS, int(config.case_seconds / estimate)))
    return warmup, timed


Estimator = Callable[[str, int], tuple[Optional[float], bool]]
"""(history key, cost exponent) → (seconds per call or None, whether it is only a lower bound)."""


def _plan_case(contenders: list[tuple[str, int, Optional[str]]], history: dict, size: int, config: BenchConfig,
               estimator: Optional[Estimator] = None) -> list[_Plan]:
    """Plans for (history key, cost exponent, reason it cannot run or None) contenders at ``size``."""
    plans = []
    for key, power, problem in contenders:
        if problem is not None:
            plans.append(_Plan(key, skipped=problem))
            continue
        estimate, lower_bound = estimator(key, power) if estimator else (_estimate(history.get(key, []), size, power),
                                                                         False)
        if estimate is not None and estimate > config.budget_seconds:
            how = ("≥", " (FLOPs / matmul peak)") if lower_bound else ("", "")
            plans.append(_Plan(key, skipped=f"est. {how[0]}{estimate:.0f}s{how[1]} > budget {config.budget_seconds:g}s"))
            continue
        warmup, timed = _call_counts(estimate, config)
        plans.append(_Plan(key, estimate=estimate, warmup=warmup, timed=timed))
    return plans


def _measure_planned(calls: list[Optional[Callable[[], Any]]], plans: list[_Plan], config: BenchConfig, *,
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


def _record(history: dict, plans: list[_Plan], size, timings: list[Timing]) -> None:
    for plan, timing in zip(plans, timings):
        if timing.median_s is not None:
            history.setdefault(plan.key, []).append((size, timing.median_s))


def _contenders(config: BenchConfig) -> list[tuple[str, int, Optional[str]]]:
    """Teacher (cost ∝ N²) and one EDiT contender per backend (∝ N), with the reason a backend cannot be timed."""
    return [("teacher", 2, None)] + [(f"edit[{b}]", 1, timing_problem(b, config.device)) for b in config.backends]


def _release(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _run_layer_section(section: str, config: BenchConfig, suite: "Suite", results: BenchResults):
    """``op``, ``layer``, ``joint``, ``block``: rows as each token count finishes."""
    history: dict[str, list[tuple[int, float]]] = {}
    for tokens in config.tokens:
        side = math.isqrt(tokens)
        case = suite.case(section, tokens)
        plans = _plan_case(_contenders(config), history, tokens, config)
        calls = [case.teacher] + [case.edit(b) for b in config.backends]
        timings = _measure_planned(calls, plans, config)
        _record(history, plans, tokens, timings)
        timings[0].theoretical_bytes = case.teacher_bytes
        for backend, edit in zip(config.backends, timings[1:]):
            edit.theoretical_bytes = case.edit_bytes
            yield Row(section, tokens, f"{side}x{side}", backend, timings[0], edit)
        del case


def _bandwidth_timer(config: BenchConfig) -> str:
    return "triton.testing.do_bench" if config.device == "cuda" and _do_bench() is not None \
        else _timer_name(config.device)


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
        width, heads = (s.pixart_width, s.pixart_heads) if family == "pixart" else (s.sd35_width, s.sd35_heads)
        d = width // heads
        history: dict[str, list[tuple[int, float]]] = {}
        for tokens in config.bandwidth_tokens:
            side = math.isqrt(tokens)
            mh, mw = compressed_grid((side, side))
            m = mh * mw
            plans = _plan_case(_contenders(config), history, tokens, config)
            calls: list[Optional[Callable[[], Any]]] = [None] * len(plans)
            if plans[0].skipped is None:
                q, k, v = randn(b, heads, tokens, d), randn(b, heads, tokens, d), randn(b, heads, tokens, d)
                calls[0] = lambda: F.scaled_dot_product_attention(q, k, v)
            if any(p.skipped is None for p in plans[1:]):
                lq, lk, lv = F.relu(randn(b, heads, tokens, d)), F.relu(randn(b, heads, m, d)), randn(b, heads, m, d)
                for i, backend in enumerate(config.backends, start=1):
                    calls[i] = (lambda backend=backend: linear_attention(lq, lk, lv, backend=backend))
            timings = _measure_planned(calls, plans, config, do_bench=do_bench)
            _record(history, plans, tokens, timings)
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
        text = s.caption_tokens if family == "pixart" else s.text_tokens
        cap, patch = max_resolution(family, model_cfg), int(model_cfg["patch_size"])
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

            contenders = _contenders(config)
            if cap is not None and px > cap:
                why = (f"pos_embed_max_size {model_cfg['pos_embed_max_size']} caps {FAMILY_TITLES[family]} at "
                       f"{cap}² px")
                contenders = [(key, power, why) for key, power, _ in contenders]
            elif unavailable:
                contenders = [(key, power, unavailable) for key, power, _ in contenders]
            plans = _plan_case(contenders, history, flops["teacher"], config, estimator)
            if model is None and any(p.skipped is None for p in plans):
                need = model_parameter_count(family, model_cfg) * (torch.finfo(dtype).bits // 8)
                free = _free_memory_bytes(device)
                if free is not None and need > 0.8 * free:
                    unavailable = (f"its {need / 2**30:.1f} GiB of weights leave too little of the "
                                   f"{free / 2**30:.1f} GiB free for activations")
                    plans = [_Plan(p.key, skipped=p.skipped or unavailable) for p in plans]
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


def _time_model_case(model: nn.Module, switch: ProcessorSwitch, inputs: dict, plans: list[_Plan],
                     config: BenchConfig) -> list[Timing]:
    """The teacher and each backend's EDiT on one model, interleaved; holds no reference once it returns."""
    def forward():
        return model(**inputs)

    prepares = [switch.teacher] + [switch.edit(b) for b in config.backends]
    return _measure_planned([forward] * len(plans), plans, config, prepares=prepares)


_SECTION_RUNNERS = {"op-bw": _run_bandwidth_section, "model": _run_model_section}


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
        results.references.update(measure_copy_bandwidth(config), op_bw_timer=_bandwidth_timer(config))
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


def report_lines(results: BenchResults) -> list[str]:
    """The whole printed report of finished results (what ``run_benchmark`` logs as it goes)."""
    lines = header_lines(results)
    for section in [s for s in SECTION_ORDER if s in results.config.sections]:
        lines += section_lines(results, section)
        lines += [format_row(r, results.references) for r in results.rows if r.section == section]
    return lines + [""] + footer_lines(results)


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
_BANDWIDTH_COLUMNS = (("model", 7), ("heads", 6), ("tokens", 7), ("grid", 9), ("backend", 8), ("SDPA", 10), ("lin-attn", 10),
                      ("speed-up", 9), ("GB/s", 7), ("% copy", 7), ("SDPA TFLOP/s", 13), ("lin-attn mem", 13))
_MODEL_COLUMNS = (("model", 7), ("image", 11), ("tokens", 7), ("backend", 8), ("SDPA", 10), ("EDiT", 10),
                  ("speed-up", 9), ("SDPA TFLOP/s", 13), ("EDiT TFLOP/s", 13), ("% peak", 7), ("SDPA mem", 10),
                  ("EDiT mem", 10))


_TEXT_COLUMNS = ("model", "backend", "notes")


def _columns(section: str) -> tuple[tuple[str, int], ...]:
    return {"op-bw": _BANDWIDTH_COLUMNS, "model": _MODEL_COLUMNS}.get(section, _COLUMNS)


def table_header(section: str = "op") -> str:
    return " ".join(f"{name:>{width}}" for name, width in _columns(section))


def _cells(row: Row, references: dict) -> list[str]:
    speedup = "—" if row.speedup is None else f"{row.speedup:.1f}×"
    teacher, edit = format_seconds(row.teacher.median_s), format_seconds(row.edit.median_s)
    if row.section == "op-bw":
        return [row.family or "", (row.heads or "").replace("x", "×"), str(row.tokens), row.grid.replace("x", "×"), row.backend,
                teacher, edit, speedup, _format_number(row.edit_gbps),
                _format_percent(_percent(row.edit_gbps, references.get("copy_gbps"))),
                _format_number(row.teacher_tflops), format_bytes(row.edit.peak_bytes)]
    if row.section == "model":
        return [row.family or "", f"{row.resolution}²", str(row.tokens), row.backend, teacher, edit, speedup,
                _format_number(row.teacher_tflops), _format_number(row.edit_tflops),
                _format_percent(_percent(row.edit_tflops, references.get("matmul_tflops"))),
                format_bytes(row.teacher.peak_bytes), format_bytes(row.edit.peak_bytes)]
    return [str(row.tokens), row.grid.replace("x", "×"), row.backend, teacher, edit, speedup,
            format_bytes(row.teacher.peak_bytes), format_bytes(row.edit.peak_bytes)]


def _notes(row: Row) -> str:
    teacher = "teacher" if row.section in DEFAULT_SECTIONS else "SDPA"
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
    return (f"median of {config.repeats} after {config.warmup} warm-up (none where a call is estimated > "
            f"{LONG_CALL_SECONDS:g} s; at most {config.case_seconds:g} s of timed calls per contender and case, "
            f"never fewer than {MIN_TIMED_CALLS})")


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
    return row.section if row.family is None else f"{row.section} {row.family}"


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
        if section in DEFAULT_SECTIONS:
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
            ax.set_title(f"{section} {FAMILY_TITLES[family]}: " + {"op-bw": "linear_attention op vs SDPA",
                                                                  "model": "one transformer forward"}[section],
                         fontsize=9)
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


__all__ = ["BenchConfig", "BenchError", "BenchResults", "report_lines", "markdown_lines", "write_markdown", "Shapes",
           "FULL_SHAPES", "TINY_SHAPES", "run_benchmark", "write_json", "write_plot", "parse_tokens",
           "parse_resolutions", "default_repeats", "measure", "measure_do_bench", "measure_copy_bandwidth",
           "measure_matmul_peak", "model_flops", "model_config", "build_random_model", "timing_problem",
           "SoftmaxSelfAttention", "SoftmaxJointAttention", "PixArtShapedBlock", "section_titles", "FAMILY_SECTIONS",
           "SECTION_ORDER", "DEFAULT_SECTIONS", "FAMILIES"]
