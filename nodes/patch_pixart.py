"""PixArt-Σ: EDiT self-attention through ComfyUI object patches.

Each converted block's ``diffusion_model.blocks.{i}.attn`` (ComfyUI's ``AttentionKVCompress``) is
object-patched on a clone with ``EDiTPixArtAttention``. The replacement re-registers the original
``qkv``/``proj``/``q_norm``/``k_norm`` children under the same names, so state-dict keys, LoRAs and
``add_patches`` weight patches still resolve; the adapter layer lives in its own ModelPatcher and is
held through a plain (non-registered) tuple. Cross-attention is left alone. PixArt hands every
self-attention ``HW`` = the latent size; the token grid is that over the patch size, rounded up as
PatchEmbed pads.

For distillation (``nodes/distill_host.py``) the module also keeps the original attention (unregistered) and
reads an optional ``distill`` tap: "teacher" runs the original attention, "teacher_forced" runs both on the
same input, records the pair and passes the original's output on; without a tap it is always EDiT.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .projections import fused_qkv_projections


def pixart_token_grid(num_tokens: int, latent_hw, patch_size: int) -> tuple[int, int]:
    if latent_hw is None:  # how AttentionKVCompress itself guesses: a square grid
        side = math.isqrt(num_tokens)
        grid = (side, side)
    else:
        grid = (-(-int(latent_hw[0]) // patch_size), -(-int(latent_hw[1]) // patch_size))
    if grid[0] * grid[1] != num_tokens:
        raise ValueError(f"EDiT: cannot place {num_tokens} PixArt tokens on a {grid[0]}×{grid[1]} grid "
                         f"(latent {latent_hw}, patch {patch_size})")
    return grid


class EDiTPixArtAttention(torch.nn.Module):
    """Drop-in for PixArt's self-attention: EDiT linear compressed attention on the teacher's own weights."""

    def __init__(self, original: torch.nn.Module, layer: torch.nn.Module, *, attention: Callable, patch_size: int,
                 backend: str = "auto"):
        super().__init__()
        if getattr(original, "sr_ratio", 1) > 1:
            raise ValueError("EDiT cannot convert a PixArt self-attention that already uses KV compression "
                             "(sr_ratio > 1)")
        self.qkv = original.qkv
        self.proj = original.proj
        self.q_norm = getattr(original, "q_norm", torch.nn.Identity())
        self.k_norm = getattr(original, "k_norm", torch.nn.Identity())
        self.num_heads = original.num_heads
        self.head_dim = getattr(original, "head_dim", None)
        self.patch_size = int(patch_size)
        self.backend = backend
        self._edit = (layer, attention)  # not registered: the adapter has its own ModelPatcher
        self._original = (original,)  # not registered: its children are ours
        self.distill = None  # a distill_host tap (mode, record) while an adapter is being distilled

    def extra_repr(self) -> str:
        return f"EDiT, heads={self.num_heads}, patch={self.patch_size}, backend={self.backend}"

    def forward(self, x: torch.Tensor, mask=None, HW=None, block_id=None, **kwargs) -> torch.Tensor:
        tap = self.distill
        if tap is None or tap.mode == "student":
            return self._edit_attention(x, mask, HW)
        with torch.no_grad():
            teacher = self._original[0](x, mask=mask, HW=HW, block_id=block_id)
        if tap.mode == "teacher_forced":
            tap.record("attn", teacher, self._edit_attention(x, mask, HW))
        return teacher

    def _edit_attention(self, x: torch.Tensor, mask, HW) -> torch.Tensor:
        if mask is not None:
            raise NotImplementedError("Attn mask logic not added for self attention")  # as ComfyUI's module
        layer, attention = self._edit
        grid = pixart_token_grid(x.shape[1], HW, self.patch_size)
        projections = fused_qkv_projections(self.qkv, x, width_norm_query=self.q_norm, width_norm_key=self.k_norm)
        y = attention(layer, x, grid, projections, self.num_heads, backend=self.backend)
        return self.proj(y)


def patch_pixart(clone, layers: dict, *, attention: Callable, backend: str) -> list[str]:
    """Object-patch ``diffusion_model.blocks.{i}.attn`` on ``clone`` for every (i, "attn") in ``layers``."""
    patch_size = int(clone.get_model_object("diffusion_model").patch_size)
    names = []
    for (block, slot), layer in sorted(layers.items()):
        if slot != "attn":
            raise ValueError(f"PixArt has no {slot!r} attention (block {block})")
        name = f"diffusion_model.blocks.{block}.attn"
        original = clone.get_model_object(name)
        clone.add_object_patch(name, EDiTPixArtAttention(original, layer, attention=attention,
                                                         patch_size=patch_size, backend=backend))
        names.append(name)
    return names
