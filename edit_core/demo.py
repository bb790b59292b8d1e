"""End-to-end demo on a tiny random PixArt-Σ-layout diffusers model (no downloads, CPU in seconds).

The demo is a list of named steps over one shared ``DemoContext``:

    build    the teacher (``tiny.PIXART_DEMO``, seeded, made structured by ``distill.quick.structured_tiny_teacher``:
             a constant key offset the starting adapter cannot read) and one noisy latent + random caption per
             resolution
    init     ``init_adapter_from_teacher`` → save to a temporary file → ``load_adapter`` (the real file format)
    teacher  time the teacher at every resolution and keep its predictions
    apply    ``apply_edit``: every block's self-attention becomes EDiT linear compressed attention, in place
    distill  the starting adapter's agreement with the teacher, then ``quick_distill`` (a short data-free run on
             random latents and captions) and ``apply_edit`` with the distilled adapter
    edit     time the patched model; agreement with the teacher (relative RMSE, cosine similarity)
    restore  ``remove_edit``; the model's predictions must equal the teacher's bit for bit

A new step is one function plus ``register_step(Step(...), after=...)``. The model is random, so agreement
numbers show that the conversion and the distillation are wired correctly, never image quality.
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
               "downloads) and a key offset the starting adapter cannot read: build the teacher, make the "
               "starting adapter (saved and loaded back), apply_edit, distill the adapter for a few seconds, "
               "time the teacher and the EDiT model on the same noisy latent and random caption at each "
               "resolution (speed ratio; relative RMSE and cosine similarity of the starting and the distilled "
               "adapter), then remove_edit and check the teacher's predictions come back bit for bit. Steps: "
               "build, init, teacher, apply, distill, edit, restore.")
DISTILL_STEPS = 60  # ~6 s on 2 CPU cores at demo size; the student's error drops about 5×
QUICK_DISTILL_STEPS = 20


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
    distill_steps: int = DISTILL_STEPS

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "DemoOptions":
        options = cls(model_config=dict(tiny.PIXART_QUICK if args.quick else tiny.PIXART_DEMO),
                      resolutions=(32, 64) if args.quick else (64, 128), warmup=1,
                      repeats=1 if args.quick else 3, backend=args.backend, seed=args.seed, quick=args.quick,
                      keep_adapter=args.keep_adapter,
                      distill_steps=QUICK_DISTILL_STEPS if args.quick else DISTILL_STEPS)
        if args.resolutions:
            options.resolutions = _parse_resolutions(args.resolutions)
        if args.repeats is not None:
            options.repeats = args.repeats
        if args.warmup is not None:
            options.warmup = args.warmup
        if args.steps:
            options.steps = tuple(s.strip() for s in args.steps.split(",") if s.strip())
        if args.distill_steps is not None:
            options.distill_steps = args.distill_steps
        if options.repeats < 1 or options.warmup < 0:
            raise DemoError("--repeats must be ≥ 1 and --warmup ≥ 0")
        if options.distill_steps < 1:
            raise DemoError("--distill-steps must be ≥ 1 (leave the step out with --steps to skip it)")
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
    parser.add_argument("--distill-steps", type=int, default=None,
                        help=f"optimizer steps of the distill step (default {DISTILL_STEPS}; "
                             f"quick {QUICK_DISTILL_STEPS})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model weights, inputs and adapter init")
    parser.add_argument("--keep-adapter", metavar="FILE", default=None,
                        help="save the demo's adapter (the distilled one when the distill step runs) here instead "
                             "of a temporary file")


# ---------------------------------------------------------------------------------------------- context

@dataclass
class ResolutionResult:
    latent: int
    tokens: int
    teacher_s: Optional[float] = None
    edit_s: Optional[float] = None
    rel_rmse: Optional[float] = None
    cosine: Optional[float] = None
    init_rel_rmse: Optional[float] = None  # the starting adapter's, when the distill step ran
    init_cosine: Optional[float] = None
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
    distill: Optional[dict] = None  # the distill step's numbers
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
        from .distill.quick import TEACHER_SETTINGS, structured_tiny_teacher

        ctx.model = structured_tiny_teacher("pixart_sigma", seed=o.seed, config=cfg)
    except ImportError as e:
        raise DemoError(str(e)) from None
    params = sum(p.numel() for p in ctx.model.parameters())
    settings = TEACHER_SETTINGS["pixart_sigma"]
    ctx.log(f"[build]   teacher: diffusers PixArtTransformer2DModel, {cfg['num_layers']} blocks, width "
            f"{tiny.config_width(cfg)} ({cfg['num_attention_heads']} heads × {cfg['attention_head_dim']}), "
            f"{params / 1e6:.2f}M parameters, seed {o.seed}; random weights made structured: query/key weights "
            f"× {settings['qk_scale']}, key biases − {settings['key_offset']} (softmax ignores the offset, the "
            "starting adapter's ReLU linear attention does not: distillation has something real to learn)")
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


def agreement(output: torch.Tensor, teacher: torch.Tensor) -> tuple[float, float]:
    """(relative RMSE, cosine similarity) of a prediction with the teacher's, in float64."""
    a, e = output.double().flatten(), teacher.double().flatten()
    return (float((a - e).pow(2).mean().sqrt() / e.pow(2).mean().sqrt().clamp_min(1e-30)),
            float(torch.nn.functional.cosine_similarity(a, e, dim=0)))


def step_distill(ctx: DemoContext) -> None:
    from .adapter import save_adapter
    from .distill.quick import quick_distill
    from .integrations.diffusers import apply_edit

    for size, result in ctx.results.items():
        teacher = ctx.teacher_outputs.get(size)
        if teacher is not None:
            result.init_rel_rmse, result.init_cosine = agreement(ctx.forward(size), teacher)
    steps = ctx.options.distill_steps
    run = quick_distill("pixart_sigma", teacher=ctx.model, steps=steps, seed=ctx.options.seed)  # gives it back plain
    apply_edit(ctx.model, run.adapter, backend=ctx.options.backend)
    ctx.adapter = run.adapter
    if ctx.options.keep_adapter:
        save_adapter(run.adapter, ctx.options.keep_adapter)
    ctx.distill = {"steps": run.steps, "seconds": run.seconds, "error_before": run.error_before,
                   "error_after": run.error_after, "improvement": run.improvement}
    improved = run.error_after < run.error_before
    ctx.ok = ctx.ok and improved
    ctx.log(f"[distill] quick_distill: {run.steps} steps (batch 4, AdamW, attention-layer + output-KD losses) on "
            f"random smooth 16² latents and captions, {run.seconds:.1f} s; the student's error vs the teacher on "
            f"held-out noise {run.error_before:.3f} → {run.error_after:.3f} "
            f"({run.improvement:.1f}× {'lower' if improved else 'NOT lower'}); the distilled adapter is applied"
            + (f" and saved to {ctx.options.keep_adapter}" if ctx.options.keep_adapter else ""))


def step_edit(ctx: DemoContext) -> None:
    for size, result in ctx.results.items():
        result.edit_s, output = ctx.timed(size)
        teacher = ctx.teacher_outputs.get(size)
        if teacher is not None:
            result.rel_rmse, result.cosine = agreement(output, teacher)
        if not bool(torch.isfinite(output).all()):
            ctx.ok = False
            ctx.log(f"[edit]    latent {size}²: the EDiT prediction has NaN/inf values")
    ctx.log("[edit]    EDiT vs teacher (same latent, caption and timestep)"
            + (", starting → distilled adapter:" if ctx.distill else ":"))
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
    Step("distill", step_distill, ("apply",), "a short distillation of the adapter (quick_distill)"),
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
    distill: Optional[dict] = None


def _ms(seconds: Optional[float]) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:.0f} ms"


def _number(value: Optional[float], digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def result_table(results) -> list[str]:
    results = list(results)
    distilled = any(r.init_rel_rmse is not None for r in results)
    head = f"{'latent':>7} {'tokens':>7} {'teacher':>9} {'EDiT':>9} {'speed-up':>9}"
    lines = [head + (f" {'rel-RMSE init → distilled':>26} {'cosine init → distilled':>25}" if distilled
                     else f" {'rel-RMSE':>9} {'cosine':>7}")]
    for r in results:
        line = (f"{str(r.latent) + '²':>7} {r.tokens:>7} {_ms(r.teacher_s):>9} {_ms(r.edit_s):>9} "
                f"{'—' if r.speedup is None else f'{r.speedup:.2f}×':>9}")
        if distilled:
            line += (f" {_number(r.init_rel_rmse, 3) + ' → ' + _number(r.rel_rmse, 3):>26}"
                     f" {_number(r.init_cosine, 4) + ' → ' + _number(r.cosine, 4):>25}")
        else:
            line += f" {_number(r.rel_rmse, 3):>9} {_number(r.cosine, 4):>7}"
        lines.append(line)
    return lines


def run_demo(options: Optional[DemoOptions] = None, log: Callable[[str], None] = print) -> DemoReport:
    """Run the selected steps in order; ``report.ok`` is False if a check failed (NaN, restore not exact)."""
    options = options or DemoOptions()
    steps = select_steps(options.steps)
    start = time.perf_counter()
    cfg = options.model_config
    distill = any(step.name == "distill" for step in steps)
    log(f"EDiT demo on a TINY RANDOM PixArt-Sigma-layout model ({cfg['num_layers']} blocks, width "
        f"{tiny.config_width(cfg)}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads. The weights are "
        "random with a key offset built in (edit_core.distill.quick's structured teacher), "
        + ("and a few seconds of distillation teach the adapter to read it, so the agreement numbers show the "
           "conversion and the distillation working, " if distill else
           "and the adapter is undistilled, so the agreement numbers are a sanity check of the conversion, ")
        + "not image quality; timings show where attention starts to dominate.")
    with tempfile.TemporaryDirectory(prefix="edit-demo-") as workdir:
        ctx = DemoContext(options, log, workdir=workdir)
        for step in steps:
            step.run(ctx)
        adapter_path = ctx.adapter_path if options.keep_adapter else None
    total = time.perf_counter() - start
    log(f"demo {'finished' if ctx.ok else 'FAILED'} in {total:.1f} s")
    return DemoReport(list(ctx.results.values()), ctx.ok, total, adapter_path, ctx.distill)


__all__ = ["DemoOptions", "DemoReport", "DemoError", "Step", "STEPS", "register_step", "run_demo", "add_arguments"]
