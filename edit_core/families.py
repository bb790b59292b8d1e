"""Model families, detected from a teacher state dict's key names and shapes.

Supported: ``pixart_sigma`` (PixArt-Σ, EDiT on every block's self-attention) and ``sd35_medium``
(SD3.5-Medium MMDiT-X: MM-EDiT on every joint attention, EDiT on the image-only ``attn2`` layers).
Recognised but not supported yet: ``pixart_alpha``, ``sd35_large`` and ``sd3_medium``. Both ComfyUI-format keys
(fused ``qkv``) and diffusers-format keys (``to_q/to_k/to_v``) are read, with or without a
``model.diffusion_model.`` / ``diffusion_model.`` / ``transformer.`` prefix.

``teacher_attention_weights`` returns one converted layer's projection weights under the canonical
(diffusers-style) names used by ``modules.attention`` and by fine-tuned adapter tensors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Optional

import torch

SUPPORTED_FAMILIES = ("pixart_sigma", "sd35_medium")
KNOWN_FAMILIES = SUPPORTED_FAMILIES + ("pixart_alpha", "sd35_large", "sd3_medium")
FAMILY_TITLES = {"pixart_sigma": "PixArt-Sigma", "pixart_alpha": "PixArt-Alpha", "sd35_medium": "SD3.5-Medium",
                 "sd35_large": "SD3.5-Large", "sd3_medium": "SD3-Medium"}
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.")

IMAGE_NAMES = ("to_q", "to_k", "to_v", "to_out", "norm_q", "norm_k")
TEXT_NAMES = ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "norm_added_q", "norm_added_k")


class FamilyError(ValueError):
    """The state dict is not a model family we can convert."""


@dataclass
class TeacherSpec:
    family: str
    layout: str  # "comfyui" | "diffusers"
    num_blocks: int
    hidden_size: int
    num_heads: int
    head_dim: int
    qk_norm: Optional[str] = None  # "rms" or None
    attn2_blocks: list[int] = field(default_factory=list)  # SD3.5-M dual-attention layers
    prefix: str = ""

    @property
    def title(self) -> str:
        return FAMILY_TITLES.get(self.family, self.family)


def strip_prefix(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict, str]:
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in state_dict):
            return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}, prefix
    return dict(state_dict), ""


def _block_indices(keys, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def detect_teacher(state_dict: Mapping[str, torch.Tensor], family: Optional[str] = None,
                   num_heads: Optional[int] = None) -> TeacherSpec:
    """Detect the family and attention geometry of a teacher state dict (ComfyUI or diffusers keys)."""
    sd, prefix = strip_prefix(state_dict)
    keys = sd.keys()
    spec = None
    if "joint_blocks.0.context_block.attn.qkv.weight" in sd:
        blocks = _block_indices(keys, r"joint_blocks\.(\d+)\.")
        hidden = sd["joint_blocks.0.x_block.attn.qkv.weight"].shape[1]
        qk_norm = "rms" if "joint_blocks.0.x_block.attn.ln_q.weight" in sd else None
        head_dim = sd["joint_blocks.0.x_block.attn.ln_q.weight"].shape[0] if qk_norm else 64
        attn2 = _block_indices(keys, r"joint_blocks\.(\d+)\.x_block\.attn2\.qkv\.weight")
        spec = TeacherSpec("sd3", "comfyui", len(blocks), hidden, hidden // head_dim, head_dim, qk_norm, attn2, prefix)
    elif "transformer_blocks.0.attn.add_q_proj.weight" in sd:
        blocks = _block_indices(keys, r"transformer_blocks\.(\d+)\.")
        hidden = sd["transformer_blocks.0.attn.to_q.weight"].shape[1]
        qk_norm = "rms" if "transformer_blocks.0.attn.norm_q.weight" in sd else None
        head_dim = sd["transformer_blocks.0.attn.norm_q.weight"].shape[0] if qk_norm else 64
        attn2 = _block_indices(keys, r"transformer_blocks\.(\d+)\.attn2\.to_q\.weight")
        spec = TeacherSpec("sd3", "diffusers", len(blocks), hidden, hidden // head_dim, head_dim, qk_norm, attn2,
                           prefix)
    elif "t_block.1.weight" in sd and "blocks.0.attn.qkv.weight" in sd:
        blocks = _block_indices(keys, r"blocks\.(\d+)\.")
        hidden = sd["blocks.0.attn.qkv.weight"].shape[1]
        alpha = "ar_embedder.mlp.0.weight" in sd or "csize_embedder.mlp.0.weight" in sd
        spec = TeacherSpec("pixart_alpha" if alpha else "pixart_sigma", "comfyui", len(blocks), hidden, 0, 0,
                           prefix=prefix)
    elif "transformer_blocks.0.attn1.to_q.weight" in sd and any(k.startswith("adaln_single.") for k in keys):
        blocks = _block_indices(keys, r"transformer_blocks\.(\d+)\.")
        hidden = sd["transformer_blocks.0.attn1.to_q.weight"].shape[1]
        alpha = any(k.startswith("adaln_single.emb.resolution_embedder") for k in keys)
        spec = TeacherSpec("pixart_alpha" if alpha else "pixart_sigma", "diffusers", len(blocks), hidden, 0, 0,
                           prefix=prefix)
    if spec is None:
        raise FamilyError("not a PixArt-Sigma or SD3.5-Medium diffusion model (no PixArt 'blocks.N.attn.qkv' / "
                          "'transformer_blocks.N.attn1' keys and no MMDiT 'joint_blocks' / 'transformer_blocks.N.attn' "
                          "keys found)")

    if spec.family == "sd3":
        if spec.attn2_blocks:
            spec.family = "sd35_medium"
        elif spec.num_blocks == 38:
            spec.family = "sd35_large"
        else:
            spec.family = "sd35_medium" if spec.qk_norm else "sd3_medium"
    else:  # PixArt: heads are not in the weights; PixArt-Σ uses 72-wide heads
        heads = num_heads or (spec.hidden_size // 72 if spec.hidden_size % 72 == 0 else None)
        if heads is None:
            raise FamilyError(f"cannot tell the number of attention heads of a PixArt model with hidden size "
                              f"{spec.hidden_size} (not a multiple of 72): pass num_heads")
        spec.num_heads, spec.head_dim = heads, spec.hidden_size // heads
    if num_heads and spec.family.startswith("sd35") and num_heads != spec.num_heads:
        raise FamilyError(f"num_heads={num_heads} disagrees with the model's qk-norm head dim "
                          f"({spec.num_heads} heads of {spec.head_dim})")
    if family is not None and family != spec.family:
        raise FamilyError(f"the teacher is {spec.title} ({spec.num_blocks} blocks, width {spec.hidden_size}), "
                          f"not {FAMILY_TITLES.get(family, family)}")
    if spec.family not in SUPPORTED_FAMILIES:
        raise FamilyError(f"{spec.title} is recognised but not supported yet (supported: "
                          f"{', '.join(FAMILY_TITLES[f] for f in SUPPORTED_FAMILIES)})")
    return spec


def _split_fused(sd: Mapping[str, torch.Tensor], base: str, names=("to_q", "to_k", "to_v")) -> dict:
    out = {}
    for part in ("weight", "bias"):
        fused = sd.get(f"{base}.{part}")
        if fused is not None:
            for name, chunk in zip(names, fused.chunk(3, dim=0)):
                out[f"{name}.{part}"] = chunk
    return out


def _copy(sd, src: str, dst: str, out: dict) -> None:
    for part in ("weight", "bias"):
        if f"{src}.{part}" in sd:
            out[f"{dst}.{part}"] = sd[f"{src}.{part}"]


def teacher_attention_weights(state_dict: Mapping[str, torch.Tensor], spec: TeacherSpec, block: int,
                              slot: str = "attn") -> dict[str, torch.Tensor]:
    """Canonical projection weights of one attention layer (``slot`` "attn" or SD3.5's "attn2")."""
    sd, _ = strip_prefix(state_dict)
    out: dict[str, torch.Tensor] = {}
    if spec.family.startswith("pixart"):
        if spec.layout == "comfyui":
            out.update(_split_fused(sd, f"blocks.{block}.attn.qkv"))
            _copy(sd, f"blocks.{block}.attn.proj", "to_out", out)
        else:
            base = f"transformer_blocks.{block}.attn1"
            for name in ("to_q", "to_k", "to_v"):
                _copy(sd, f"{base}.{name}", name, out)
            _copy(sd, f"{base}.to_out.0", "to_out", out)
        return out
    if spec.layout == "comfyui":
        x_base = f"joint_blocks.{block}.x_block.{slot}"
        out.update(_split_fused(sd, f"{x_base}.qkv"))
        _copy(sd, f"{x_base}.proj", "to_out", out)
        _copy(sd, f"{x_base}.ln_q", "norm_q", out)
        _copy(sd, f"{x_base}.ln_k", "norm_k", out)
        if slot == "attn":
            c_base = f"joint_blocks.{block}.context_block.attn"
            out.update(_split_fused(sd, f"{c_base}.qkv", TEXT_NAMES[:3]))
            _copy(sd, f"{c_base}.proj", "to_add_out", out)
            _copy(sd, f"{c_base}.ln_q", "norm_added_q", out)
            _copy(sd, f"{c_base}.ln_k", "norm_added_k", out)
        return out
    base = f"transformer_blocks.{block}.{slot}"
    for name in ("to_q", "to_k", "to_v", "norm_q", "norm_k") + (TEXT_NAMES if slot == "attn" else ()):
        if name != "to_add_out":
            _copy(sd, f"{base}.{name}", name, out)
    _copy(sd, f"{base}.to_out.0", "to_out", out)
    if slot == "attn":
        _copy(sd, f"{base}.to_add_out", "to_add_out", out)
    return out
