"""The two DiT structures EDiT converts, as data: PixArt (self-attention per block, caption
cross-attention left alone) and MMDiT (joint text–image attention per block, optional image-only
``attn2`` dual-attention layers). Key places cover both host layouts: ComfyUI / original checkpoints
(fused ``qkv``) and diffusers (split ``to_q``/``to_k``/``to_v``).
"""

from __future__ import annotations

from typing import Any, Mapping

from .base import Architecture, KeyLayout, TensorPlace, block_indices

_QKV = ("to_q", "to_k", "to_v")
_TEXT_QKV = ("add_q_proj", "add_k_proj", "add_v_proj")


def _fused(base: str, names=_QKV, out: str = "proj", norms=("ln_q", "ln_k"), norm_names=("norm_q", "norm_k")):
    places = {name: TensorPlace(f"{base}.qkv", i) for i, name in enumerate(names)}
    places[("to_out" if names == _QKV else "to_add_out")] = TensorPlace(f"{base}.{out}")
    places.update({canonical: TensorPlace(f"{base}.{norm}") for canonical, norm in zip(norm_names, norms)})
    return places


def _split(base: str, names=_QKV + ("norm_q", "norm_k")):
    places = {name: TensorPlace(f"{base}.{name}") for name in names}
    places["to_out"] = TensorPlace(f"{base}.to_out.0")
    return places


# ---------------------------------------------------------------------------------------------- PixArt

def _probe_pixart(sd: Mapping, layout: KeyLayout) -> dict:
    if layout.name == "comfyui":
        hidden = sd["blocks.0.attn.qkv.weight"].shape[1]
        micro = "ar_embedder.mlp.0.weight" in sd or "csize_embedder.mlp.0.weight" in sd
    else:
        hidden = sd["transformer_blocks.0.attn1.to_q.weight"].shape[1]
        micro = any(k.startswith("adaln_single.emb.resolution_embedder") for k in sd)
    return {"num_blocks": len(block_indices(sd.keys(), layout.block_pattern)), "hidden_size": int(hidden),
            "head_dim": None, "qk_norm": None, "attn2_blocks": [], "micro_conditions": micro}


def _probe_pixart_config(config: Mapping[str, Any]) -> dict:
    heads, head_dim = int(config["num_attention_heads"]), int(config["attention_head_dim"])
    micro = config.get("use_additional_conditions")
    if micro is None:  # diffusers' own rule for PixArt-α checkpoints that predate the option
        micro = int(config.get("sample_size", 0)) == 128
    return {"num_blocks": int(config["num_layers"]), "hidden_size": heads * head_dim, "head_dim": head_dim,
            "qk_norm": None, "attn2_blocks": [], "micro_conditions": bool(micro)}


PIXART = Architecture(
    name="pixart", joint=False, slots=("attn",),
    layouts=(
        KeyLayout("comfyui", markers=("t_block.1.weight", "blocks.0.attn.qkv.weight"),
                  block_pattern=r"blocks\.(\d+)\.",
                  places={"attn": _fused("blocks.{block}.attn", norms=("q_norm", "k_norm"))},
                  modules={"attn": "blocks.{block}.attn"}),
        KeyLayout("diffusers", markers=("transformer_blocks.0.attn1.to_q.weight", "adaln_single.linear.weight"),
                  block_pattern=r"transformer_blocks\.(\d+)\.",
                  places={"attn": _split("transformer_blocks.{block}.attn1")},
                  modules={"attn": "transformer_blocks.{block}.attn1"}),
    ),
    probe=_probe_pixart, probe_config=_probe_pixart_config, diffusers_class="PixArtTransformer2DModel",
    heads_in_weights=False, default_head_dim=72)


# ---------------------------------------------------------------------------------------------- MMDiT

def _probe_mmdit(sd: Mapping, layout: KeyLayout) -> dict:
    if layout.name == "comfyui":
        hidden = sd["joint_blocks.0.x_block.attn.qkv.weight"].shape[1]
        norm = sd.get("joint_blocks.0.x_block.attn.ln_q.weight")
        attn2 = block_indices(sd.keys(), r"joint_blocks\.(\d+)\.x_block\.attn2\.qkv\.weight")
    else:
        hidden = sd["transformer_blocks.0.attn.to_q.weight"].shape[1]
        norm = sd.get("transformer_blocks.0.attn.norm_q.weight")
        attn2 = block_indices(sd.keys(), r"transformer_blocks\.(\d+)\.attn2\.to_q\.weight")
    return {"num_blocks": len(block_indices(sd.keys(), layout.block_pattern)), "hidden_size": int(hidden),
            "head_dim": None if norm is None else int(norm.shape[0]), "qk_norm": None if norm is None else "rms",
            "attn2_blocks": attn2, "dual_attention": bool(attn2)}


def _probe_mmdit_config(config: Mapping[str, Any]) -> dict:
    heads, head_dim = int(config["num_attention_heads"]), int(config["attention_head_dim"])
    qk_norm = config.get("qk_norm")
    attn2 = sorted(int(b) for b in (config.get("dual_attention_layers") or ()))
    return {"num_blocks": int(config["num_layers"]), "hidden_size": heads * head_dim, "head_dim": head_dim,
            "qk_norm": None if qk_norm is None else ("rms" if qk_norm == "rms_norm" else qk_norm),
            "attn2_blocks": attn2, "dual_attention": bool(attn2)}


_MMDIT_DIFFUSERS_ATTN = _split("transformer_blocks.{block}.attn")
_MMDIT_DIFFUSERS_ATTN.update({name: TensorPlace(f"transformer_blocks.{{block}}.attn.{name}")
                              for name in _TEXT_QKV + ("to_add_out", "norm_added_q", "norm_added_k")})

MMDIT = Architecture(
    name="mmdit", joint=True, slots=("attn", "attn2"),
    layouts=(
        KeyLayout("comfyui", markers=("joint_blocks.0.context_block.attn.qkv.weight",),
                  block_pattern=r"joint_blocks\.(\d+)\.",
                  places={"attn": {**_fused("joint_blocks.{block}.x_block.attn"),
                                   **_fused("joint_blocks.{block}.context_block.attn", names=_TEXT_QKV,
                                            norm_names=("norm_added_q", "norm_added_k"))},
                          "attn2": _fused("joint_blocks.{block}.x_block.attn2")},
                  modules={"attn": "joint_blocks.{block}", "attn2": "joint_blocks.{block}"}),
        KeyLayout("diffusers", markers=("transformer_blocks.0.attn.add_q_proj.weight",),
                  block_pattern=r"transformer_blocks\.(\d+)\.",
                  places={"attn": _MMDIT_DIFFUSERS_ATTN, "attn2": _split("transformer_blocks.{block}.attn2")},
                  modules={"attn": "transformer_blocks.{block}.attn", "attn2": "transformer_blocks.{block}.attn2"}),
    ),
    probe=_probe_mmdit, probe_config=_probe_mmdit_config, diffusers_class="SD3Transformer2DModel",
    heads_in_weights=True, default_head_dim=64)

ARCHITECTURES = (PIXART, MMDIT)

# Training facts the families of one architecture share (``Family(**PIXART_TRAINING, ...)``).
PIXART_TRAINING = dict(
    prediction="epsilon",
    schedule={"kind": "ddpm", "num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02,
              "beta_schedule": "linear"},
    sampling_shift=1.0, conditioning=("encoder_hidden_states", "encoder_attention_mask"),
    text_width_key="caption_channels")
MMDIT_TRAINING = dict(
    prediction="flow", schedule={"kind": "flow"}, sampling_shift=3.0,
    conditioning=("encoder_hidden_states", "pooled_projections"), text_width_key="joint_attention_dim",
    pipelines=("StableDiffusion3Pipeline",))
SD3_CONFIG = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, attention_head_dim=64,
                  joint_attention_dim=4096, pooled_projection_dim=2048)
"""The diffusers config keys SD3-Medium, SD3.5-Medium and SD3.5-Large share."""
