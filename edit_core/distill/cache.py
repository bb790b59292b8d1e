"""On-disk training data: teacher samples (data-free) or VAE-encoded images, as safetensors shards.

One folder per resolution stage::

    index.json                          what the cache was made from (teacher, prompts, buckets, sampler, seed)
    null_cond.safetensors               the empty prompt's conditioning (classifier-free guidance)
    {h}x{w}-{first item:07d}.safetensors  item_ids [n], latents [n, C, h, w] (fp16), cond.{name} [n, ...]

Items are numbered (prompt × samples per prompt); each is assigned a bucket (latent size) and its own
noise seed, so the cache does not depend on the batch size or the number of ranks that built it. A
killed build continues with the missing items; a cache made from other settings is refused. Captions
with an attention mask are stored trimmed to the longest real caption of the shard.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Callable, Mapping, Optional, Sequence

import torch

from .data import PIXELS_PER_LATENT, DistillDataError, concat_conditioning
from .distributed import DistContext
from .host import DistillHost
from .sampling import sample_teacher

CACHE_FORMAT = "edit-distill-cache"
CACHE_VERSION = 1
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_SHARD = re.compile(r"^\d+x\d+-\d{7,}\.safetensors$")
Encoder = Callable[[Sequence[int]], Mapping[str, torch.Tensor]]
"""Text indices → conditioning batch (CPU or device tensors)."""


def _index_path(directory: str) -> str:
    return os.path.join(directory, "index.json")


def _check_or_write_index(directory: str, index: dict, dist: DistContext) -> None:
    path = _index_path(directory)
    if dist.is_main:
        os.makedirs(directory, exist_ok=True)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
            if json.dumps(old.get("fingerprint"), sort_keys=True) != json.dumps(index["fingerprint"], sort_keys=True):
                changed = sorted(k for k in set(old.get("fingerprint", {})) | set(index["fingerprint"])
                                 if old.get("fingerprint", {}).get(k) != index["fingerprint"].get(k))
                raise DistillDataError(f"the data cache {directory} was made with other settings ({', '.join(changed)} "
                                       "differ); delete it or choose another --work-dir")
        else:
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                json.dump(index, f, indent=1, sort_keys=True)
            os.replace(path + ".tmp", path)
    dist.barrier()


def _done_items(directory: str) -> set[int]:
    from safetensors import safe_open

    done: set[int] = set()
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        if _SHARD.match(name):
            with safe_open(os.path.join(directory, name), framework="pt") as f:
                done.update(int(i) for i in f.get_tensor("item_ids").tolist())
    return done


def _trim(cond: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    mask = cond.get("encoder_attention_mask")
    if mask is None:
        return dict(cond)
    valid = mask.reshape(mask.shape[0], -1).bool().any(0).nonzero()
    length = int(valid.max()) + 1 if valid.numel() else 1
    return {k: (v[:, :length] if v.dim() >= 2 and v.shape[1] == mask.shape[1] else v) for k, v in cond.items()}


def _write_shard(directory: str, ids: Sequence[int], latents: torch.Tensor, cond: Mapping[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    h, w = latents.shape[-2:]
    tensors = {"item_ids": torch.tensor(list(ids), dtype=torch.int64),
               "latents": latents.detach().to("cpu", torch.float16).contiguous()}
    tensors.update({f"cond.{k}": v.detach().to("cpu").contiguous() for k, v in _trim(cond).items()})
    path = os.path.join(directory, f"{h}x{w}-{ids[0]:07d}.safetensors")
    save_file(tensors, path + ".tmp")
    os.replace(path + ".tmp", path)


def assign_buckets(count: int, buckets: Sequence[tuple[int, int]], seed: int) -> list[int]:
    """Item → bucket index: a seeded shuffle dealt round-robin, so buckets get equal shares."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    assignment = [0] * count
    for position, item in enumerate(order):
        assignment[item] = position % len(buckets)
    return assignment


def build_teacher_cache(host: DistillHost, directory: str, *, texts: Sequence[str], encode: Encoder,
                        null_cond: Optional[Mapping[str, torch.Tensor]], buckets: Sequence[tuple[int, int]],
                        fingerprint: dict, samples_per_prompt: int = 1, sample_steps: int = 20,
                        guidance: float = 4.5, shift: float = 3.0, schedule=None, seed: int = 0,
                        batch_size: int = 4, dist: Optional[DistContext] = None,
                        progress: Optional[Callable[[int, int], None]] = None) -> "CachedDataset":
    """Sample the teacher once per (prompt, sample) at ``buckets`` (pixel (h, w)); rank r makes items r, r+N, …"""
    dist = dist or DistContext(device=host.device)
    count = len(texts) * samples_per_prompt
    index = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "kind": "teacher", "items": count,
             "buckets": [list(b) for b in buckets],
             "fingerprint": {**fingerprint, "buckets": [list(b) for b in buckets], "samples_per_prompt":
                             samples_per_prompt, "sample_steps": sample_steps, "guidance": guidance, "seed": seed,
                             "shift": shift if host.prediction == "flow" else None}}
    _check_or_write_index(directory, index, dist)
    if dist.is_main and null_cond is not None:
        _save_null(directory, null_cond)
    assignment = assign_buckets(count, buckets, seed)
    done = _done_items(directory)
    mine = [i for i in range(count) if i % dist.world_size == dist.rank and i not in done]
    finished = 0
    for b, (height, width) in enumerate(buckets):
        todo = [i for i in mine if assignment[i] == b]
        h, w = height // PIXELS_PER_LATENT, width // PIXELS_PER_LATENT
        for start in range(0, len(todo), batch_size):
            ids = todo[start:start + batch_size]
            noise = torch.stack([torch.randn(host.latent_channels, h, w, generator=torch.Generator().manual_seed(
                seed * 1_000_003 + height * 7 + width * 13 + i * 100_003)) for i in ids])
            cond = {k: v.to(host.device) for k, v in encode([i // samples_per_prompt for i in ids]).items()}
            latents = sample_teacher(host, noise, cond, null_cond=null_cond, steps=sample_steps, guidance=guidance,
                                     schedule=schedule, shift=shift)
            _write_shard(directory, ids, latents, cond)
            finished += len(ids)
            if progress is not None:
                progress(finished, len(mine))
    dist.barrier()
    return CachedDataset(directory)


def build_image_cache(directory: str, *, images: Sequence[str], captions: Sequence[str], encode: Encoder,
                      null_cond: Optional[Mapping[str, torch.Tensor]], vae, buckets: Sequence[tuple[int, int]],
                      fingerprint: dict, seed: int = 0, batch_size: int = 4, dist: Optional[DistContext] = None,
                      progress: Optional[Callable[[int, int], None]] = None) -> "CachedDataset":
    """VAE-encode ``images`` (resized to cover, centre-cropped to the bucket of nearest aspect ratio)."""
    from PIL import Image

    dist = dist or DistContext()
    device = next(vae.parameters()).device
    dtype = next(vae.parameters()).dtype
    index = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "kind": "images", "items": len(images),
             "buckets": [list(b) for b in buckets],
             "fingerprint": {**fingerprint, "buckets": [list(b) for b in buckets], "seed": seed}}
    _check_or_write_index(directory, index, dist)
    if dist.is_main and null_cond is not None:
        _save_null(directory, null_cond)
    done = _done_items(directory)
    scaling = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
    shift = float(getattr(vae.config, "shift_factor", 0.0) or 0.0)
    sizes = []
    for path in images:
        with Image.open(path) as image:
            sizes.append(image.size)  # (w, h)
    assignment = [min(range(len(buckets)), key=lambda b: abs(_log_ratio(buckets[b]) - _log_ratio((h, w))))
                  for w, h in sizes]
    mine = [i for i in range(len(images)) if i % dist.world_size == dist.rank and i not in done]
    finished = 0
    for b, (height, width) in enumerate(buckets):
        todo = [i for i in mine if assignment[i] == b]
        for start in range(0, len(todo), batch_size):
            ids = todo[start:start + batch_size]
            pixels = torch.stack([_load_image(images[i], height, width) for i in ids]).to(device, dtype)
            with torch.no_grad():
                dist_ = vae.encode(pixels).latent_dist
                g = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + ids[0])
                sample = dist_.mean + dist_.std * torch.randn(dist_.mean.shape, generator=g).to(dist_.mean)
            latents = (sample.float() - shift) * scaling
            cond = {k: v for k, v in encode(list(ids)).items()}
            _write_shard(directory, ids, latents, cond)
            finished += len(ids)
            if progress is not None:
                progress(finished, len(mine))
    dist.barrier()
    return CachedDataset(directory)


def _log_ratio(hw: tuple[int, int]) -> float:
    return math.log(hw[1] / hw[0])


def _load_image(path: str, height: int, width: int) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as opened:
        image = opened.convert("RGB")
    scale = max(width / image.width, height / image.height)
    resized = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))),
                           Image.BICUBIC)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    crop = resized.crop((left, top, left + width, top + height))
    data = torch.frombuffer(bytearray(crop.tobytes()), dtype=torch.uint8).view(height, width, 3)
    return data.permute(2, 0, 1).float() / 127.5 - 1.0


def _save_null(directory: str, null_cond: Mapping[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    path = os.path.join(directory, "null_cond.safetensors")
    save_file({k: v.detach().to("cpu").contiguous() for k, v in _trim(null_cond).items()}, path + ".tmp")
    os.replace(path + ".tmp", path)


def list_images(folder: str) -> tuple[list[str], list[str]]:
    """Image files of ``folder`` (sorted) and their captions (``name.txt`` / ``name.caption``, else "")."""
    images, captions = [], []
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in IMAGE_EXTENSIONS:
            continue
        images.append(os.path.join(folder, name))
        caption = ""
        for suffix in (".txt", ".caption"):
            path = os.path.join(folder, stem + suffix)
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    caption = f.read().strip()
                break
        captions.append(caption)
    return images, captions


class CachedDataset:
    """A finished cache folder as a ``LatentDataset`` (rows are read lazily from the shards)."""

    def __init__(self, directory: str):
        path = _index_path(directory)
        if not os.path.isfile(path):
            raise DistillDataError(f"{directory} is not a distillation data cache (no index.json)")
        with open(path, encoding="utf-8") as f:
            self.index = json.load(f)
        self.directory = directory
        self.has_images = self.index.get("kind") == "images"
        self._where: dict[int, tuple[str, int]] = {}
        self._buckets: dict[tuple[int, int], list[int]] = {}
        self._files: dict = {}
        for name in sorted(os.listdir(directory)):
            if not _SHARD.match(name):
                continue
            shard = os.path.join(directory, name)
            f = self._file(shard)
            latent = tuple(f.get_slice("latents").get_shape()[-2:])
            for row, item in enumerate(f.get_tensor("item_ids").tolist()):
                self._where[int(item)] = (shard, row)
                self._buckets.setdefault(latent, []).append(int(item))
        missing = self.index.get("items", 0) - len(self._where)
        if missing > 0:
            raise DistillDataError(f"the data cache {directory} is incomplete ({missing} of {self.index['items']} "
                                   "items missing); run again to finish it")
        null_path = os.path.join(directory, "null_cond.safetensors")
        self.null_cond = None
        if os.path.isfile(null_path):
            from safetensors.torch import load_file
            self.null_cond = load_file(null_path)

    def _file(self, path: str):
        from safetensors import safe_open

        if path not in self._files:
            self._files[path] = safe_open(path, framework="pt")
        return self._files[path]

    def __len__(self) -> int:
        return len(self._where)

    def buckets(self) -> dict[tuple[int, int], list[int]]:
        return {k: sorted(v) for k, v in self._buckets.items()}

    def load(self, ids: Sequence[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        latents, conds = [], []
        for item in ids:
            shard, row = self._where[int(item)]
            f = self._file(shard)
            latents.append(f.get_slice("latents")[row:row + 1].float())
            conds.append({k[5:]: f.get_slice(k)[row:row + 1] for k in f.keys() if k.startswith("cond.")})
        return torch.cat(latents), concat_conditioning(conds)


__all__ = ["build_teacher_cache", "build_image_cache", "CachedDataset", "list_images", "assign_buckets",
           "CACHE_FORMAT"]
