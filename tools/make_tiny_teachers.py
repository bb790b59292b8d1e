"""Trains the tiny CPU teachers in ``edit_core/data/tiny_teachers/`` (see ``edit_core.tiny_teachers``).

Two diffusers transformers in the real layouts learn to denoise 32×32 crops of scikit-image's bundled photos
(no download): a PixArt-Σ-layout ``PixArtTransformer2DModel`` (ε-prediction, PixArt-Σ's DDPM schedule,
learned-sigma output: only the first half is trained) and an SD3.5-Medium-layout ``SD3Transformer2DModel``
(rectified flow, logit-normal σ as SD3 trains). Their self-attention becomes strongly local, so they are a
fair test bed for attention approximations, unlike random weights.

Deterministic: fixed seeds, fixed step counts (never a time budget), ``torch.use_deterministic_algorithms``,
2 threads. The weights come out bit-identical from run to run on the same torch/diffusers/CPU kind (the
metadata's ``weights_sha256`` says which); only the ``seconds`` fact differs. Needs scikit-image
(``pip install scikit-image``) and diffusers.

    .venv/bin/python tools/make_tiny_teachers.py                      # both teachers, into the package
    .venv/bin/python tools/make_tiny_teachers.py --family sd35_medium
    .venv/bin/python tools/make_tiny_teachers.py --steps 5 --out /tmp/t  # a smoke run elsewhere

Each teacher: ``<family>.safetensors`` (fp16 weights; metadata: the diffusers ``config``, training facts)
and ``<family>_heldout.safetensors`` (held-out clean crops, noise, timesteps, caption tensors).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

OUT_DIR = os.path.join(REPO, "edit_core", "data", "tiny_teachers")
FAMILIES = ("pixart_sigma", "sd35_medium")

# PixArt-Σ layout: ada_norm_single blocks, self- + cross-attention, patch 2, learned sigma (out = 2 × in).
PIXART_CONFIG = dict(sample_size=32, patch_size=2, in_channels=4, out_channels=8, num_layers=4,
                     attention_head_dim=32, num_attention_heads=3, cross_attention_dim=96, caption_channels=16,
                     use_additional_conditions=False, norm_type="ada_norm_single", norm_elementwise_affine=False,
                     norm_eps=1e-6, num_embeds_ada_norm=1000)
# SD3.5-Medium layout: joint attention, RMS qk-norm, image-only attn2 in the first blocks, last block
# context_pre_only (diffusers does that itself). 4 latent channels (the real model has 16; the layout matters).
SD35_CONFIG = dict(sample_size=32, patch_size=2, in_channels=4, out_channels=4, num_layers=4,
                   attention_head_dim=32, num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=64,
                   pooled_projection_dim=32, pos_embed_max_size=16, dual_attention_layers=(0, 1), qk_norm="rms_norm")
CONFIGS = {"pixart_sigma": PIXART_CONFIG, "sd35_medium": SD35_CONFIG}
CLASSES = {"pixart_sigma": "PixArtTransformer2DModel", "sd35_medium": "SD3Transformer2DModel"}

STEPS = {"pixart_sigma": 500, "sd35_medium": 500}
BATCH, LR, CROP, CAPTION_TOKENS = 32, 1e-3, 32, 8
MODEL_SEED, CROP_SEED, NOISE_SEED, CAPTION_SEED = 0, 0, 1, 123
HELDOUT_ITEMS, HELDOUT_CROP_SEED, HELDOUT_NOISE_SEED = 64, 999, 7
LOG_EVERY, EVAL_EVERY = 25, 100

IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")
SCALE = 0.25


# ---------------------------------------------------------------------------------------------- data

def load_images() -> tuple[list[torch.Tensor], dict]:
    """The bundled photos at ×0.25, channels RGB + gray, each channel standardised by its mean and std over
    all pixels of all images: a list of [4, H, W] fp32 tensors, and the facts."""
    import numpy as np
    from skimage import color, data, transform, util

    arrays = []
    for name in IMAGES:
        im = util.img_as_float(getattr(data, name)())[..., :3]
        im = transform.rescale(im, SCALE, channel_axis=-1, anti_aliasing=True)
        arrays.append(np.concatenate([im, color.rgb2gray(im)[..., None]], axis=-1).astype(np.float64))
    pixels = np.concatenate([a.reshape(-1, 4) for a in arrays])
    mean, std = pixels.mean(0), pixels.std(0)
    images = [torch.from_numpy(((a - mean) / std).transpose(2, 0, 1).astype(np.float32)).contiguous() for a in arrays]
    facts = {"images": list(IMAGES), "scale": SCALE, "channels": "R,G,B,gray", "mean": mean.tolist(),
             "std": std.tolist(), "sizes": [list(t.shape[1:]) for t in images], "crop": CROP, "flip": "horizontal"}
    return images, facts


def random_crops(images: list[torch.Tensor], n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` random CROP×CROP crops (image uniform, position uniform, horizontal flip with p = ½)."""
    out = []
    for _ in range(n):
        im = images[int(torch.randint(len(images), (1,), generator=generator))]
        h, w = im.shape[1:]
        y = int(torch.randint(h - CROP + 1, (1,), generator=generator))
        x = int(torch.randint(w - CROP + 1, (1,), generator=generator))
        crop = im[:, y:y + CROP, x:x + CROP]
        if int(torch.randint(2, (1,), generator=generator)):
            crop = crop.flip(-1)
        out.append(crop)
    return torch.stack(out)


def caption(family: str, config: dict) -> dict[str, torch.Tensor]:
    """The constant random caption (8 tokens) and, for SD3, the constant pooled vector: [1, …] fp32."""
    g = torch.Generator().manual_seed(CAPTION_SEED)
    if family == "pixart_sigma":
        return {"encoder_hidden_states": torch.randn(1, CAPTION_TOKENS, config["caption_channels"], generator=g)}
    return {"encoder_hidden_states": torch.randn(1, CAPTION_TOKENS, config["joint_attention_dim"], generator=g),
            "pooled_projections": torch.randn(1, config["pooled_projection_dim"], generator=g)}


def heldout_timesteps(family: str, n: int) -> torch.Tensor:
    """Uniform t, stratified: σ_i = (r(i) + ½)/n with r the bit reversal of i (so every power-of-two prefix of
    the set is itself stratified: the first 32 items spread over the whole range too); PixArt's integer DDPM
    step ⌊1000·σ_i⌋, SD3's 1000·σ_i."""
    bits = n.bit_length() - 1
    if n != 1 << bits:
        raise ValueError(f"the held-out size must be a power of two, not {n}")
    order = [int(format(i, f"0{bits}b")[::-1], 2) if bits else 0 for i in range(n)]
    sigma = (torch.tensor(order, dtype=torch.float64) + 0.5) / n
    t = torch.floor(sigma * 1000) if family == "pixart_sigma" else sigma * 1000
    return t.to(torch.float32)


def write_heldout(family: str, images, data_facts: dict, cond: dict, path: str) -> None:
    from safetensors.torch import save_file

    x0 = random_crops(images, HELDOUT_ITEMS, torch.Generator().manual_seed(HELDOUT_CROP_SEED))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(HELDOUT_NOISE_SEED))
    tensors = {"x0": x0.half(), "noise": noise.half(), "timestep": heldout_timesteps(family, HELDOUT_ITEMS)}
    tensors.update({k: v.contiguous() for k, v in cond.items()})
    metadata = {"family": family, "items": str(HELDOUT_ITEMS), "crop_seed": str(HELDOUT_CROP_SEED),
                "noise_seed": str(HELDOUT_NOISE_SEED), "data": json.dumps(data_facts),
                "timesteps": "uniform, stratified: sigma_i = (bitreverse(i) + 0.5) / N; PixArt floor(1000 sigma), "
                             "SD3 1000 sigma",
                "description": "held-out crops of the same photos (different crop seed), fixed noise; "
                               "x0 and noise fp16, conditioning [1, ...] fp32"}
    save_file(tensors, path, metadata=metadata)


# ---------------------------------------------------------------------------------------------- training

def _round_to_fp16(model: torch.nn.Module) -> None:
    """What the file stores: every state tensor through fp16 and back (the held-out loss is of these weights)."""
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())


def _weights_sha256(path: str) -> str:
    from safetensors.torch import load_file

    digest = hashlib.sha256()
    for key, t in sorted(load_file(path).items()):
        digest.update(key.encode())
        digest.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def train(family: str, out_dir: str, steps: int, command: str) -> dict:
    import diffusers
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from edit_core import tiny_teachers
    from edit_core.distill.schedules import schedule_for
    from edit_core.distill.teachers import save_teacher_file
    from edit_core.integrations.diffusers import forward_kwargs

    config = CONFIGS[family]
    schedule = schedule_for(family)
    images, data_facts = load_images()
    cond = caption(family, config)
    teacher_file = os.path.join(out_dir, f"{family}.safetensors")
    heldout_file = os.path.join(out_dir, f"{family}_heldout.safetensors")
    write_heldout(family, images, data_facts, cond, heldout_file)
    heldout = tiny_teachers.load_heldout(family, heldout_file)
    zero = tiny_teachers.zero_loss(heldout)

    torch.manual_seed(MODEL_SEED)
    model = getattr(diffusers, CLASSES[family])(**config)
    params = sum(p.numel() for p in model.parameters())
    model.eval()  # no dropout anywhere; eval keeps the forward deterministic
    init_loss = tiny_teachers.heldout_loss(model, heldout, family)
    print(f"[{family}] {params:,} parameters; held-out loss at init {init_loss:.4f}, of zeros {zero:.4f}",
          flush=True)

    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    crop_gen = torch.Generator().manual_seed(CROP_SEED)
    noise_gen = torch.Generator().manual_seed(NOISE_SEED)
    batch_cond = {k: v.expand(BATCH, *v.shape[1:]) for k, v in cond.items()}
    channels = config["in_channels"]
    losses, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        x0 = random_crops(images, BATCH, crop_gen)
        noise = torch.randn(x0.shape, generator=noise_gen)
        noised = schedule.add_noise(x0, noise, schedule.sample_timesteps(BATCH, noise_gen))
        pred = model(**forward_kwargs(model, noised.noisy, noised.timestep, batch_cond))[0][:, :channels]
        loss = torch.mean((pred - noised.target) ** 2)  # PixArt: ε MSE on the first half; sigma half unused
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % LOG_EVERY == 0 or step == steps:
            elapsed = time.perf_counter() - start
            line = (f"[{family}] step {step}/{steps}  loss(last {LOG_EVERY}) "
                    f"{sum(losses[-LOG_EVERY:]) / len(losses[-LOG_EVERY:]):.4f}  {elapsed / step:.2f} s/step")
            if step % EVAL_EVERY == 0:
                mass = [row["mass3x3"] for row in tiny_teachers.attention_locality(model, heldout, family)]
                line += (f"  held-out {tiny_teachers.heldout_loss(model, heldout, family):.4f}"
                         f"  3x3 mass {'/'.join(f'{m:.3f}' for m in mass)}")
            print(line, flush=True)
    seconds = time.perf_counter() - start
    train_loss = sum(losses[-50:]) / len(losses[-50:])

    _round_to_fp16(model)
    final = tiny_teachers.heldout_loss(model, heldout, family)
    locality = tiny_teachers.attention_locality(model, heldout, family)
    model.half()
    save_teacher_file(model, teacher_file)  # fp16 tensors + the diffusers config in the "config" metadata
    with safe_open(teacher_file, framework="pt") as f:
        metadata = dict(f.metadata())
    facts = {"family": family, "steps": steps, "seed": MODEL_SEED, "crop_seed": CROP_SEED, "noise_seed": NOISE_SEED,
             "caption_seed": CAPTION_SEED, "batch_size": BATCH, "lr": LR, "optimizer": "Adam, constant lr",
             "seconds": round(seconds, 1), "train_loss": round(train_loss, 5), "heldout_loss": round(final, 5),
             "zero_loss": round(zero, 5), "init_heldout_loss": round(init_loss, 5), "param_count": params,
             "heldout_items": HELDOUT_ITEMS, "train_loss_is": "mean of the last 50 steps' batch losses",
             "heldout_loss_is": "MSE of the fp16-stored weights on the held-out file (uniform t)",
             "objective": ("epsilon MSE on output channels [:in_channels] (learned-sigma half untrained)"
                           if family == "pixart_sigma" else "rectified-flow velocity (eps - x0) MSE"),
             "schedule": json.dumps(schedule.describe()), "data": json.dumps(data_facts),
             "locality": json.dumps([{k: (round(row[k], 4) if isinstance(row[k], float) else row[k])
                                      for k in ("layer", "entropy_ratio", "mass3x3", "distance", "text_mass")}
                                     for row in locality]),
             "command": command, "torch": torch.__version__, "diffusers": diffusers.__version__}
    metadata.update({k: str(v) for k, v in facts.items()})
    save_file(load_file(teacher_file), teacher_file, metadata=metadata)
    metadata["weights_sha256"] = _weights_sha256(teacher_file)
    save_file(load_file(teacher_file), teacher_file, metadata=metadata)
    print(f"[{family}] {steps} steps in {seconds:.0f} s: train loss {train_loss:.4f}, held-out {final:.4f} "
          f"(zeros {zero:.4f}, init {init_loss:.4f}); wrote {teacher_file} ({os.path.getsize(teacher_file):,} B) and "
          f"{heldout_file} ({os.path.getsize(heldout_file):,} B)", flush=True)
    return facts


def write_photos(out_dir: str, command: str) -> str:
    """The teachers' training photos as they see them (×0.25, R, G, B, gray, standardised), fp16, one tensor
    per photo: ``photos.safetensors``, so distillation and its quality checks can train on the same real images
    without scikit-image (``edit_core.tiny_teachers.photo_crops``)."""
    from safetensors.torch import save_file

    images, facts = load_images()
    tensors = {f"photo.{i}": im.to(torch.float16).contiguous() for i, im in enumerate(images)}
    path = os.path.join(out_dir, "photos.safetensors")
    save_file(tensors, path, metadata={"data": json.dumps(facts), "command": command,
                                       "description": "the tiny teachers' training photos (scikit-image's "
                                                      "bundled photos), standardised, fp16"})
    print(f"wrote {path} ({os.path.getsize(path):,} B)", flush=True)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=FAMILIES, action="append",
                        help="train only this teacher (repeatable; default: both)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"override the step count (default: {STEPS}; only for smoke runs)")
    parser.add_argument("--out", default=OUT_DIR, help="output folder (default: edit_core/data/tiny_teachers)")
    parser.add_argument("--photos-only", action="store_true",
                        help="only write photos.safetensors (the training photos, for distillation on real images)")
    args = parser.parse_args(argv)

    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    command = "python tools/make_tiny_teachers.py" + ("" if argv is None and len(sys.argv) == 1 else
                                                      " " + " ".join(sys.argv[1:] if argv is None else argv))
    write_photos(args.out, command)
    if args.photos_only:
        return 0
    for family in args.family or FAMILIES:
        train(family, args.out, args.steps or STEPS[family], command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
