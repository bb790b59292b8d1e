"""``python -m edit_core distill``: make an EDiT / MM-EDiT adapter by distillation from a diffusers teacher.

``add_parser(subparsers)`` registers the command (``handler=run``); ``run(args)`` returns the exit code:
0 done (also when stopped early with Ctrl-C: the adapter so far is written and ``--resume`` continues),
2 a user mistake, reported as one ``error:`` line before any training starts. ``main(argv)`` is a
standalone root for ``python -m edit_core.distill`` and ``torchrun -m edit_core.distill``.

Steps: check every input → load the teacher → cache teacher samples per resolution stage (prompts →
teacher latents with their text embeddings, or ``--images`` VAE-encoded) in ``--work-dir`` → train →
write the adapter (rank 0). Under ``torchrun`` each rank makes its share of the cache and trains on its
rows of every global batch; gradients are averaged.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import sys
import threading
from typing import Optional, Sequence

import torch

from ..commands import EXIT_OK, EXIT_USER_ERROR, CommandError, report_errors  # noqa: F401 (re-exported)
from . import recipe
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

DESCRIPTION = (
    "Distil an EDiT (PixArt-Sigma/Alpha) or MM-EDiT (SD3-Medium, SD3.5-Medium/Large) adapter, or one of the paper's "
    "baselines (--variant), from your own diffusers teacher, with the default recipe of edit_core/distill/recipe.py. "
    "Data-free by default: the teacher samples one latent per prompt and resolution stage (cached in --work-dir with "
    "the text embeddings); --images DIR or --latents FILE train on real data instead, which helps when you have it. "
    "The student (teacher + EDiT attention; the new layers and the converted attentions' own projections train) "
    "learns from per-layer attention outputs and the teacher's predictions (L = 0.5·L_kd + 0.5·L_feat, plus "
    "--task-weight·L_task on real data). Checkpoints every --checkpoint-every steps; --resume continues exactly. "
    "Works under torchrun (one process per GPU).")

EPILOG = """examples:
  python -m edit_core distill --teacher PixArt-Sigma-XL-2-1024-MS --prompts prompts.txt --out edit.safetensors \\
      --resolution 512,1024 --steps 20000 --batch 8
  torchrun --nproc_per_node 8 -m edit_core.distill --teacher stable-diffusion-3.5-medium --prompts prompts.txt \\
      --out mm_edit.safetensors --resolution 512,1024 --steps 20000 --batch 4 --checkpoint-every 500
  (killed?  run the same command again with --resume)"""


DistillCommandError = CommandError  # the shared user-mistake error (``edit_core.commands``)


def add_arguments(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("--teacher", required=True, metavar="PATH",
      help="diffusers PixArtSigmaPipeline / PixArtAlphaPipeline / StableDiffusion3Pipeline folder, a transformer folder, or one transformer "
           ".safetensors file (config in its metadata, a config.json beside it, or --teacher-config); the last two "
           "need --text-embeddings")
    a("--prompts", required=True, metavar="FILE", help="text file, one prompt per line (blank lines and # comments "
                                                       "skipped); with --images, only used to check the file")
    a("--out", required=True, metavar="FILE", help="adapter file to write (.safetensors)")
    a("--resolution", default=None, help="pixel size of each progressive stage, comma-separated, e.g. 512,1024 "
                                         "(default 512); each a multiple of 16")
    a("--stage-fractions", default=None, help="share of the steps per stage, e.g. 0.6,0.3,0.1 (default 6:3:1)")
    a("--aspect-ratios", default="1:1", help="aspect-ratio buckets (width:height), e.g. 1:1,4:3,3:4,16:9,9:16")
    a("--steps", type=int, default=1000, help="optimizer steps in total")
    a("--batch", type=int, default=4, help="batch per process (GPU) and micro-step; global = batch × processes")
    a("--grad-accum", type=int, default=1, help="micro-steps per optimizer step")
    a("--lr", type=float, default=recipe.LR,
      help="AdamW learning rate (default: 1e-3 × 96 / model width, e.g. 8.3e-5 for PixArt-Sigma, 6.3e-5 for "
           "SD3.5-Medium; see edit_core/distill/recipe.py)")
    a("--weight-decay", type=float, default=0.0)
    a("--warmup-steps", type=int, default=recipe.WARMUP_STEPS)
    a("--lr-schedule", choices=("constant", "cosine"), default="constant")
    a("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0: off)")
    a("--task-weight", type=float, default=recipe.TASK_WEIGHT,
      help=f"task-loss weight on real data (--images / --latents; default {recipe.TASK_WEIGHT:g}: the target is "
           "the teacher, not the data)")
    a("--kd-weight", type=float, default=recipe.KD_WEIGHT, help="output-distillation weight")
    a("--feature-weight", type=float, default=recipe.FEATURE_WEIGHT, help="per-layer attention-output weight")
    a("--uncond-prob", type=float, default=0.1, help="caption dropout to the empty prompt (CFG training)")
    a("--ema", type=float, default=None, metavar="DECAY", help="keep an EMA of the weights (e.g. 0.999) and export it")
    a("--train-projections", action=argparse.BooleanOptionalAction, default=recipe.TRAIN_PROJECTIONS,
      help="also fine-tune the converted attentions' q/k/v/out projections and qk-norms (saved in the adapter; "
           f"default {'on' if recipe.TRAIN_PROJECTIONS else 'off'})")
    a("--gradient-checkpointing", action="store_true", help="recompute block activations in backward (less memory)")
    a("--init-adapter", default=None, metavar="FILE",
      help="start from this adapter instead of the teacher-derived init")
    a("--reduction", type=int, default=4, help="ConvFusion reduction r of a new adapter")
    a("--variant", default=None, metavar="NAME",
      help="attention variant of a new adapter (default: the family's, edit / mm_edit); the paper's baselines: "
           "sana, linfusion, edit_no_convfusion, kv_compress (PixArt), mm_linear, kv_compress (SD3)")
    a("--no-attn2", action="store_true", help="SD3.5-M: keep the dual-attention attn2 layers softmax")
    a("--images", default=None, metavar="DIR", help="train on these images (VAE-encoded; captions from NAME.txt) "
                                                    "instead of teacher samples (real data: --task-weight applies)")
    a("--latents", default=None, metavar="FILE",
      help="train on these clean latents, already in the teacher's latent space (safetensors: 'latents' "
           "[N, C, h, w], optional 'prompt_index' [N] rows of the prompt file / text embeddings; without it row i "
           "uses prompt i, or prompt 0 when there is one): real data, as with --images; the resolution follows from h, w")
    a("--text-embeddings", default=None, metavar="FILE",
      help="precomputed prompt embeddings (safetensors: prompt_embeds [P,L,D], prompt_attention_mask, "
           "pooled_prompt_embeds, optional negative_*); one row per prompt")
    a("--teacher-config", default=None, metavar="JSON", help="diffusers config.json of a single-file teacher")
    a("--samples-per-prompt", type=int, default=1, help="teacher samples per prompt and stage")
    a("--sample-steps", type=int, default=20, help="teacher sampling steps (DDIM / flow Euler)")
    a("--guidance", type=float, default=4.5, help="teacher sampling CFG scale (needs the empty prompt's embedding)")
    a("--flow-shift", type=float, default=recipe.FLOW_SHIFT,
      help="SD3 / SD3.5 timestep shift, for the teacher's samples and the training noise alike (default: the "
           "scheduler's, else the family's, 3.0)")
    a("--checkpoint-every", type=int, default=250, help="steps between checkpoints (a killed run loses at most this)")
    a("--log-every", type=int, default=10, help="steps between JSONL log lines")
    a("--work-dir", default=None, help="cache, checkpoints, log.jsonl, loss.png (default: OUT without .safetensors "
                                       "+ '.work')")
    a("--resume", action="store_true", help="continue from the newest checkpoint in --work-dir")
    a("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available; torchrun: cuda:LOCAL_RANK)")
    a("--dtype", choices=tuple(DTYPES), default=None,
      help="teacher dtype / autocast (default bf16 on cuda, fp32 on cpu)")
    a("--seed", type=int, default=0)
    a("--eval-batches", type=int, default=2, help="batches for the before/after error vs the teacher (0: skip)")
    a("--no-progress", action="store_true", help="no tqdm bars")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("distill", help="make an adapter by distillation from your teacher",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(handler=run)
    return p


# ---------------------------------------------------------------------------------------------- checks

def read_prompts(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise DistillCommandError(f"prompt file '{path}' does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            prompts = [line.strip() for line in f]
    except UnicodeDecodeError:
        raise DistillCommandError(f"prompt file '{path}' is not UTF-8 text") from None
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise DistillCommandError(f"prompt file '{path}' has no prompts (one prompt per line; blank lines and "
                                  "# comments are skipped)")
    return prompts


def check_output(path: str) -> None:
    if os.path.isdir(path):
        raise DistillCommandError(f"output '{path}' is a folder; give a file name such as "
                                  f"{os.path.join(path, 'edit.safetensors')}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise DistillCommandError(f"cannot write '{path}': the folder {directory} does not exist")
    probe = os.path.join(directory, f".edit-distill-probe-{os.getpid()}")
    try:
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise DistillCommandError(f"cannot write '{path}': {e.strerror or e}") from None
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise DistillCommandError(f"cannot write '{path}': permission denied")


def check_work_dir(path: str, resume: bool) -> None:
    from .checkpoint import list_checkpoints

    if os.path.exists(path) and not os.path.isdir(path):
        raise DistillCommandError(f"--work-dir '{path}' is a file")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(path) and not os.access(parent, os.W_OK):
        raise DistillCommandError(f"cannot create --work-dir '{path}' in {parent}")
    if not resume and list_checkpoints(os.path.join(path, "checkpoints")):
        raise DistillCommandError(f"--work-dir '{path}' has checkpoints of an earlier run: add --resume to continue "
                                  "it, or choose another --work-dir")


def _parse_fractions(text: Optional[str]) -> Optional[list[float]]:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DistillCommandError(f"--stage-fractions must be numbers like 0.6,0.3,0.1, got {text!r}") from None


def _numbers(args) -> None:
    for name in ("steps", "batch", "grad_accum", "samples_per_prompt", "sample_steps", "log_every"):
        if getattr(args, name) < 1:
            raise DistillCommandError(f"--{name.replace('_', '-')} must be at least 1")
    if args.checkpoint_every < 0 or args.eval_batches < 0:
        raise DistillCommandError("--checkpoint-every and --eval-batches must be ≥ 0")
    if args.lr is not None and not args.lr > 0:
        raise DistillCommandError("--lr must be positive")


def _check_variant(args, info, init_adapter) -> None:
    from ..families import get_family
    from ..variants import distillable_variants

    if args.variant is None:
        return
    if init_adapter is not None:
        if init_adapter.config.variant != args.variant:
            raise DistillCommandError(f"--variant {args.variant} but --init-adapter is a {init_adapter.config.variant} "
                                      "adapter; leave one out")
        return
    family = get_family(info.family)
    usable = distillable_variants(family)
    if args.variant not in usable:
        raise DistillCommandError(f"--variant {args.variant!r} cannot be distilled for {family.title}; choose one of "
                                  f"{', '.join(usable)}")


class _Latents:
    """A --latents file, checked: x0 [N, C, h, w] fp32 and the prompt row of each item."""

    def __init__(self, x0: torch.Tensor, rows: torch.Tensor, resolution: int):
        self.x0, self.rows, self.resolution = x0, rows, resolution

    def dataset(self, encode, null_cond):
        from .data import TensorDataset

        cond = encode(self.rows.tolist())
        return TensorDataset((self.x0, {k: v.cpu() for k, v in cond.items()}), null_cond=null_cond, has_images=True)


def read_latents(path: str, args, info, prompt_count: int) -> _Latents:
    from ..safetensors_file import SafetensorsFileError, read_header
    from .data import PIXELS_PER_LATENT

    if not os.path.isfile(path):
        raise DistillCommandError(f"--latents '{path}' does not exist")
    try:
        read_header(path)
    except SafetensorsFileError as e:
        raise DistillCommandError(f"--latents '{path}': {e.problem}") from None
    from safetensors.torch import load_file

    tensors = load_file(path)
    x0 = tensors.get("latents")
    channels = int(info.config.get("in_channels", 0)) or None
    if x0 is None or x0.dim() != 4:
        raise DistillCommandError(f"--latents '{path}' needs a 'latents' tensor [N, C, h, w]")
    if channels is not None and x0.shape[1] != channels:
        raise DistillCommandError(f"--latents '{path}' has {x0.shape[1]} channels, the teacher takes {channels}")
    h, w = int(x0.shape[-2]), int(x0.shape[-1])
    if h != w:
        raise DistillCommandError(f"--latents '{path}' are {h}×{w}; use square latents (one size per file)")
    if h % info.patch_size:
        raise DistillCommandError(f"--latents '{path}' are {h}×{w}, not a multiple of the patch size "
                                  f"{info.patch_size}")
    resolution = h * PIXELS_PER_LATENT
    if args.resolution not in (None, str(resolution)) or args.stage_fractions:
        raise DistillCommandError(f"--latents '{path}' fix the resolution at {resolution} px ({h}×{w} latents): "
                                  "leave out --resolution and --stage-fractions")
    if "prompt_index" in tensors:
        rows = tensors["prompt_index"].long().reshape(-1)
        if rows.numel() != x0.shape[0] or rows.min() < 0 or rows.max() >= prompt_count:
            raise DistillCommandError(f"--latents '{path}': 'prompt_index' needs one row in 0…{prompt_count - 1} "
                                      f"per latent ({x0.shape[0]})")
    elif prompt_count == x0.shape[0]:
        rows = torch.arange(prompt_count)
    elif prompt_count == 1:
        rows = torch.zeros(x0.shape[0], dtype=torch.long)
    else:
        raise DistillCommandError(f"--latents '{path}' has {x0.shape[0]} latents but the prompt file "
                                  f"{prompt_count} prompts: give one prompt, one per latent, or a 'prompt_index'")
    return _Latents(x0.float(), rows, resolution)


def _sha256(texts: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------- run

class _StopFlag:
    """Ctrl-C once: finish the step, checkpoint, write the adapter. Twice: abort."""

    def __init__(self):
        self.stop, self._previous = False, None

    def __call__(self) -> bool:
        return self.stop

    def _handle(self, signum, frame):
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True
        print("\nstopping after this step (Ctrl-C again to abort) ...", file=sys.stderr)

    def install(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def uninstall(self):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _bar(enabled: bool, total: int, desc: str, initial: int = 0):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)


def run(args: argparse.Namespace, on_step=None) -> int:
    """The command. ``on_step(step, host)`` (for ``python -m edit_core quality``): called on rank 0 after every
    optimizer step with the distillation host, e.g. to measure the student as it trains."""
    return report_errors(lambda: _run(args, on_step), interrupted="interrupted (the data cache and checkpoints so far are "
                                                         "kept; rerun with --resume)")


def _run(args: argparse.Namespace, on_step=None) -> int:  # noqa: C901 - one linear script
    from ..adapter import load_adapter
    from .data import check_resolution, parse_aspect_ratios, parse_resolutions, stage_plan
    from .distributed import default_device, init_distributed
    from .teachers import inspect_teacher, read_text_embeddings

    # 1. every check that needs no weights
    _numbers(args)
    prompts = read_prompts(args.prompts)
    check_output(args.out)
    work_dir = args.work_dir or (os.path.splitext(args.out)[0] + ".work")
    check_work_dir(work_dir, args.resume)
    info = inspect_teacher(args.teacher, args.teacher_config)
    if args.images and args.latents:
        raise DistillCommandError("--images and --latents both give training data; choose one")
    latents = read_latents(args.latents, args, info, len(prompts)) if args.latents else None
    resolutions = [latents.resolution] if latents is not None else parse_resolutions(args.resolution or "512")
    for r in resolutions:
        check_resolution(r, info.patch_size)
    ratios = parse_aspect_ratios(args.aspect_ratios)
    stages = stage_plan(args.steps, resolutions, _parse_fractions(args.stage_fractions))
    embeddings = None
    if args.text_embeddings:
        embeddings = read_text_embeddings(args.text_embeddings, info.family, info.config, len(prompts))
    elif info.kind != "pipeline":
        raise DistillCommandError(f"teacher '{args.teacher}' has no text encoders: pass --text-embeddings FILE "
                                  "(or give the pipeline folder)")
    if args.images:
        if not os.path.isdir(args.images):
            raise DistillCommandError(f"--images '{args.images}' is not a folder")
        if info.kind != "pipeline" or args.text_embeddings:
            raise DistillCommandError("--images needs a pipeline folder as --teacher (its VAE and text encoders "
                                      "caption the images) and no --text-embeddings")
        from .cache import list_images
        if not list_images(args.images)[0]:
            raise DistillCommandError(f"--images '{args.images}' has no .png/.jpg/.webp images")
    init_adapter = load_adapter(args.init_adapter, expect_family=info.family) if args.init_adapter else None
    _check_variant(args, info, init_adapter)
    device = args.device or default_device()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DistillCommandError("--device cuda, but torch sees no CUDA GPU")
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.startswith("cuda") else torch.float32)

    # 2. processes, teacher, host
    dist = init_distributed(device)
    try:
        return _train(args, dist, info, prompts, embeddings, init_adapter, stages, ratios, work_dir, dtype, latents,
                      on_step)
    finally:
        dist.close()


def _train(args, dist, info, prompts, embeddings, init_adapter, stages, ratios, work_dir, dtype, latents=None,
           on_step=None) -> int:
    from ..families import get_family
    from ..adapter import save_adapter
    from .cache import build_image_cache, build_teacher_cache, list_images
    from .data import aspect_buckets
    from .diffusers_host import DiffusersDistillHost
    from .evaluation import prediction_error
    from .losses import LossWeights
    from .schedules import schedule_for
    from .teachers import load_teacher
    from .trainer import DistillConfig, Trainer

    show = dist.is_main and not args.no_progress
    say = print if dist.is_main else (lambda *a, **k: None)
    torch.manual_seed(args.seed)
    say(f"teacher: {info.title} ({info.kind}) from {info.path}")
    teacher = load_teacher(info, dtype=dtype, device=dist.device, text_embeddings=embeddings)
    if init_adapter is not None:
        init_adapter.check_compatible(_spec_of(teacher.transformer))
    host = DiffusersDistillHost(teacher.transformer, init_adapter, train_projections=args.train_projections,
                                dtype=dtype, attn2="off" if args.no_attn2 else "adapter",
                                reduction=args.reduction, seed=args.seed, variant=args.variant)
    shift = args.flow_shift if args.flow_shift is not None else float(
        info.scheduler_config.get("shift", get_family(host.family).sampling_shift or 1.0))
    schedule = schedule_for(host.family, info.scheduler_config, shift=shift)

    # 3. data: one cache per stage
    fingerprint = {**info.fingerprint(), "prompts_sha256": _sha256(prompts),
                   "text_embeddings_sha256": embeddings.sha256() if embeddings else None}
    images, captions = list_images(args.images) if args.images else ([], [])
    if args.images:
        def encode(ids):
            return teacher.encode([captions[i] for i in ids])
    elif embeddings is not None:
        encode = teacher.encode  # rows of the embeddings file
    else:
        def encode(ids):
            return teacher.encode([prompts[i] for i in ids])
    datasets = []
    for stage in stages:
        buckets = aspect_buckets(stage.resolution, ratios, info.patch_size)
        directory = os.path.join(work_dir, "cache", str(stage.resolution))
        bar = _bar(show, 0, f"cache {stage.resolution}px")

        def progress(done, total, bar=bar):
            if bar is not None:
                bar.total = total
                bar.n = done
                bar.refresh()

        if latents is not None:
            dataset = latents.dataset(encode, teacher.null_cond)
        elif args.images:
            dataset = build_image_cache(directory, images=images, captions=captions, encode=encode,
                                        null_cond=teacher.null_cond, vae=teacher.vae, buckets=buckets,
                                        fingerprint={**fingerprint, "images": os.path.abspath(args.images),
                                                     "resolution": stage.resolution},
                                        seed=args.seed, batch_size=args.batch, dist=dist, progress=progress)
        else:
            dataset = build_teacher_cache(host, directory, texts=prompts, encode=encode, null_cond=teacher.null_cond,
                                          buckets=buckets, fingerprint={**fingerprint, "resolution": stage.resolution},
                                          samples_per_prompt=args.samples_per_prompt, sample_steps=args.sample_steps,
                                          guidance=args.guidance, shift=shift, schedule=schedule, seed=args.seed,
                                          batch_size=args.batch, dist=dist, progress=progress)
        if bar is not None:
            bar.close()
        datasets.append(dataset)
    teacher.release_encoders()
    if dist.device.type == "cuda":
        torch.cuda.empty_cache()

    # 4. train
    lr = args.lr if args.lr is not None else recipe.learning_rate(host.adapter_config.hidden_size)
    say(f"learning rate {lr:.3g}" + ("" if args.lr is not None else
                                     f" (default for width {host.adapter_config.hidden_size})"))
    config = DistillConfig(steps=args.steps, batch_size=args.batch, grad_accum=args.grad_accum, lr=lr,
                           weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
                           lr_schedule=args.lr_schedule, max_grad_norm=args.max_grad_norm or None,
                           weights=LossWeights(args.task_weight, args.kd_weight, args.feature_weight),
                           uncond_prob=args.uncond_prob, ema_decay=args.ema,
                           gradient_checkpointing=args.gradient_checkpointing,
                           fp16_loss_scaling=dtype == torch.float16, checkpoint_every=args.checkpoint_every,
                           log_every=args.log_every, seed=args.seed)
    stop = _StopFlag().install()
    bar = _bar(show, args.steps, "distill")

    def progress(step, total, values):
        if on_step is not None and dist.is_main:
            on_step(step, host)
        if bar is not None:
            bar.n = step
            bar.set_postfix({k[5:] or "loss": f"{values[k]:.3g}" for k in ("loss", "loss_feature", "loss_kd",
                                                                          "loss_task") if values.get(k)},
                            refresh=False)
            bar.refresh()

    training_info = {"teacher": os.path.basename(os.path.normpath(info.path)), "prompts": len(prompts),
                     "data_items": [len(d) for d in datasets]}
    try:
        trainer = Trainer(host, datasets, stages, schedule, config, work_dir=work_dir, dist=dist, progress=progress,
                          should_stop=stop, training_info=training_info)
        resumed = trainer.resume() if args.resume else False
        if args.resume:
            say(f"resuming at step {trainer.step}" if resumed else "no checkpoint yet: starting at step 0")
        if bar is not None:
            bar.n = trainer.step
            bar.refresh()
        errors = {}
        if args.eval_batches and trainer.step == 0 and dist.is_main:
            errors["init"] = prediction_error(host, datasets[-1], schedule, batches=args.eval_batches,
                                              batch_size=args.batch)
        dist.barrier()
        result = trainer.run()
    finally:
        stop.uninstall()
        if bar is not None:
            bar.close()
    if args.eval_batches and dist.is_main:
        errors["final"] = prediction_error(host, datasets[-1], schedule, batches=args.eval_batches,
                                           batch_size=args.batch)
    adapter = result.adapter
    if errors:
        adapter.config.training["error_vs_teacher"] = errors
    if dist.is_main:
        save_adapter(adapter, args.out)
        say(f"{'stopped at' if result.stopped else 'finished'} step {result.steps}/{args.steps}; "
            f"adapter: {args.out}")
        if errors:
            say("prediction error vs teacher (relative RMSE): " +
                ", ".join(f"{k} {v:.4f}" for k, v in errors.items()))
        say(f"log: {result.log_path}" + (f", loss curve: {result.plot_path}" if result.plot_path else ""))
        if result.stopped:
            say("continue with the same command plus --resume")
    dist.barrier()
    return EXIT_OK


def _spec_of(transformer):
    from ..families import detect_teacher

    return detect_teacher(transformer.state_dict(), num_heads=transformer.config.num_attention_heads)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m edit_core.distill", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:
        return int(e.code or 0)
    return run(args)


__all__ = ["add_parser", "add_arguments", "run", "main", "read_prompts", "read_latents", "check_output",
           "DistillCommandError"]
