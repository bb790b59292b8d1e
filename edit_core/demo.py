"""End-to-end demo on the trained tiny PixArt-Σ-layout teacher (``edit_core.tiny_teachers``; no downloads, CPU).

    build    load the teacher (trained on 32×32 crops of photos) and its constant caption
    init     the starting adapter (``init_adapter_from_teacher``), saved and loaded back (the real file format)
    sample   the teacher's samples from fixed noise (DDIM, ``distill.sampling.sample``)
    untrained  ``apply_edit`` with the starting adapter, samples from the same noise, ``remove_edit``
    distill  a short distillation with the default recipe (``distill_on_crops``) on crops of the teacher's photos
    distilled  ``apply_edit`` with the distilled adapter, samples from the same noise, ``remove_edit`` and a
             check that the teacher's predictions come back bit for bit
    write    one PNG (rows: teacher, untrained, distilled; one column per noise) and the distilled adapter,
             both in ``--out`` (kept)

The tiny teacher's latents are its training crops' channels (R, G, B, gray), each standardised by the
mean and std stored in the teacher file; the picture un-standardises R, G, B and clips to [0, 1] (the gray
channel is not shown). No timing: a 256-token model says nothing about EDiT's speed (see ``bench``).
"""

from __future__ import annotations

import argparse
import os
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

FAMILY = "pixart_sigma"
DEFAULT_OUT = "edit-demo"
PNG_NAME = "edit-demo.png"
ADAPTER_NAME = "edit-demo-adapter.safetensors"
ROWS = ("teacher", "untrained", "distilled")


DESCRIPTION = ("End to end on the tiny trained PixArt-Sigma-layout teacher shipped in edit_core/data/tiny_teachers "
               "(no downloads): make the starting adapter, sample the teacher, the untrained EDiT model and the "
               "EDiT model after a short distillation from the same noise, write the three rows as one PNG and "
               "the distilled adapter to --out, and check remove_edit restores the teacher bit for bit.")


class DemoError(Exception):
    """A demo setting that cannot be run (printed as one error line)."""


@dataclass
class DemoOptions:
    out: str = DEFAULT_OUT
    samples: int = 4
    sampling_steps: int = 20
    distill_steps: int = 60
    distill_lr: Optional[float] = None  # None: the default recipe's rate for the model's width
    distill_batch: int = 8
    distill_items: int = 256  # training crops of the teacher's photos (never its held-out crops)
    zoom: int = 4  # pixels per latent pixel in the PNG
    seed: int = 0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "DemoOptions":
        options = cls(out=args.out, seed=args.seed)
        if args.quick:
            options.samples, options.sampling_steps, options.distill_steps = 1, 4, 5
        for name in ("samples", "sampling_steps", "distill_steps"):
            if getattr(args, name) is not None:
                setattr(options, name, getattr(args, name))
        if options.samples < 1 or options.sampling_steps < 1 or options.distill_steps < 1:
            raise DemoError("--samples, --sampling-steps and --distill-steps must be at least 1")
        if os.path.exists(options.out) and not os.path.isdir(options.out):
            raise DemoError(f"--out {options.out!r} is a file; give a folder")
        return options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help=f"folder for the picture ({PNG_NAME}) and the distilled adapter ({ADAPTER_NAME}); "
                             "created if missing, kept afterwards")
    parser.add_argument("--quick", action="store_true",
                        help="1 sample, 4 sampling steps, 5 distillation steps (for tests)")
    parser.add_argument("--samples", type=int, default=None, help="noises, one picture column each (default 4)")
    parser.add_argument("--sampling-steps", type=int, default=None, help="DDIM steps per sample (default 20)")
    parser.add_argument("--distill-steps", type=int, default=None, help="optimizer steps of the distillation "
                                                                        "(default 30)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise, the adapter init and distillation")


@dataclass
class DemoReport:
    ok: bool
    total_seconds: float
    png_path: str
    adapter_path: str
    errors: dict = field(default_factory=dict)  # row → relative RMSE of its samples against the teacher's
    distill: dict = field(default_factory=dict)
    restored_identical: bool = False


# ---------------------------------------------------------------------------------------------- pieces

def relative_rmse(a: torch.Tensor, reference: torch.Tensor) -> float:
    a, e = a.double(), reference.double()
    return float((a - e).pow(2).mean().sqrt() / e.pow(2).mean().sqrt().clamp_min(1e-30))


def latents_to_rgb(latents: torch.Tensor, mean, std) -> torch.Tensor:
    """[N, 4, H, W] standardised (R, G, B, gray) → [N, 3, H, W] in [0, 1]: R, G, B un-standardised, clipped."""
    mean = torch.tensor(mean[:3], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(std[:3], dtype=torch.float32).view(1, 3, 1, 1)
    return (latents[:, :3].float() * std + mean).clamp(0, 1)


def image_grid(rows: list[torch.Tensor], zoom: int, gap: int = 2) -> torch.Tensor:
    """Rows of [N, 3, H, W] images in [0, 1] → one [H', W', 3] uint8 picture, nearest-neighbour ×``zoom``,
    ``gap`` white pixels between cells."""
    n, _, h, w = rows[0].shape
    cell_h, cell_w = h * zoom, w * zoom
    grid = torch.ones(3, len(rows) * (cell_h + gap) - gap, n * (cell_w + gap) - gap)
    for r, images in enumerate(rows):
        big = images.repeat_interleave(zoom, dim=2).repeat_interleave(zoom, dim=3)
        for c in range(n):
            y, x = r * (cell_h + gap), c * (cell_w + gap)
            grid[:, y:y + cell_h, x:x + cell_w] = big[c]
    return (grid * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()


def write_png(path: str, pixels: torch.Tensor) -> None:
    """[H, W, 3] uint8 → an 8-bit RGB PNG (zlib, no filter), no imaging library needed."""
    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + bytes(row) for row in pixels.reshape(height, width * 3).tolist())

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


@dataclass
class DistillRun:
    adapter: object
    steps: int
    seconds: float
    error_before: float
    error_after: float


def distill_on_crops(model, heldout: dict, options: DemoOptions) -> DistillRun:
    """A short distillation through the trainer's public API with the default recipe's choices made explicit
    (``edit_core.distill.recipe``: projections trained, the width's learning rate, layer-feature and output
    losses, no task loss) on random crops of the teacher's own training photos (``photo_crops``; crop seed 1,
    neither the teacher's nor the held-out set's). The error before and after is measured on the held-out
    crops. The teacher is given back plain."""
    from .distill import recipe
    from .distill.data import Stage, TensorDataset
    from .distill.diffusers_host import DiffusersDistillHost
    from .distill.evaluation import prediction_error
    from .distill.losses import LossWeights
    from .distill.schedules import schedule_for
    from .distill.trainer import DistillConfig, Trainer
    from .tiny_teachers import photo_crops

    x0 = photo_crops(options.distill_items, seed=1)
    caption = heldout["encoder_hidden_states"][:1].expand(x0.shape[0], *heldout["encoder_hidden_states"].shape[1:])
    null = {"encoder_hidden_states": torch.zeros(1, *caption.shape[1:])}
    dataset = TensorDataset((x0, {"encoder_hidden_states": caption.contiguous()}), null_cond=null)
    rows = min(32, heldout["x0"].shape[0])
    evaluation = TensorDataset((heldout["x0"][:rows], {"encoder_hidden_states": heldout["encoder_hidden_states"][:rows]}),
                               null_cond=null)
    schedule = schedule_for(FAMILY)
    torch.manual_seed(options.seed)
    host = DiffusersDistillHost(model, train_projections=recipe.TRAIN_PROJECTIONS, seed=options.seed)
    lr = options.distill_lr or recipe.learning_rate(host.adapter_config.hidden_size)
    options.distill_lr = lr
    config = DistillConfig(steps=options.distill_steps, batch_size=options.distill_batch, lr=lr,
                           lr_schedule="constant", warmup_steps=recipe.WARMUP_STEPS,
                           weights=LossWeights(recipe.TASK_WEIGHT, recipe.KD_WEIGHT, recipe.FEATURE_WEIGHT),
                           uncond_prob=0.0, ema_decay=None, log_every=1, seed=options.seed)
    started = time.perf_counter()
    try:
        before = prediction_error(host, evaluation, schedule)
        result = Trainer(host, [dataset], [Stage(x0.shape[-1] * 8, 0, options.distill_steps)], schedule, config,
                         training_info={"teacher": "tiny trained pixart_sigma (demo)"}).run()
        after = prediction_error(host, evaluation, schedule)
    finally:
        host.restore()
    return DistillRun(result.adapter, result.steps, time.perf_counter() - started, before, after)


def _sampler(model, caption: torch.Tensor, options: DemoOptions):
    from .distill.sampling import sample
    from .distill.schedules import schedule_for
    from .integrations.diffusers import forward_kwargs

    channels = int(model.config.in_channels)

    def predict(x: torch.Tensor, t: float, step: int) -> torch.Tensor:
        timestep = torch.full((x.shape[0],), float(t))
        cond = {"encoder_hidden_states": caption.expand(x.shape[0], *caption.shape[1:])}
        with torch.inference_mode():
            return model(**forward_kwargs(model, x, timestep, cond))[0][:, :channels]

    def run(noise: torch.Tensor) -> torch.Tensor:
        return sample(predict, noise, "epsilon", steps=options.sampling_steps, schedule=schedule_for(FAMILY))

    return run


# ---------------------------------------------------------------------------------------------- the demo

def run_demo(options: Optional[DemoOptions] = None, log: Callable[[str], None] = print) -> DemoReport:
    """Run the demo; ``report.ok`` is False when a check fails (distillation did not lower the student's
    prediction error, or remove_edit did not restore the teacher exactly)."""
    from .adapter import init_adapter_from_teacher, load_adapter, save_adapter
    from .integrations.diffusers import apply_edit, remove_edit
    from .tiny_teachers import load_heldout, load_tiny_teacher, teacher_facts

    o = options or DemoOptions()
    start = time.perf_counter()
    os.makedirs(o.out, exist_ok=True)
    png_path, adapter_path = os.path.join(o.out, PNG_NAME), os.path.join(o.out, ADAPTER_NAME)

    model = load_tiny_teacher(FAMILY)
    facts = teacher_facts(FAMILY)
    heldout = load_heldout(FAMILY)
    caption = heldout["encoder_hidden_states"][:1]
    heads = int(model.config.num_attention_heads)
    log(f"EDiT demo on the tiny trained PixArt-Sigma-layout teacher in edit_core/data/tiny_teachers "
        f"({facts['param_count'] / 1e3:.0f}k parameters, {model.config.num_layers} blocks, width "
        f"{heads * model.config.attention_head_dim}, trained on 32×32 photo crops; 16×16 = 256 tokens). "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads. It shows the conversion and the "
        "distillation working end to end, not EDiT's speed (use `python -m edit_core bench`).")

    adapter = init_adapter_from_teacher(model.state_dict(), FAMILY, num_heads=heads, seed=o.seed)
    init_path = os.path.join(o.out, "edit-demo-adapter-init.safetensors")
    save_adapter(adapter, init_path)
    adapter = load_adapter(init_path, expect_family=FAMILY)
    os.remove(init_path)  # only the distilled adapter is kept
    log(f"[init]      starting adapter: {len(adapter.config.layers())} layers, reduction {adapter.config.reduction} "
        "(plain ReLU linear attention on the teacher's projections), saved and loaded back")

    noise = torch.randn(o.samples, int(model.config.in_channels), 32, 32,
                        generator=torch.Generator().manual_seed(o.seed))
    sampler = _sampler(model, caption, o)
    latents = {"teacher": sampler(noise)}
    timestep = torch.tensor([500.0])
    with torch.inference_mode():
        from .integrations.diffusers import forward_kwargs
        probe = forward_kwargs(model, noise[:1], timestep, {"encoder_hidden_states": caption})
        teacher_prediction = model(**probe)[0]
    log(f"[sample]    teacher: {o.samples} samples, {o.sampling_steps} DDIM steps, from seed {o.seed}")

    apply_edit(model, adapter)
    latents["untrained"] = sampler(noise)
    remove_edit(model)

    run = distill_on_crops(model, heldout, o)
    improved = run.error_after < run.error_before
    log(f"[distill]   {run.steps} steps (batch {o.distill_batch}, AdamW lr {o.distill_lr:g}, projections trained, "
        f"layer-feature + output losses: the default recipe) on {o.distill_items} crops of the teacher's training "
        f"photos, {run.seconds:.1f} s; the student's prediction error vs the teacher on held-out crops "
        f"{run.error_before:.3f} → {run.error_after:.3f} "
        f"({run.error_before / max(run.error_after, 1e-30):.1f}× {'lower' if improved else 'NOT lower'})")

    apply_edit(model, run.adapter)
    latents["distilled"] = sampler(noise)
    remove_edit(model)
    with torch.inference_mode():
        restored = torch.equal(model(**probe)[0], teacher_prediction)
    save_adapter(run.adapter, adapter_path)

    errors = {row: relative_rmse(latents[row], latents["teacher"]) for row in ROWS[1:]}
    log(f"[samples]   error of the samples vs the teacher's (relative RMSE, same noise): untrained "
        f"{errors['untrained']:.3f}, distilled {errors['distilled']:.3f}"
        + ("" if errors["distilled"] < errors["untrained"] else
           " — this short distillation lowers the one-step prediction error but not the error of whole sampled "
           "trajectories; a real adapter needs a real run (`python -m edit_core distill`)"))
    data = facts["data"]
    write_png(png_path, image_grid([latents_to_rgb(latents[row], data["mean"], data["std"]) for row in ROWS],
                                   o.zoom))
    log(f"[restore]   remove_edit: the teacher's predictions are bit-identical again: {'yes' if restored else 'NO'}")
    log(f"[write]     picture (rows: {', '.join(ROWS)}; one column per noise): {os.path.abspath(png_path)}")
    log(f"[write]     distilled adapter: {os.path.abspath(adapter_path)}")
    ok = improved and restored
    total = time.perf_counter() - start
    log(f"demo {'finished' if ok else 'FAILED'} in {total:.1f} s")
    return DemoReport(ok, total, png_path, adapter_path, errors,
                      {"steps": run.steps, "seconds": run.seconds, "error_before": run.error_before,
                       "error_after": run.error_after}, restored)


__all__ = ["DemoOptions", "DemoReport", "DemoError", "run_demo", "add_arguments", "write_png", "image_grid",
           "latents_to_rgb"]
