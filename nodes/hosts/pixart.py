"""PixArt (ComfyUI's ``PixArtMS``: PixArt-Σ and PixArt-α): EDiT self-attention through object patches.

Each converted block's ``diffusion_model.blocks.{i}.attn`` (ComfyUI's ``AttentionKVCompress``) is
object-patched on a clone with ``EDiTPixArtAttention``, which re-registers the original
``qkv``/``proj``/``q_norm``/``k_norm`` children under the same names, so state-dict keys, LoRAs and
``add_patches`` weight patches still resolve. Its "attn" slot runs ``EDiTPixArtSelfAttention`` (the
variant's self-attention on the teacher's own weights, or on a ``ProjectionWeights`` table's tensors where
distillation set one as its ``projection_weights``). Cross-attention is left alone. PixArt hands every
self-attention ``HW`` = the latent size; the token grid is that over the patch size, rounded up as
PatchEmbed pads.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from ..projections import apply_linear, fused_qkv_projections
from .base import AttentionSlots, ComfyHost, slot_is_free


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


class EDiTPixArtSelfAttention(torch.nn.Module):
    """The variant's self-attention with ``AttentionKVCompress``'s call signature, on the original's weights
    (``projection_weights``: a ``ProjectionWeights`` whose tensors replace them, set only by distillation)."""

    projection_weights = None

    def __init__(self, original: torch.nn.Module, layer: torch.nn.Module, *, attention: Callable, patch_size: int,
                 backend: str = "auto", gate: Optional[Callable[[int], bool]] = None):
        super().__init__()
        if getattr(original, "sr_ratio", 1) > 1:
            raise ValueError("EDiT cannot convert a PixArt self-attention that already uses KV compression "
                             "(sr_ratio > 1)")
        self.num_heads = original.num_heads
        self.patch_size = int(patch_size)
        self.backend = backend
        self._parts = (original, layer, attention)  # not registered: the weights belong to others
        self.gate = gate

    def extra_repr(self) -> str:
        return f"EDiT, heads={self.num_heads}, patch={self.patch_size}, backend={self.backend}"

    def forward(self, x: torch.Tensor, mask=None, HW=None, block_id=None, **kwargs) -> torch.Tensor:
        if mask is not None:
            raise NotImplementedError("Attn mask logic not added for self attention")  # as ComfyUI's module
        original, layer, attention = self._parts
        if self.gate is not None and not self.gate(x.shape[1]):
            return original(x, mask=mask, HW=HW, block_id=block_id)
        grid = pixart_token_grid(x.shape[1], HW, self.patch_size)
        projections = fused_qkv_projections(original.qkv, x, width_norm_query=getattr(original, "q_norm", None),
                                            width_norm_key=getattr(original, "k_norm", None),
                                            weights=self.projection_weights)
        y = attention(layer, x, grid, projections, self.num_heads, backend=self.backend)
        return apply_linear(original.proj, y, self.projection_weights)


class EDiTPixArtAttention(AttentionSlots):
    """Drop-in for PixArt's self-attention whose one slot, "attn", runs a replaceable module."""

    def __init__(self, original: torch.nn.Module, block: int, attention: torch.nn.Module):
        super().__init__()
        self.qkv = original.qkv
        self.proj = original.proj
        self.q_norm = getattr(original, "q_norm", torch.nn.Identity())
        self.k_norm = getattr(original, "k_norm", torch.nn.Identity())
        self.num_heads = original.num_heads
        self.block = int(block)
        self.softmax_slots = {"attn": original}
        self.slots = {"attn": attention}

    def extra_repr(self) -> str:
        return f"block={self.block}, attn={type(self.slots['attn']).__name__}"

    def forward(self, x: torch.Tensor, mask=None, HW=None, block_id=None, **kwargs) -> torch.Tensor:
        return self.slots["attn"](x, mask=mask, HW=HW, block_id=block_id)

    def layer_outputs(self, slot: str, output, weights=None) -> dict[str, torch.Tensor]:
        return {"": output}  # the slot's output is already projected


def _accepts(diffusion_model) -> bool:
    import comfy.ldm.pixart.pixartms as pixartms

    return isinstance(diffusion_model, pixartms.PixArtMS)


def patch_pixart(clone, plan, layers: dict, *, gate=None, fill_only: bool = False) -> dict:
    """Object-patch ``diffusion_model.blocks.{i}.attn`` on ``clone`` for every (i, "attn") in ``layers``."""
    patch_size = int(clone.get_model_object("diffusion_model").patch_size)
    converted = {}
    for (block, slot), layer in sorted(layers.items()):
        if slot != "attn":
            raise ValueError(f"PixArt has no {slot!r} attention (block {block})")
        name = f"diffusion_model.blocks.{block}.attn"
        current = clone.get_model_object(name)
        if fill_only and not slot_is_free(current, slot):
            continue
        original = current.softmax_slots["attn"] if isinstance(current, AttentionSlots) else current
        attention = EDiTPixArtSelfAttention(original, layer, attention=plan.variant.self_attention,
                                            patch_size=patch_size, backend=plan.backend, gate=gate)
        clone.add_object_patch(name, EDiTPixArtAttention(original, block, attention))
        converted[(block, slot)] = attention
    return converted


PIXART_HOST = ComfyHost(name="PixArtMS", accepts=_accepts, num_heads=lambda dm: int(dm.num_heads),
                        patch_size=lambda dm: int(dm.patch_size), patch=patch_pixart)
