"""What a benchmark run is: its settings and their defaults, parsed and checked before anything is timed.

The benchmarked families are named once, in ``FAMILIES``; everything else about them (titles, which
sections they have, their transformers) is asked of their ``edit_core.families`` record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..families import Family, get_family

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_TOKENS = (1024, 4096, 16384, 65536)
BANDWIDTH_TOKENS = (4096, 16384, 65536, 262144)
MODEL_RESOLUTIONS = (1024, 2048, 4096, 8192)
TINY_BANDWIDTH_TOKENS = (64, 256)
TINY_RESOLUTIONS = (128, 256, 512)
SECTION_ORDER = ("op", "layer", "joint", "block", "tf-layer", "tf-joint", "tf-block", "memory", "op-bw", "model")
TRAINING_FREE_SECTIONS = ("tf-layer", "tf-joint", "tf-block")
"""The training-free mode (KV compression, ratio ``Shapes.kv_ratio``) against the same softmax teacher."""
LAYER_SECTIONS = ("op", "layer", "joint", "block") + TRAINING_FREE_SECTIONS
"""Sections timed per token count against a softmax teacher (the others per model size or bandwidth)."""
DEFAULT_SECTIONS = LAYER_SECTIONS
"""What runs without ``--sections``; ``memory``, ``op-bw`` and ``model`` run only when asked."""
FAMILIES = ("pixart_sigma", "sd35_medium")
"""The benchmarked families (and the default): ``Shapes`` holds one self-attention and one joint-attention
geometry, theirs."""
LONG_CALL_SECONDS = 5.0
"""A case whose extrapolated time per call exceeds this gets no warm-up: one-time costs (kernel selection,
allocator growth, lazy init) take milliseconds, and a warm-up call of a minute-long SDPA only costs time."""
MIN_TIMED_CALLS = 3
"""The ``case_seconds`` cap never cuts a contender below this many timed calls (a median of 3)."""
VAE_FACTOR = 8
"""Image pixels per latent pixel (PixArt-Σ and SD3.5 VAEs): a 1024² image is a 128² latent, 64² tokens."""


class BenchError(ValueError):
    """A benchmark setting that cannot be run (the message says which and why)."""


def layer_family(joint: bool) -> Family:
    """The benchmarked family whose layers the joint section (``joint``) or the op, layer and block sections
    time."""
    return next(f for f in map(get_family, FAMILIES) if f.joint == joint)


def family_sections(family: str) -> tuple[str, ...]:
    """The sections that time ``family``: its attention layer (joint, or op, layer and block), op-bw, model."""
    layers = ("joint", "tf-joint") if get_family(family).joint else ("op", "layer", "block", "tf-layer", "tf-block")
    return layers + ("memory", "op-bw", "model")


@dataclass(frozen=True)
class Shapes:
    """Layer geometry: ``pixart_*`` of the self-attention sections, ``sd35_*`` of the joint section (the field
    names saved results files use). ``FULL_SHAPES`` are the real models'; ``TINY_SHAPES`` are for smoke tests."""
    pixart_width: int
    pixart_heads: int
    sd35_width: int
    sd35_heads: int
    text_tokens: int  # joint context, as ComfyUI feeds SD3.5 (77 CLIP + 77 T5)
    caption_tokens: int = 120  # PixArt-Σ cross-attention context
    mlp_ratio: int = 4
    reduction: int = 4
    kv_ratio: int = 2  # the training-free sections' pooling window

    def attention(self, family: str) -> tuple[int, int]:
        """(width, heads) of ``family``'s attention: the joint geometry for a joint family, else the
        self-attention one."""
        if get_family(family).joint:
            return self.sd35_width, self.sd35_heads
        return self.pixart_width, self.pixart_heads

    def context_tokens(self, family: str) -> int:
        """Text tokens ``family`` attends to: the joint text, or the cross-attention caption."""
        return self.text_tokens if get_family(family).joint else self.caption_tokens


def _released_shapes() -> Shapes:
    """The benchmarked families' released layer geometry, from their registry records."""
    self_attention, joint = layer_family(joint=False).reference, layer_family(joint=True).reference
    return Shapes(pixart_width=self_attention.hidden_size, pixart_heads=self_attention.num_heads,
                  sd35_width=joint.hidden_size, sd35_heads=joint.num_heads, text_tokens=joint.text_tokens)


FULL_SHAPES = _released_shapes()
TINY_SHAPES = Shapes(pixart_width=64, pixart_heads=4, sd35_width=64, sd35_heads=4, text_tokens=8, caption_tokens=8)


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


def parse_families(text: str) -> tuple[str, ...]:
    """"pixart,sd35" → ("pixart_sigma", "sd35_medium"): canonical names (aliases accepted), in ``FAMILIES``
    order."""
    asked = [name.strip() for name in text.split(",") if name.strip()]
    known = {}
    for name in asked:
        try:
            known[name] = get_family(name)
        except KeyError:
            pass
    unknown = [name for name in asked if name not in known]
    if unknown or not asked:
        raise BenchError(f"--families: unknown {unknown}; choose from {', '.join(FAMILIES)}")
    without_shapes = [family.title for family in known.values() if family.name not in FAMILIES]
    if without_shapes:
        raise BenchError(f"--families: the benchmark has no layer shapes for {', '.join(without_shapes)}; choose "
                         f"from {', '.join(FAMILIES)}")
    chosen = {family.name for family in known.values()}
    return tuple(f for f in FAMILIES if f in chosen)


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
    from ..ops.backends import BACKEND_NAMES
    bad = [b for b in config.backends if b not in BACKEND_NAMES]
    if bad or not config.backends:
        raise BenchError(f"--backend: unknown backend(s) {bad}; choose from {', '.join(BACKEND_NAMES)}")


__all__ = ["BenchConfig", "BenchError", "Shapes", "FULL_SHAPES", "TINY_SHAPES", "FAMILIES", "SECTION_ORDER",
           "DEFAULT_SECTIONS", "LAYER_SECTIONS", "TRAINING_FREE_SECTIONS", "DTYPES", "DEFAULT_TOKENS", "BANDWIDTH_TOKENS", "MODEL_RESOLUTIONS",
           "TINY_BANDWIDTH_TOKENS", "TINY_RESOLUTIONS", "LONG_CALL_SECONDS", "MIN_TIMED_CALLS", "VAE_FACTOR",
           "layer_family", "family_sections", "default_repeats", "parse_tokens", "parse_resolutions",
           "parse_families", "validate"]
