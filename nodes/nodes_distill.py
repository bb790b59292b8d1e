"""Distill EDiT Adapter: train an adapter inside ComfyUI from the loaded teacher MODEL and prompts (data-free)."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import Optional

import torch

import comfy.model_management
import comfy.utils
from comfy_api.latest import io

from ..edit_core.adapter import Adapter, save_adapter
from ..edit_core.distill.data import Stage, TensorDataset, check_resolution
from ..edit_core.distill.plot import loss_curve_pixels
from ..edit_core.distill.recipe import TRAIN_PROJECTIONS
from ..edit_core.distill.sampling import sample_teacher
from ..edit_core.distill.trainer import DistillConfig, DistillError, Trainer
from ..edit_core.variants import get_variant, list_variants
from .apply import BACKENDS, compute_dtype
from .distill_host import ComfyDistillHost
from .events import DISTILL_EVENT, distill_progress, send_event
from .io_types import EDiTAdapterType
from .model_folder import register_model_folder

CATEGORY = "EDiT"
VARIANT_OPTIONS = ["default"] + [v for v in list_variants() if get_variant(v).trainable]
log = logging.getLogger("ComfyUI-EDiT")

EXTENSION = ".safetensors"
PREVIEW_EVERY_S = 5.0  # loss-curve preview images sent to the UI at most this often
TEXT_EVERY_S = 0.5  # the step/loss line under the node at most this often
CURVE_SIZE = (640, 360)  # width, height of the loss IMAGE


# ---------------------------------------------------------------------------------------------- saving

def adapter_save_path(save_name: str, folder: Optional[str] = None) -> str:
    """``<models>/edit/<save_name>.safetensors``, or with ``_00001``, ``_00002``… when taken: never overwrites."""
    folder = os.path.abspath(folder or register_model_folder())
    name = (save_name or "").strip().replace("\\", "/")
    if name.lower().endswith(EXTENSION):
        name = name[:-len(EXTENSION)]
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts) or ":" in name:
        raise ValueError(f"save_name {save_name!r} must be a file name (optionally in a subfolder) inside "
                         f"models/edit, like 'pixart_edit' or 'pixart/edit_v1'")
    base = os.path.join(folder, *parts)
    path, counter = base + EXTENSION, 0
    while os.path.exists(path):
        counter += 1
        path = f"{base}_{counter:05d}{EXTENSION}"
    return path


# ---------------------------------------------------------------------------------------------- loss curve

CURVES = (("loss", "total"), ("loss_feature", "attention layers"), ("loss_kd", "output KD"))


def loss_curve_image(history: list[dict], title: str = "EDiT distillation", size=CURVE_SIZE) -> torch.Tensor:
    """The losses over the steps as an IMAGE [1, H, W, 3] float in 0..1 (matplotlib Agg; a plain PIL drawing
    when matplotlib is not installed)."""
    try:
        return _matplotlib_curve(history, title, size)
    except ImportError:
        return _pil_curve(history, title, size)


def _series(history: list[dict], key: str) -> list[tuple[int, float]]:
    return [(int(e["step"]), float(e[key])) for e in history if e.get(key) and float(e[key]) > 0]


def _matplotlib_curve(history, title, size) -> torch.Tensor:
    pixels = loss_curve_pixels(history, title, size, curves=CURVES, learning_rate=False)
    return (pixels.float() / 255.0).unsqueeze(0)


def _pil_curve(history, title, size) -> torch.Tensor:
    from PIL import Image, ImageDraw

    width, height = size
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = 50, 30, width - 20, height - 30
    draw.rectangle([left, top, right, bottom], outline=(120, 120, 120))
    draw.text((left, 8), f"{title} (log scale)", fill=(0, 0, 0))
    colours = ((31, 119, 180), (255, 127, 14), (44, 160, 44))
    all_values = [v for key, _ in CURVES for v in _series(history, key)]
    if all_values:
        steps = [s for s, _ in all_values]
        logs = [math.log10(v) for _, v in all_values]
        s0, s1 = min(steps), max(max(steps), min(steps) + 1)
        l0, l1 = min(logs), max(max(logs), min(logs) + 1e-6)
        draw.text((4, top), f"{10 ** l1:.2g}", fill=(0, 0, 0))
        draw.text((4, bottom - 10), f"{10 ** l0:.2g}", fill=(0, 0, 0))
        for (key, label), colour in zip(CURVES, colours):
            points = [(left + (s - s0) / (s1 - s0) * (right - left),
                       bottom - (math.log10(v) - l0) / (l1 - l0) * (bottom - top)) for s, v in _series(history, key)]
            if len(points) > 1:
                draw.line(points, fill=colour, width=2)
            elif points:
                draw.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2], fill=colour)
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).reshape(height, width, 3)
    return (pixels.float() / 255.0).unsqueeze(0)


def _progress_text(text: str) -> None:
    """Show ``text`` on the running node (ComfyUI's progress text), when a ComfyUI server is running."""
    server = sys.modules.get("server")
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    if instance is None or not hasattr(instance, "send_progress_text"):
        return
    from comfy_execution.utils import get_executing_context

    context = get_executing_context()
    if context is not None:
        instance.send_progress_text(text, context.node_id)


def _preview(history: list[dict]):
    """A progress-bar preview (ComfyUI's ("JPEG", PIL image, max size) form) of the loss curve."""
    from PIL import Image

    pixels = (loss_curve_image(history)[0] * 255).round().to(torch.uint8).numpy()
    return "JPEG", Image.fromarray(pixels), CURVE_SIZE[0]


# ---------------------------------------------------------------------------------------------- the run

class _Interruptible:
    """The host, checking ComfyUI's Cancel before every teacher call (sampling has nothing to save yet)."""

    def __init__(self, host):
        self._host = host

    def __getattr__(self, name):
        return getattr(self._host, name)

    def predict(self, *args, **kwargs):
        comfy.model_management.throw_exception_if_processing_interrupted()
        return self._host.predict(*args, **kwargs)


class _Progress:
    """ComfyUI progress bar over teacher sampling + training; the loss in the log and the preview; Cancel."""

    def __init__(self, sampling_batches: int, steps: int):
        self.offset, self.steps = sampling_batches, steps
        self.bar = comfy.utils.ProgressBar(sampling_batches + steps)
        self.history: list[dict] = []
        self.cancelled = False
        self._last_preview = time.monotonic()
        self._last_text = 0.0
        self._log_every = max(1, steps // 20)

    def sampled(self, batch: int) -> None:
        _progress_text(f"teacher sampling: batch {batch}/{self.offset}")
        self.bar.update_absolute(batch)

    def step(self, step: int, total: int, values: dict) -> None:
        self.history.append({k: values.get(k) for k in ("step", "loss", "loss_feature", "loss_kd", "lr")})
        send_event(DISTILL_EVENT, distill_progress(step, total, values))  # the node's live loss curve
        rate = values.get("steps_per_s")
        if step == total or time.monotonic() - self._last_text >= TEXT_EVERY_S:
            self._last_text = time.monotonic()
            _progress_text(f"step {step}/{total}: loss {values.get('loss', 0.0):.4g}"
                           + (f", {rate:.2f} steps/s" if rate else ""))
        if step % self._log_every == 0 or step == total:
            log.info("EDiT distill: step %d/%d, loss %.4g (attention layers %.4g, output KD %.4g)%s", step, total,
                     values.get("loss", 0.0), values.get("loss_feature", 0.0), values.get("loss_kd", 0.0),
                     f", {rate:.2f} steps/s" if rate else "")
        preview = None
        if self.bar.hook is not None and time.monotonic() - self._last_preview >= PREVIEW_EVERY_S:
            self._last_preview = time.monotonic()
            preview = _preview(self.history)
        try:
            self.bar.update_absolute(self.offset + step, preview=preview)
        except comfy.model_management.InterruptProcessingException:
            self.cancelled = True  # the server's progress hook saw Cancel: stop after this step and save

    def should_stop(self) -> bool:
        self.cancelled = self.cancelled or comfy.model_management.processing_interrupted()
        return self.cancelled


class EDiTDistill(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EDiTDistill",
            display_name="Distill EDiT Adapter",
            category=CATEGORY,
            description="EXPERIMENTAL. Trains an EDiT (PixArt) or MM-EDiT (SD3 / SD3.5) adapter for the "
                        "connected MODEL by distillation, without any images: the MODEL (the teacher, loaded once, "
                        "no second copy) first samples latents from your prompts, then the adapter learns to "
                        "reproduce the teacher's attention outputs and predictions. Training on a real model needs "
                        "a GPU and hours (thousands of steps); on a CPU only tiny test models are practical. Saves "
                        "models/edit/<save_name>.safetensors (a counter is added rather than overwriting) and "
                        "returns the adapter and its loss curve. Cancel stops after the current step and still "
                        "saves what was learnt. The input MODEL is left unchanged.",
            inputs=[
                io.Model.Input("model", tooltip="The teacher: a PixArt-Sigma/Alpha or SD3/SD3.5 MODEL (with any LoRAs "
                                                "you want the adapter to match). It is not modified."),
                io.Conditioning.Input("positive", tooltip="The prompts the teacher samples from. Every entry and "
                                                          "every batch row is one prompt: combine several CLIP Text "
                                                          "Encode outputs (Conditioning Combine) or encode a batch."),
                io.Int.Input("width", default=512, min=16, max=4096, step=16,
                             tooltip="Training image width in pixels; a multiple of 16 (the latent is width/8)."),
                io.Int.Input("height", default=512, min=16, max=4096, step=16,
                             tooltip="Training image height in pixels; a multiple of 16."),
                io.Int.Input("steps", default=2000, min=1, max=1_000_000,
                             tooltip="Optimizer steps. Thousands for a real model; each step runs the teacher and "
                                     "the student on one batch."),
                io.Float.Input("learning_rate", default=1e-4, min=1e-7, max=1.0, step=1e-5, round=False,
                               tooltip="AdamW learning rate of the adapter weights (1e-4 for real models)."),
                io.Int.Input("batch_size", default=1, min=1, max=256,
                             tooltip="Latents per training step (and per teacher-sampling call). Larger needs more "
                                     "memory."),
                io.Int.Input("samples_per_prompt", default=4, min=1, max=1024,
                             tooltip="How many latents the teacher samples for each prompt (different noise); they "
                                     "are the training data."),
                io.Int.Input("teacher_steps", default=20, min=1, max=500,
                             tooltip="Sampling steps the teacher takes per training latent (DDIM for PixArt, Euler "
                                     "for SD3 / SD3.5)."),
                io.Float.Input("cfg", default=4.5, min=1.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance of the teacher's sampling; used only when a negative "
                                       "is connected."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF,
                             tooltip="Seed of the adapter's initialisation, the sampling noise and the training "
                                     "noise and timesteps: the same inputs and seed give the same adapter."),
                io.String.Input("save_name", default="edit_distilled",
                                tooltip="File name in models/edit (.safetensors is added; subfolders allowed). An "
                                        "existing file is never overwritten: _00001, _00002… is appended."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="Optional negative / empty prompt: enables classifier-free guidance "
                                              "in the teacher's sampling and trains the adapter on it too (10% of "
                                              "rows), as it will see it when sampling with CFG."),
                io.Int.Input("reduction", default=4, min=1, max=64, optional=True,
                             tooltip="Channel reduction of the adapter's ConvFusion (4 as in the paper); must divide "
                                     "the model's width."),
                io.Combo.Input("backend", options=list(BACKENDS), default="auto", optional=True,
                               tooltip="Linear-attention kernels while training: auto (Triton on NVIDIA GPUs when "
                                       "installed, else PyTorch), torch or triton."),
                io.Boolean.Input("train_projections", default=TRAIN_PROJECTIONS, optional=True,
                                 tooltip="Also fine-tune each converted attention's own q/k/v/output projections "
                                         "(and qk-norms; SD3 / SD3.5: the text stream's too), as the command line "
                                         "does. The adapter then carries those tensors (larger file); the MODEL "
                                         "itself is never changed."),
                io.Combo.Input("variant", options=VARIANT_OPTIONS, default="default", optional=True,
                               tooltip="Attention variant of the new adapter: default (EDiT for PixArt, MM-EDiT "
                                       "for SD3 / SD3.5) or one of the paper's baselines, to compare (sana, "
                                       "linfusion, edit_no_convfusion: PixArt; mm_linear: SD3 / SD3.5; "
                                       "kv_compress: both)."),
            ],
            outputs=[
                EDiTAdapterType.Output(display_name="EDIT_ADAPTER",
                                       tooltip="The distilled adapter (also saved to models/edit); connect it to "
                                               "Apply EDiT Attention."),
                io.Image.Output(display_name="loss", tooltip="The training losses over the steps (log scale)."),
            ],
            is_output_node=True,
            is_experimental=True,
        )

    @classmethod
    def execute(cls, model, positive, width: int, height: int, steps: int, learning_rate: float, batch_size: int,
                samples_per_prompt: int, teacher_steps: int, cfg: float, seed: int, save_name: str,
                negative=None, reduction: int = 4, backend: str = "auto",
                train_projections: bool = TRAIN_PROJECTIONS, variant: str = "default") -> io.NodeOutput:
        # every check before anything is loaded or trained
        path = adapter_save_path(save_name)
        check_resolution(int(width), 2, "width")
        check_resolution(int(height), 2, "height")
        config = DistillConfig(steps=int(steps), batch_size=int(batch_size), lr=float(learning_rate),
                               uncond_prob=0.1 if negative else 0.0, log_every=1, seed=int(seed))
        config.validate()
        if samples_per_prompt < 1 or teacher_steps < 1:
            raise DistillError("samples_per_prompt and teacher_steps must be at least 1")
        with torch.inference_mode(False), torch.enable_grad():
            with ComfyDistillHost(model, reduction=int(reduction), backend=backend, seed=int(seed),
                                  train_projections=bool(train_projections),
                                  variant=None if variant in (None, "default") else str(variant)) as host:
                spec = host.spec
                cond, null = host.conditioning(positive, int(width), int(height), negative)
                prompts = next(iter(cond.values())).shape[0]
                cond = {k: v.repeat_interleave(int(samples_per_prompt), dim=0) for k, v in cond.items()}
                count = prompts * int(samples_per_prompt)
                chunks = [(i, min(count, i + int(batch_size))) for i in range(0, count, int(batch_size))]
                config.fp16_loss_scaling = compute_dtype(host.patcher) == torch.float16
                progress = _Progress(len(chunks), int(steps))
                log.info("EDiT distill: %s, %d prompts × %d samples at %d×%d, teacher %d steps%s, then %d training "
                         "steps; saving to %s", spec.title, prompts, samples_per_prompt, width, height, teacher_steps,
                         f" (cfg {cfg})" if negative else "", steps, path)

                x0 = _teacher_samples(host, cond, null, chunks, width, height, teacher_steps, cfg, seed, progress)
                dataset = TensorDataset((x0, cond), null_cond=null)
                resolution = int(round(math.sqrt(width * height)))
                info = {"host": "ComfyUI", "teacher": f"{type(model.model).__name__} ({spec.title})",
                        "prompts": prompts, "samples_per_prompt": int(samples_per_prompt),
                        "teacher_steps": int(teacher_steps), "teacher_cfg": float(cfg) if negative else 1.0,
                        "size": [int(width), int(height)]}
                trainer = Trainer(host, [dataset], [Stage(resolution, 0, int(steps))], host.schedule, config,
                                  progress=progress.step, should_stop=progress.should_stop, training_info=info)
                result = trainer.run()
        adapter = Adapter(result.adapter.config, result.adapter.tensors, source=path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_adapter(adapter, path)
        if result.stopped:
            log.warning("EDiT distill: cancelled after %d of %d steps; the partial adapter is saved as %s",
                        result.steps, steps, path)
            comfy.model_management.throw_exception_if_processing_interrupted()  # clears the flag
            raise comfy.model_management.InterruptProcessingException()
        log.info("EDiT distill: %d steps done, final loss %.4g; saved %s", result.steps,
                 result.last.get("loss", float("nan")), path)
        return io.NodeOutput(adapter, loss_curve_image(progress.history, f"EDiT distillation: {spec.title}"))


def _teacher_samples(host, cond, null, chunks, width, height, teacher_steps, cfg, seed, progress) -> torch.Tensor:
    """Clean latents [N, C, h, w] (CPU, fp32) sampled by the teacher from ``cond`` (with CFG against ``null``)."""
    generator = torch.Generator().manual_seed(int(seed))
    count = chunks[-1][1]
    noise = torch.randn(count, host.latent_channels, int(height) // 8, int(width) // 8, generator=generator)
    interruptible = _Interruptible(host)
    samples = []
    for i, (lo, hi) in enumerate(chunks):
        rows = {k: v[lo:hi] for k, v in cond.items()}
        samples.append(sample_teacher(interruptible, noise[lo:hi], rows, null_cond=null, steps=int(teacher_steps),
                                      guidance=float(cfg), schedule=host.schedule, shift=host.shift).cpu())
        progress.sampled(i + 1)
    return torch.cat(samples)


__all__ = ["EDiTDistill", "adapter_save_path", "loss_curve_image"]
