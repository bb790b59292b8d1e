"""End-to-end demo on a tiny random PixArt-Σ-layout diffusers model (no downloads, CPU in seconds).

The demo is a list of named steps over one shared ``DemoContext``:

    build    the teacher (``tiny.PIXART_DEMO``, seeded) and one noisy latent + random caption per resolution
    init     ``init_adapter_from_teacher`` → save to a temporary file → ``load_adapter`` (the real file format)
    teacher  time the teacher at every resolution and keep its predictions
    apply    ``apply_edit``: every block's self-attention becomes EDiT linear compressed attention, in place
    edit     time the patched model; agreement with the teacher (relative RMSE, cosine similarity)
    restore  ``remove_edit``; the model's predictions must equal the teacher's bit for bit

A new step (e.g. a short distillation between ``apply`` and ``edit``) is one function plus
``register_step(Step(...), after="apply")``. The model is random, so agreement numbers only show that
the conversion is wired correctly (an undistilled adapter is plain ReLU linear attention), never quality.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from . import tiny

DESCRIPTION = ("End to end on an embedded tiny PixArt-Sigma-layout diffusers model with random weights (no "
               "downloads): build the teacher, make the starting adapter (saved and loaded back), apply_edit, "
               "time the teacher and the EDiT model on the same noisy latent and random caption at each "
               "resolution (speed ratio, relative RMSE, cosine similarity), then remove_edit and check the "
               "teacher's predictions come back bit for bit. Steps: build, init, teacher, apply, edit, restore.")


class DemoError(Exception):
    """A demo setting that cannot be run (printed as one error line)."""


@dataclass
class DemoOptions:
    model_config: dict = field(default_factory=lambda: dict(tiny.PIXART_DEMO))
    resolutions: tuple[int, ...] = (64, 128)  # latent sizes; tokens = (size / 2)²
    warmup: int = 1
    repeats: int = 3
    caption_tokens: int = 120
    timestep: int = 500
    backend: str = "auto"
    seed: int = 0
    steps: Optional[tuple[str, ...]] = None  # None: every registered step, in order
    quick: bool = False
    keep_adapter: Optional[str] = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "DemoOptions":
        options = cls(model_config=dict(tiny.PIXART_QUICK if args.quick else tiny.PIXART_DEMO),
                      resolutions=(32, 64) if args.quick else (64, 128), warmup=1,
                      repeats=1 if args.quick else 3, backend=args.backend, seed=args.seed, quick=args.quick,
                      keep_adapter=args.keep_adapter)
        if args.resolutions:
            options.resolutions = _parse_resolutions(args.resolutions)
        if args.repeats is not None:
            options.repeats = args.repeats
        if args.warmup is not None:
            options.warmup = args.warmup
        if args.steps:
            options.steps = tuple(s.strip() for s in args.steps.split(",") if s.strip())
        if options.repeats < 1 or options.warmup < 0:
            raise DemoError("--repeats must be ≥ 1 and --warmup ≥ 0")
        return options


def _parse_resolutions(text: str) -> tuple[int, ...]:
    sizes = []
    for part in text.split(","):
        try:
            size = int(part)
        except ValueError:
            raise DemoError(f"--resolutions: {part.strip()!r} is not a whole number") from None
        if size < 4 or size % 2:
            raise DemoError(f"--resolutions: latent size {size} must be even and ≥ 4 (tokens = (size/2)²)")
        sizes.append(size)
    return tuple(sizes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="a 2-block width-64 model at latents 32² and 64², one timed call (for tests, ~1 s)")
    parser.add_argument("--resolutions", default=None,
                        help="latent sizes, comma-separated (default 64,128 = 1024 and 4096 tokens; quick: 32,64)")
    parser.add_argument("--steps", default=None,
                        help="run only these demo steps, comma-separated, in the demo's order "
                             f"(default all: {','.join(s.name for s in STEPS)})")
    parser.add_argument("--repeats", type=int, default=None, help="timed forwards per model and resolution (default 3; quick 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed forwards first")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch"),
                        help="EDiT attention backend for apply_edit (the demo runs on the CPU, so no triton)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model weights, inputs and adapter init")
    parser.add_argument("--keep-adapter", metavar="FILE", default=None,
                        help="save the demo's adapter here instead of a temporary file")


# ---------------------------------------------------------------------------------------------- context

@dataclass
class ResolutionResult:
    latent: int
    tokens: int
    teacher_s: Optional[float] = None
    edit_s: Optional[float] = None
    rel_rmse: Optional[float] = None
    cosine: Optional[float] = None
    restored_identical: Optional[bool] = None

    @property
    def speedup(self) -> Optional[float]:
        return self.teacher_s / self.edit_s if self.teacher_s and self.edit_s else None


@dataclass
class DemoContext:
    options: DemoOptions
    log: Callable[[str], None]
    model: Optional[torch.nn.Module] = None
    inputs: dict[int, tuple] = field(default_factory=dict)  # latent size → (latent, caption, timestep)
    teacher_outputs: dict[int, torch.Tensor] = field(default_factory=dict)
    adapter: Optional[object] = None
    adapter_path: Optional[str] = None
    results: dict[int, ResolutionResult] = field(default_factory=dict)
    ok: bool = True
    workdir: Optional[str] = None

    def forward(self, latent_size: int) -> torch.Tensor:
        latent, caption, timestep = self.inputs[latent_size]
        with torch.inference_mode():
            return self.model(latent, caption, timestep, return_dict=False)[0]

    def timed(self, latent_size: int) -> tuple[float, torch.Tensor]:
        """Median seconds per forward after warm-up, and the first forward's prediction."""
        first, times = None, []
        for i in range(self.options.warmup + self.options.repeats):
            start = time.perf_counter()
            output = self.forward(latent_size)
            if i >= self.options.warmup:
                times.append(time.perf_counter() - start)
            first = output if first is None else first
        return statistics.median(times), first


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[DemoContext], None]
    requires: tuple[str, ...] = ()
    help: str = ""


# ---------------------------------------------------------------------------------------------- steps

def step_build(ctx: DemoContext) -> None:
    o, cfg = ctx.options, ctx.options.model_config
    try:
        ctx.model = tiny.build_tiny_pixart(cfg, seed=o.seed)
    except ImportError as e:
        raise DemoError(str(e)) from None
    params = sum(p.numel() for p in ctx.model.parameters())
    ctx.log(f"[build]   teacher: diffusers PixArtTransformer2DModel, {cfg['num_layers']} blocks, width "
            f"{tiny.config_width(cfg)} ({cfg['num_attention_heads']} heads × {cfg['attention_head_dim']}), "
            f"{params / 1e6:.2f}M parameters, seed {o.seed}")
    generator = torch.Generator().manual_seed(o.seed + 1)
    for size in o.resolutions:
        latent = torch.randn(1, cfg["in_channels"], size, size, generator=generator)
        caption = torch.randn(1, o.caption_tokens, cfg["caption_channels"], generator=generator)
        ctx.inputs[size] = (latent, caption, torch.tensor([o.timestep]))
        ctx.results[size] = ResolutionResult(size, (size // cfg["patch_size"]) ** 2)
    ctx.log(f"[build]   inputs: one noisy latent per resolution ({', '.join(f'{s}²' for s in o.resolutions)}), "
            f"{o.caption_tokens} random caption embeddings, timestep {o.timestep}")


def step_init(ctx: DemoContext) -> None:
    from .adapter import init_adapter_from_teacher, load_adapter, save_adapter

    heads = tiny.config_heads(ctx.options.model_config)  # the tiny width is not a multiple of 72
    adapter = init_adapter_from_teacher(ctx.model.state_dict(), "pixart_sigma", num_heads=heads, seed=ctx.options.seed)
    path = ctx.options.keep_adapter or os.path.join(ctx.workdir, "edit-demo.safetensors")
    save_adapter(adapter, path)
    ctx.adapter, ctx.adapter_path = load_adapter(path, expect_family="pixart_sigma"), path
    n = sum(t.numel() for t in ctx.adapter.tensors.values())
    ctx.log(f"[init]    starting adapter: {len(ctx.adapter.config.layers())} layers, {n / 1e3:.1f}k parameters, "
            f"reduction {ctx.adapter.config.reduction}; saved to {path} ({os.path.getsize(path) / 1024:.0f} KiB) "
            "and loaded back")


def step_teacher(ctx: DemoContext) -> None:
    for size, result in ctx.results.items():
        result.teacher_s, ctx.teacher_outputs[size] = ctx.timed(size)
        ctx.log(f"[teacher] latent {size}² ({result.tokens} tokens): {_ms(result.teacher_s)} per forward")


def step_apply(ctx: DemoContext) -> None:
    try:
        from .integrations.diffusers import apply_edit
    except ImportError as e:
        raise DemoError(f"the demo needs diffusers ({e}): pip install 'diffusers>=0.32'") from None
    apply_edit(ctx.model, ctx.adapter, backend=ctx.options.backend)
    ctx.log(f"[apply]   apply_edit: {len(ctx.adapter.config.layers())} self-attentions (attn1) now EDiT linear "
            f"compressed attention, backend {ctx.options.backend}; cross-attention stays softmax")


def step_edit(ctx: DemoContext) -> None:
    for size, result in ctx.results.items():
        result.edit_s, output = ctx.timed(size)
        teacher = ctx.teacher_outputs.get(size)
        if teacher is not None:
            a, e = output.double().flatten(), teacher.double().flatten()
            result.rel_rmse = float((a - e).pow(2).mean().sqrt() / e.pow(2).mean().sqrt().clamp_min(1e-30))
            result.cosine = float(torch.nn.functional.cosine_similarity(a, e, dim=0))
        if not bool(torch.isfinite(output).all()):
            ctx.ok = False
            ctx.log(f"[edit]    latent {size}²: the EDiT prediction has NaN/inf values")
    ctx.log("[edit]    EDiT vs teacher (same latent, caption and timestep):")
    for line in result_table(ctx.results.values()):
        ctx.log("          " + line)


def step_restore(ctx: DemoContext) -> None:
    from .integrations.diffusers import remove_edit

    remove_edit(ctx.model)
    for size, result in ctx.results.items():
        result.restored_identical = torch.equal(ctx.forward(size), ctx.teacher_outputs[size])
    identical = all(r.restored_identical for r in ctx.results.values())
    ctx.ok = ctx.ok and identical
    ctx.log(f"[restore] remove_edit: predictions bit-identical to the teacher's at "
            f"{', '.join(f'{s}²' for s in ctx.results)}: {'yes' if identical else 'NO'}")


STEPS: list[Step] = [
    Step("build", step_build, help="teacher model and inputs"),
    Step("init", step_init, ("build",), "starting adapter, saved and loaded back"),
    Step("teacher", step_teacher, ("build",), "teacher timings and predictions"),
    Step("apply", step_apply, ("init",), "apply_edit"),
    Step("edit", step_edit, ("apply",), "EDiT timings and agreement"),
    Step("restore", step_restore, ("apply", "teacher"), "remove_edit restores the teacher bit for bit"),
]


def register_step(step: Step, *, after: str) -> None:
    """Insert a demo step after the step named ``after`` (replacing a step of the same name)."""
    names = [s.name for s in STEPS]
    if after not in names:
        raise KeyError(f"no demo step {after!r}; steps: {', '.join(names)}")
    if step.name in names:
        del STEPS[names.index(step.name)]
        names.remove(step.name)
    STEPS.insert(names.index(after) + 1, step)


def select_steps(names: Optional[tuple[str, ...]]) -> list[Step]:
    known = {s.name: s for s in STEPS}
    if names is None:
        return list(STEPS)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise DemoError(f"--steps: unknown step(s) {', '.join(unknown)}; steps: {', '.join(known)}")
    chosen = [s for s in STEPS if s.name in names]
    for step in chosen:
        missing = [r for r in step.requires if r not in names]
        if missing:
            raise DemoError(f"--steps: step {step.name!r} needs {', '.join(repr(m) for m in missing)}")
    return chosen


# ---------------------------------------------------------------------------------------------- running

@dataclass
class DemoReport:
    results: list[ResolutionResult]
    ok: bool
    total_seconds: float
    adapter_path: Optional[str] = None


def _ms(seconds: Optional[float]) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:.0f} ms"


def result_table(results) -> list[str]:
    lines = [f"{'latent':>7} {'tokens':>7} {'teacher':>9} {'EDiT':>9} {'speed-up':>9} {'rel-RMSE':>9} {'cosine':>7}"]
    for r in results:
        lines.append(f"{str(r.latent) + '²':>7} {r.tokens:>7} {_ms(r.teacher_s):>9} {_ms(r.edit_s):>9} "
                     f"{'—' if r.speedup is None else f'{r.speedup:.2f}×':>9} "
                     f"{'—' if r.rel_rmse is None else f'{r.rel_rmse:.3f}':>9} "
                     f"{'—' if r.cosine is None else f'{r.cosine:.4f}':>7}")
    return lines


def run_demo(options: Optional[DemoOptions] = None, log: Callable[[str], None] = print) -> DemoReport:
    """Run the selected steps in order; ``report.ok`` is False if a check failed (NaN, restore not exact)."""
    options = options or DemoOptions()
    steps = select_steps(options.steps)
    start = time.perf_counter()
    cfg = options.model_config
    log(f"EDiT demo on a TINY RANDOM PixArt-Sigma-layout model ({cfg['num_layers']} blocks, width "
        f"{tiny.config_width(cfg)}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads. The weights are "
        "random and the adapter is undistilled, so the agreement numbers are a sanity check of the conversion, "
        "not image quality; timings show where attention starts to dominate.")
    with tempfile.TemporaryDirectory(prefix="edit-demo-") as workdir:
        ctx = DemoContext(options, log, workdir=workdir)
        for step in steps:
            step.run(ctx)
        adapter_path = ctx.adapter_path if options.keep_adapter else None
    total = time.perf_counter() - start
    log(f"demo {'finished' if ctx.ok else 'FAILED'} in {total:.1f} s")
    return DemoReport(list(ctx.results.values()), ctx.ok, total, adapter_path)


__all__ = ["DemoOptions", "DemoReport", "DemoError", "Step", "STEPS", "register_step", "run_demo", "add_arguments"]
