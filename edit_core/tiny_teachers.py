"""Tiny *trained* teachers with real attention structure, committed in ``edit_core/data/tiny_teachers/``.

``edit_core.tiny`` builds random-weight models: fine for plumbing, useless for judging an attention
approximation (a random model's attention is nearly uniform, so every approximation looks perfect). The
teachers here were trained on CPU (``tools/make_tiny_teachers.py``, deterministic, fixed step counts) to
denoise 32×32 crops of scikit-image's bundled photos, and their self-attention became strongly local.

- ``pixart_sigma``: a ``PixArtTransformer2DModel`` in PixArt-Σ's layout (ada_norm_single blocks, learned-sigma
  output with ``out_channels = 2 × in_channels``), ε-prediction under PixArt-Σ's DDPM schedule.
- ``sd35_medium``: an ``SD3Transformer2DModel`` in SD3.5-Medium's layout (joint attention, RMS qk-norm,
  image-only ``attn2`` in blocks 0–1, last block ``context_pre_only``), rectified flow.

Both take 4-channel 32×32 latents (RGB + gray, standardised; 16×16 = 256 tokens) and a constant random
8-token caption (plus a constant pooled vector for SD3). Each teacher has a held-out set beside it
(``<family>_heldout.safetensors``: clean crops, fixed noise, fixed uniformly spread timesteps and the caption
tensors), so evaluation needs neither scikit-image nor any download.

Pure torch + diffusers. ``attention_locality`` measures each converted self-attention layer with a plain
softmax reference (see its docstring).
"""

from __future__ import annotations

import json
import math
import os
from typing import Optional

import torch

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "tiny_teachers")
FAMILIES = ("pixart_sigma", "sd35_medium")

_NUMERIC_FACTS = ("steps", "seed", "seconds", "train_loss", "heldout_loss", "zero_loss", "init_heldout_loss",
                  "batch_size", "lr", "param_count", "heldout_items")


def _family_name(family: str) -> str:
    from .families import get_family

    name = get_family(family).name
    if name not in FAMILIES:
        raise KeyError(f"no tiny trained teacher for {name!r}; there are: {', '.join(FAMILIES)}")
    return name


def teacher_path(family: str) -> str:
    return os.path.join(DATA_DIR, f"{_family_name(family)}.safetensors")


def heldout_path(family: str) -> str:
    return os.path.join(DATA_DIR, f"{_family_name(family)}_heldout.safetensors")


def _metadata(path: str) -> dict:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return dict(f.metadata() or {})


def teacher_facts(family: str, path: Optional[str] = None) -> dict:
    """The teacher file's metadata: ``config`` (the diffusers config), ``schedule``, ``data`` and ``locality``
    (the final per-layer table) parsed from JSON; the training facts as numbers (steps, seed, seconds,
    train_loss, heldout_loss, zero_loss, init_heldout_loss, …); the rest (``command``, versions,
    ``weights_sha256``) as strings."""
    facts: dict = _metadata(path or teacher_path(family))
    for key in ("config", "schedule", "data", "locality"):
        if key in facts:
            facts[key] = json.loads(facts[key])
    for key in _NUMERIC_FACTS:
        if key in facts:
            value = float(facts[key])
            facts[key] = int(value) if value.is_integer() and key in ("steps", "seed", "batch_size", "param_count",
                                                                        "heldout_items") else value
    return facts


def load_tiny_teacher(family: str, path: Optional[str] = None, dtype: torch.dtype = torch.float32):
    """The trained tiny teacher of ``family`` ("pixart_sigma" or "sd35_medium", or an alias): a diffusers
    transformer in eval mode, ``dtype`` (fp32 by default; the file stores fp16), gradients off."""
    import diffusers
    from safetensors.torch import load_file

    from .distill.teachers import config_args
    from .families import get_family

    path = path or teacher_path(family)
    config = json.loads(_metadata(path)["config"])
    cls = getattr(diffusers, get_family(family).architecture.diffusers_class)
    model = cls(**config_args(cls, config))
    state = load_file(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"'{path}' does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if dtype != torch.float32:
        torch.nn.Module.to(model, dtype)
    return model.requires_grad_(False).eval()


def load_heldout(family: str, path: Optional[str] = None) -> dict:
    """The held-out set of ``family``'s teacher, fp32:

    - ``x0`` [N, C, 32, 32] clean crops, ``noise`` [N, C, 32, 32], ``timestep`` [N] in the model's units
      (PixArt: integer DDPM steps 0…999; SD3: 1000·σ), stratified uniformly over the range in bit-reversed
      order, so the first 2^k items (``items=32``) are spread over the whole range too;
    - ``noisy`` and ``target`` from the family's training schedule (``schedule_for(family).add_noise``):
      x_t, and ε (PixArt) or ε − x0 (SD3);
    - the conditioning under the diffusers host's keys, expanded to N rows: ``encoder_hidden_states``
      (and ``pooled_projections`` for SD3).
    """
    from safetensors.torch import load_file

    from .distill.schedules import schedule_for

    name = _family_name(family)
    tensors = {k: v.float() for k, v in load_file(path or heldout_path(name)).items()}
    n = tensors["x0"].shape[0]
    out = {k: tensors[k] for k in ("x0", "noise", "timestep")}
    noised = schedule_for(name).add_noise(out["x0"], out["noise"], out["timestep"])
    out["noisy"], out["target"] = noised.noisy, noised.target
    for key in ("encoder_hidden_states", "pooled_projections"):
        if key in tensors:
            out[key] = tensors[key].expand(n, *tensors[key].shape[1:])
    return out


def _rows(heldout: dict, rows: slice) -> dict:
    return {k: v[rows] for k, v in heldout.items()}


def _cond(heldout: dict, family: str) -> dict:
    from .families import get_family

    return {k: heldout[k] for k in get_family(family).conditioning if k in heldout}


@torch.no_grad()
def predict(model, heldout: dict, family: str, batch_size: int = 32, items: Optional[int] = None) -> torch.Tensor:
    """The model's task prediction on the held-out noisy crops: the output's first ``in_channels`` channels
    (PixArt's learned-sigma half is dropped; SD3's output is whole). fp32 [N, C, H, W]."""
    from .integrations.diffusers import forward_kwargs

    n = heldout["x0"].shape[0] if items is None else min(items, heldout["x0"].shape[0])
    channels = int(model.config.in_channels)
    dtype = next(model.parameters()).dtype
    outs = []
    for start in range(0, n, batch_size):
        part = _rows(heldout, slice(start, min(n, start + batch_size)))
        cond = {k: v.to(dtype) for k, v in _cond(part, family).items()}
        kwargs = forward_kwargs(model, part["noisy"].to(dtype), part["timestep"], cond)
        outs.append(model(**kwargs)[0][:, :channels].float())
    return torch.cat(outs)


def heldout_loss(model, heldout: dict, family: str, items: Optional[int] = None) -> float:
    """Mean squared error of ``predict`` against the held-out ``target``."""
    pred = predict(model, heldout, family, items=items)
    return float(torch.mean((pred - heldout["target"][: pred.shape[0]]) ** 2))


def zero_loss(heldout: dict, items: Optional[int] = None) -> float:
    """The held-out loss of predicting zeros (the bar a teacher must clear)."""
    target = heldout["target"][:items]
    return float(torch.mean(target ** 2))


# ---------------------------------------------------------------------------------------------- photos

def photos_path() -> str:
    return os.path.join(DATA_DIR, "photos.safetensors")


def load_photos(path: Optional[str] = None) -> list[torch.Tensor]:
    """The teachers' training photos exactly as they saw them (×0.25; R, G, B, gray; standardised), fp32
    [4, H, W] each, from ``photos.safetensors`` (fp16; written by ``tools/make_tiny_teachers.py``)."""
    from safetensors.torch import load_file

    tensors = load_file(path or photos_path())
    return [tensors[f"photo.{i}"].float() for i in range(len(tensors))]


def photo_crops(n: int, seed: int = 0, size: int = 32, photos: Optional[list[torch.Tensor]] = None) -> torch.Tensor:
    """``n`` random ``size``×``size`` crops of the training photos [n, 4, size, size]: photo uniform, position
    uniform, horizontal flip with p = ½, all from one generator seeded with ``seed`` (the same recipe the
    teachers trained on; pass another seed than theirs for fresh crops)."""
    photos = photos if photos is not None else load_photos()
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        im = photos[int(torch.randint(len(photos), (1,), generator=g))]
        y = int(torch.randint(im.shape[1] - size + 1, (1,), generator=g))
        x = int(torch.randint(im.shape[2] - size + 1, (1,), generator=g))
        crop = im[:, y:y + size, x:x + size]
        out.append(crop.flip(-1) if int(torch.randint(2, (1,), generator=g)) else crop)
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------- locality

def attention_layers(model, family: str) -> list[tuple[str, str]]:
    """(module path, slot) of every self-attention layer the pack converts, in block order: PixArt's
    ``transformer_blocks.N.attn1``; MMDiT's joint ``transformer_blocks.N.attn`` and ``attn2`` where present."""
    from .families import attention_module_path, detect_teacher

    spec = detect_teacher(model.state_dict(), family=family, num_heads=model.config.num_attention_heads)
    layers = []
    for block in range(spec.num_blocks):
        for slot in spec.record.architecture.slots:
            if slot == "attn2" and block not in spec.attn2_blocks:
                continue
            layers.append((attention_module_path(spec, block, slot, layout="diffusers"), slot))
    return layers


class _LocalityRecorder:
    """An attention processor that recomputes the layer's softmax map from the same inputs (q/k projections,
    the layer's qk-norms, ``attn.scale``), accumulates its statistics, and returns the wrapped processor's
    own output untouched."""

    def __init__(self, inner, grid: tuple[int, int], stats: dict):
        self.inner, self.grid, self.stats = inner, grid, stats

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        self._record(attn, hidden_states, encoder_hidden_states)
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)

    @torch.no_grad()
    def _record(self, attn, hidden_states, encoder_hidden_states):
        b, n, _ = hidden_states.shape
        heads = attn.heads

        def split(x):
            return x.float().view(b, x.shape[1], heads, -1).transpose(1, 2)

        q, k = split(attn.to_q(hidden_states)), split(attn.to_k(hidden_states))
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        joint = encoder_hidden_states is not None and getattr(attn, "add_k_proj", None) is not None
        if joint:  # MMDiT joint attention: image keys first, then the text keys (as JointAttnProcessor2_0)
            kt = split(attn.add_k_proj(encoder_hidden_states))
            if attn.norm_added_k is not None:
                kt = attn.norm_added_k(kt)
            k = torch.cat([k, kt], dim=2)
        probs = torch.softmax((q @ k.transpose(-1, -2)) * attn.scale, dim=-1)  # [B, h, N, N (+ text)]
        image = probs[..., :n]
        text_mass = 1.0 - image.sum(-1)  # [B, h, N]
        image = image / image.sum(-1, keepdim=True)  # the image→image part, renormalised over image keys
        near, dist = _grid_geometry(self.grid)
        entropy = -(image * torch.log(image.clamp_min(1e-30))).sum(-1) / math.log(n)
        mass = (image * near).sum(-1)
        s = self.stats
        s["rows"] = s.get("rows", 0) + b * n
        s["entropy"] = s.get("entropy", 0.0) + entropy.sum(dim=(0, 2)).double()  # per head
        s["mass3x3"] = s.get("mass3x3", 0.0) + mass.sum(dim=(0, 2)).double()
        s["distance"] = s.get("distance", 0.0) + (image * dist).sum(-1).sum(dim=(0, 2)).double()
        s["text_mass"] = s.get("text_mass", 0.0) + text_mass.sum(dim=(0, 2)).double()
        s["joint"] = joint


def _grid_geometry(grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """For row-major tokens on a ``grid``: [N, N] indicator of the 3×3 neighbourhood, and token distances."""
    gh, gw = grid
    n = gh * gw
    ys, xs = torch.arange(n) // gw, torch.arange(n) % gw
    dy, dx = (ys[:, None] - ys[None]).abs(), (xs[:, None] - xs[None]).abs()
    return ((dy <= 1) & (dx <= 1)).float(), torch.sqrt((dy ** 2 + dx ** 2).float())


def _uniform_references(grid: tuple[int, int]) -> dict:
    near, dist = _grid_geometry(grid)
    n = near.shape[0]
    return {"entropy_ratio": 1.0, "mass3x3": float(near.sum() / n / n), "distance": float(dist.mean())}


@torch.no_grad()
def attention_locality(model, heldout: dict, family: str, items: Optional[int] = None,
                       batch_size: int = 32) -> list[dict]:
    """How local each converted self-attention layer is, on the held-out noisy crops (their timesteps are
    spread uniformly over the schedule).

    Method: each layer's processor is wrapped for the duration of the call by one that recomputes the
    attention probabilities with a plain softmax from the same inputs (the layer's ``to_q``/``to_k`` and, for
    joint attention, ``add_k_proj``; its qk-norms; ``attn.scale``), accumulates statistics and then returns the
    original processor's output, so the forward itself is unchanged. Statistics are over image-token query
    rows and image-token keys; for MMDiT's joint attention the image→image block is renormalised to sum to 1
    per row, and the mass those rows put on the text keys is reported separately (``text_mass``).

    Returns one dict per layer (block order): ``layer`` (module path), ``slot`` ("attn"/"attn2"),
    ``entropy_ratio`` (mean row entropy / log N; uniform = 1), ``mass3x3`` (mass on the query's 3×3 token
    neighbourhood, edges clipped; uniform = 9/256-ish, see ``uniform``), ``distance`` (attention-weighted
    token distance), ``text_mass`` (joint attention only, else 0), per-head ``mass3x3_heads``, and
    ``uniform`` (the same statistics of uniform attention)."""
    patch = int(model.config.patch_size)
    grid = (heldout["x0"].shape[-2] // patch, heldout["x0"].shape[-1] // patch)
    layers = attention_layers(model, family)
    stats = {path: {} for path, _ in layers}
    originals = {}
    for path, _ in layers:
        module = model.get_submodule(path)
        originals[path] = module.processor
        module.processor = _LocalityRecorder(module.processor, grid, stats[path])
    try:
        predict(model, heldout, family, batch_size=batch_size, items=items)
    finally:
        for path, processor in originals.items():
            model.get_submodule(path).processor = processor
    uniform = _uniform_references(grid)
    table = []
    for path, slot in layers:
        s = stats[path]
        rows = s["rows"]
        table.append({
            "layer": path, "slot": slot,
            "entropy_ratio": float(s["entropy"].mean() / rows),
            "mass3x3": float(s["mass3x3"].mean() / rows),
            "distance": float(s["distance"].mean() / rows),
            "text_mass": float(s["text_mass"].mean() / rows) if s["joint"] else 0.0,
            "mass3x3_heads": [float(v / rows) for v in s["mass3x3"]],
            "uniform": uniform,
        })
    return table


def format_locality(table: list[dict]) -> str:
    """A markdown table of ``attention_locality``'s result."""
    lines = ["| layer | entropy / log N | 3×3 mass | distance | text mass |", "|---|---|---|---|---|"]
    for row in table:
        lines.append(f"| {row['layer']} | {row['entropy_ratio']:.3f} | {row['mass3x3']:.3f} | {row['distance']:.2f} "
                     f"| {row['text_mass']:.3f} |")
    u = table[0]["uniform"] if table else _uniform_references((16, 16))
    lines.append(f"| (uniform) | 1.000 | {u['mass3x3']:.3f} | {u['distance']:.2f} | |")
    return "\n".join(lines)


__all__ = ["DATA_DIR", "FAMILIES", "load_photos", "photo_crops", "photos_path", "attention_layers", "attention_locality", "format_locality", "heldout_loss",
           "heldout_path", "load_heldout", "load_tiny_teacher", "predict", "teacher_facts", "teacher_path",
           "zero_loss"]
