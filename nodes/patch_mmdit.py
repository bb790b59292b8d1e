"""SD3.5-Medium (MMDiT-X): MM-EDiT joint attention and EDiT ``attn2`` through ComfyUI object patches.

Each converted ``diffusion_model.joint_blocks.{i}`` is object-patched with ``EDiTJointBlock``, which
re-registers the original ``context_block``/``x_block`` (same state-dict keys: LoRAs and weight patches
still apply) and follows ComfyUI's block mixing step by step — adaLN modulation, ``pre_only`` text
stream of the last block, the ``attn2`` dual-attention path, gated residuals and MLPs through the
blocks' own ``post_attention``/``post_attention_x`` — except that the joint attention is the variant's
``joint_attention`` (text first, as ComfyUI concatenates) and a converted ``attn2`` is the variant's
``self_attention``. Attentions that are not converted go through ComfyUI's own ``optimized_attention``.

For distillation (``nodes/distill_host.py``) the block also keeps the original joint block (unregistered) and
reads an optional ``distill`` tap: "teacher" runs the original block, "teacher_forced" runs ComfyUI's softmax
attention and the converted one on the same inputs, records each converted stream's pair (after its output
projection) and carries the softmax outputs on; without a tap it is the patched block.

MMDiT keeps the latent size in a local variable, so an ``APPLY_MODEL`` wrapper stores the token grid
in ``transformer_options[GRID_KEY]``. Because the patch replaces whole joint blocks, it composes with
Skip Layer Guidance (its ``patches_replace`` calls the patched block) and with TorchCompileModel.
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch

import comfy.ldm.modules.diffusionmodules.mmdit as mmdit
import comfy.patcher_extension

from .projections import fused_qkv_projections

GRID_KEY = "edit_token_grid"
WRAPPER_KEY = "edit_token_grid"


def make_grid_wrapper(patch_size: int):
    """APPLY_MODEL wrapper: token grid of this call's latent (PatchEmbed pads up to the patch size)."""
    p = int(patch_size)

    def edit_token_grid_wrapper(executor, x, t, c_concat=None, c_crossattn=None, control=None,
                                transformer_options={}, **kwargs):
        options = dict(transformer_options)
        options[GRID_KEY] = (-(-int(x.shape[-2]) // p), -(-int(x.shape[-1]) // p))
        return executor(x, t, c_concat, c_crossattn, control, options, **kwargs)

    return edit_token_grid_wrapper


def mmdit_token_grid(transformer_options: dict, num_tokens: int) -> tuple[int, int]:
    grid = transformer_options.get(GRID_KEY)
    if grid is None:
        side = math.isqrt(num_tokens)
        if side * side != num_tokens:
            raise RuntimeError("EDiT: the token grid of this SD3 call is unknown (the MODEL was not run through "
                               "ComfyUI's apply_model, so the EDiT grid wrapper did not see the latent) and "
                               f"{num_tokens} image tokens are not a square")
        return side, side
    if grid[0] * grid[1] != num_tokens:
        raise RuntimeError(f"EDiT: token grid {grid[0]}×{grid[1]} does not match {num_tokens} image tokens")
    return int(grid[0]), int(grid[1])


def _modulated(block, x: torch.Tensor, c: torch.Tensor):
    """``DismantledBlock.pre_attention`` up to, not including, the qkv projection: (attention input, intermediates)."""
    if not block.pre_only:
        if not block.scale_mod_only:
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.adaLN_modulation(c).chunk(6, dim=1)
        else:
            shift_msa = shift_mlp = None
            scale_msa, gate_msa, scale_mlp, gate_mlp = block.adaLN_modulation(c).chunk(4, dim=1)
        return mmdit.modulate(block.norm1(x), shift_msa, scale_msa), (x, gate_msa, shift_mlp, scale_mlp, gate_mlp)
    if not block.scale_mod_only:
        shift_msa, scale_msa = block.adaLN_modulation(c).chunk(2, dim=1)
    else:
        shift_msa, scale_msa = None, block.adaLN_modulation(c)
    return mmdit.modulate(block.norm1(x), shift_msa, scale_msa), None


def _modulated_dual(block, x: torch.Tensor, c: torch.Tensor):
    """``DismantledBlock.pre_attention_x`` up to the projections: (attn input, attn2 input, intermediates)."""
    (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp,
     shift_msa2, scale_msa2, gate_msa2) = block.adaLN_modulation(c).chunk(9, dim=1)
    x_norm = block.norm1(x)
    return (mmdit.modulate(x_norm, shift_msa, scale_msa), mmdit.modulate(x_norm, shift_msa2, scale_msa2),
            (x, gate_msa, shift_mlp, scale_mlp, gate_mlp, gate_msa2))


def _projections(attn, like: torch.Tensor):
    return fused_qkv_projections(attn.qkv, like, head_norm_query=attn.ln_q, head_norm_key=attn.ln_k)


class EDiTJointBlock(torch.nn.Module):
    """Drop-in for ComfyUI's MMDiT ``JointBlock`` with MM-EDiT joint attention and/or EDiT ``attn2``."""

    def __init__(self, original: torch.nn.Module, *, joint_layer: Optional[torch.nn.Module],
                 attn2_layer: Optional[torch.nn.Module], variant, eta: str = "approx", backend: str = "auto"):
        super().__init__()
        if joint_layer is None and attn2_layer is None:
            raise ValueError("EDiTJointBlock needs a joint layer, an attn2 layer or both")
        if attn2_layer is not None and not getattr(original.x_block, "x_block_self_attn", False):
            raise ValueError("this joint block has no attn2 to convert")
        if joint_layer is not None and variant.joint_attention is None:
            raise ValueError(f"attention variant {variant.name!r} has no joint attention")
        self.context_block = original.context_block
        self.x_block = original.x_block
        self.eta, self.backend = eta, backend
        self._edit = (joint_layer, attn2_layer, variant)  # not registered: the adapter has its own ModelPatcher
        self._original = (original,)  # not registered: its children are ours
        self.distill = None  # a distill_host tap (mode, record) while an adapter is being distilled

    def extra_repr(self) -> str:
        joint, attn2, variant = self._edit
        return (f"{variant.name}, joint={'EDiT' if joint is not None else 'softmax'}, "
                f"attn2={'EDiT' if attn2 is not None else ('softmax' if self.x_block.x_block_self_attn else 'none')}, "
                f"eta={self.eta}, backend={self.backend}")

    def forward(self, context, x, c, use_checkpoint=False, transformer_options={}, **kwargs):
        tap = self.distill
        mode = "student" if tap is None else tap.mode
        if mode == "teacher":
            return self._original[0](context, x, c=c, use_checkpoint=use_checkpoint,
                                     transformer_options=transformer_options, **kwargs)
        forced = mode == "teacher_forced"
        softmax_context = torch.no_grad() if forced else contextlib.nullcontext()
        joint_layer, attn2_layer, variant = self._edit
        context_block, x_block = self.context_block, self.x_block
        dual = x_block.x_block_self_attn

        context_in, context_intermediates = _modulated(context_block, context, c)
        if dual:
            x_in, x_in2, x_intermediates = _modulated_dual(x_block, x, c)
        else:
            (x_in, x_intermediates), x_in2 = _modulated(x_block, x, c), None
        grid = mmdit_token_grid(transformer_options, x.shape[1])

        softmax = student = None
        if joint_layer is None or forced:
            with softmax_context:
                context_qkv = context_block.attn.pre_attention(context_in)
                x_qkv = x_block.attn.pre_attention(x_in)
                qkv = [torch.cat((context_qkv[t], x_qkv[t]), dim=1) for t in range(3)]
                attn = mmdit.optimized_attention(qkv[0], qkv[1], qkv[2], heads=x_block.attn.num_heads,
                                                 transformer_options=transformer_options)
                softmax = (attn[:, context_qkv[0].shape[1]:], attn[:, :context_qkv[0].shape[1]])
        if joint_layer is not None:
            student = variant.joint_attention(
                joint_layer, x_in, context_in, grid, _projections(x_block.attn, x_in),
                _projections(context_block.attn, context_in), x_block.attn.num_heads, eta=self.eta,
                image_rows_only=context_block.pre_only, backend=self.backend)
            if forced:
                tap.record("attn", x_block.attn.post_attention(softmax[0]), x_block.attn.post_attention(student[0]))
                if not context_block.pre_only:
                    tap.record("attn.text", context_block.attn.post_attention(softmax[1]),
                               context_block.attn.post_attention(student[1]))
        x_attn, context_attn = softmax if softmax is not None else student

        context = None if context_block.pre_only else context_block.post_attention(context_attn,
                                                                                    *context_intermediates)
        if dual:
            softmax2 = None
            if attn2_layer is None or forced:
                with softmax_context:
                    q, k, v = x_block.attn2.pre_attention(x_in2)
                    softmax2 = mmdit.optimized_attention(q, k, v, heads=x_block.attn2.num_heads,
                                                         transformer_options=transformer_options)
            if attn2_layer is not None:
                attn2 = variant.self_attention(attn2_layer, x_in2, grid, _projections(x_block.attn2, x_in2),
                                               x_block.attn2.num_heads, backend=self.backend)
                if forced:
                    tap.record("attn2", x_block.attn2.post_attention(softmax2), x_block.attn2.post_attention(attn2))
            attn2 = softmax2 if softmax2 is not None else attn2
            x = x_block.post_attention_x(x_attn, attn2, *x_intermediates)
        else:
            x = x_block.post_attention(x_attn, *x_intermediates)
        return context, x


def patch_mmdit(clone, layers: dict, *, variant, eta: str, backend: str) -> list[str]:
    """Object-patch every joint block with a converted (i, "attn") or (i, "attn2") layer; add the grid wrapper."""
    blocks = sorted({block for block, _ in layers})
    names = []
    for block in blocks:
        name = f"diffusion_model.joint_blocks.{block}"
        original = clone.get_model_object(name)
        clone.add_object_patch(name, EDiTJointBlock(original, joint_layer=layers.get((block, "attn")),
                                                    attn2_layer=layers.get((block, "attn2")), variant=variant,
                                                    eta=eta, backend=backend))
        names.append(name)
    patch_size = int(clone.get_model_object("diffusion_model").x_embedder.patch_size[0])
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY,
                               make_grid_wrapper(patch_size))
    return names
