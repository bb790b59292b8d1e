"""MMDiT (ComfyUI's ``MMDiT``: SD3-Medium, SD3.5-Medium, SD3.5-Large): MM-EDiT joint attention and EDiT
``attn2`` through object patches.

Each converted ``diffusion_model.joint_blocks.{i}`` is object-patched with ``EDiTJointBlock``, which
re-registers the original ``context_block``/``x_block`` (same state-dict keys: LoRAs and weight patches
still apply) and follows ComfyUI's block mixing step by step — adaLN modulation, ``pre_only`` text stream
of the last block, the ``attn2`` dual-attention path, gated residuals and MLPs through the blocks' own
``post_attention``/``post_attention_x`` — except that each attention is its slot's module: "attn" the joint
attention (text first, as ComfyUI concatenates), "attn2" the image-only one. An unconverted slot runs
ComfyUI's own ``optimized_attention`` (``SoftmaxJointAttention`` / ``SoftmaxSelfAttention``). A slot module with
``projection_weights`` (set only by distillation) runs on those tensors, and the block's output projections
after it too (the same gated residual and MLP, with the student's ``proj``).

MMDiT keeps the latent size in a local variable, so an ``APPLY_MODEL`` wrapper stores the token grid
in ``transformer_options[GRID_KEY]``. Because the patch replaces whole joint blocks, it composes with
Skip Layer Guidance (its ``patches_replace`` calls the patched block) and with TorchCompileModel.
"""

from __future__ import annotations

import math

import torch

import comfy.ldm.modules.diffusionmodules.mmdit as mmdit
import comfy.patcher_extension

from ..projections import apply_linear, fused_qkv_projections
from .base import AttentionSlots, ComfyHost, SoftmaxAttention, is_softmax, projection_weights, slot_is_free

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


def _projections(attn, like: torch.Tensor, weights=None):
    return fused_qkv_projections(attn.qkv, like, head_norm_query=attn.ln_q, head_norm_key=attn.ln_k, weights=weights)


def _holds_projection(attn, weights) -> bool:
    return weights is not None and attn.proj in weights


def _post_projection(attn, output: torch.Tensor, weights=None) -> torch.Tensor:
    """``attn.post_attention(output)``, with the student's ``proj`` tensors where ``weights`` holds them."""
    if not _holds_projection(attn, weights):
        return attn.post_attention(output)
    return attn.proj_drop(apply_linear(attn.proj, output, weights))


def _post_attention(block, attn_out, intermediates, weights=None):
    """``block.post_attention(attn_out, *intermediates)`` (ComfyUI's own unless ``weights`` holds its ``proj``)."""
    if not _holds_projection(block.attn, weights):
        return block.post_attention(attn_out, *intermediates)
    x, gate_msa, shift_mlp, scale_mlp, gate_mlp = intermediates
    x = x + gate_msa.unsqueeze(1) * _post_projection(block.attn, attn_out, weights)
    return x + gate_mlp.unsqueeze(1) * block.mlp(mmdit.modulate(block.norm2(x), shift_mlp, scale_mlp))


def _post_attention_x(block, attn_out, attn2_out, intermediates, weights=None, weights2=None):
    """``block.post_attention_x(...)`` (ComfyUI's own unless the weights hold ``attn.proj`` or ``attn2.proj``)."""
    if not (_holds_projection(block.attn, weights) or _holds_projection(block.attn2, weights2)):
        return block.post_attention_x(attn_out, attn2_out, *intermediates)
    x, gate_msa, shift_mlp, scale_mlp, gate_mlp, gate_msa2 = intermediates
    x = mmdit.gate_cat(x, gate_msa, gate_msa2, _post_projection(block.attn, attn_out, weights),
                       _post_projection(block.attn2, attn2_out, weights2))
    return x + gate_mlp.unsqueeze(1) * block.mlp(mmdit.modulate(block.norm2(x), shift_mlp, scale_mlp))


def softmax_joint_attention(x_in, context_in, *, grid, x_attn, context_attn, image_rows_only, transformer_options):
    """ComfyUI's joint attention: (image rows, text rows) before the output projections."""
    context_qkv = context_attn.pre_attention(context_in)
    x_qkv = x_attn.pre_attention(x_in)
    qkv = [torch.cat((context_qkv[t], x_qkv[t]), dim=1) for t in range(3)]
    attn = mmdit.optimized_attention(qkv[0], qkv[1], qkv[2], heads=x_attn.num_heads,
                                     transformer_options=transformer_options)
    num_text = context_qkv[0].shape[1]
    return attn[:, num_text:], attn[:, :num_text]


def softmax_self_attention(x_in, *, grid, attn, transformer_options):
    """ComfyUI's image-only ``attn2`` attention, before the output projection."""
    q, k, v = attn.pre_attention(x_in)
    return mmdit.optimized_attention(q, k, v, heads=attn.num_heads, transformer_options=transformer_options)


class SoftmaxJointAttention(SoftmaxAttention):
    def forward(self, *args, **kwargs):
        return softmax_joint_attention(*args, **kwargs)


class SoftmaxSelfAttention(SoftmaxAttention):
    def forward(self, *args, **kwargs):
        return softmax_self_attention(*args, **kwargs)


class EDiTJointAttention(torch.nn.Module):
    """The variant's joint attention (MM-EDiT) on the blocks' own projections (or ``projection_weights``')."""

    projection_weights = None

    def __init__(self, layer, variant, *, eta: str, backend: str, gate=None):
        super().__init__()
        if variant.joint_attention is None:
            raise ValueError(f"attention variant {variant.name!r} has no joint attention")
        self.eta, self.backend, self.gate = eta, backend, gate
        self._parts = (layer, variant)  # not registered: the adapter has its own ModelPatcher

    def extra_repr(self) -> str:
        return f"{self._parts[1].name}, eta={self.eta}, backend={self.backend}"

    def forward(self, x_in, context_in, *, grid, x_attn, context_attn, image_rows_only, transformer_options):
        if self.gate is not None and not self.gate(x_in.shape[1]):
            return softmax_joint_attention(x_in, context_in, grid=grid, x_attn=x_attn, context_attn=context_attn,
                                           image_rows_only=image_rows_only, transformer_options=transformer_options)
        layer, variant = self._parts
        weights = self.projection_weights
        return variant.joint_attention(layer, x_in, context_in, grid, _projections(x_attn, x_in, weights),
                                       _projections(context_attn, context_in, weights), x_attn.num_heads, eta=self.eta,
                                       image_rows_only=image_rows_only, backend=self.backend)


class EDiTSelfAttention(torch.nn.Module):
    """The variant's self-attention on an ``attn2`` layer's own projections (or ``projection_weights``')."""

    projection_weights = None

    def __init__(self, layer, variant, *, backend: str, gate=None):
        super().__init__()
        self.backend, self.gate = backend, gate
        self._parts = (layer, variant)

    def extra_repr(self) -> str:
        return f"{self._parts[1].name}, backend={self.backend}"

    def forward(self, x_in, *, grid, attn, transformer_options):
        if self.gate is not None and not self.gate(x_in.shape[1]):
            return softmax_self_attention(x_in, grid=grid, attn=attn, transformer_options=transformer_options)
        layer, variant = self._parts
        return variant.self_attention(layer, x_in, grid, _projections(attn, x_in, self.projection_weights),
                                      attn.num_heads, backend=self.backend)


class EDiTJointBlock(AttentionSlots):
    """Drop-in for ComfyUI's MMDiT ``JointBlock`` whose attentions ("attn", and "attn2") are slot modules."""

    def __init__(self, original: torch.nn.Module, block: int, attentions: dict):
        super().__init__()
        self.context_block = original.context_block
        self.x_block = original.x_block
        self.block = int(block)
        self.softmax_slots = {"attn": SoftmaxJointAttention()}
        if self.x_block.x_block_self_attn:
            self.softmax_slots["attn2"] = SoftmaxSelfAttention()
        unknown = set(attentions) - set(self.softmax_slots)
        if unknown:
            raise ValueError(f"joint block {block} has no {', '.join(sorted(unknown))} attention to convert")
        self.slots = {**self.softmax_slots, **attentions}

    def extra_repr(self) -> str:
        return f"block={self.block}, " + ", ".join(f"{s}={type(m).__name__}" for s, m in self.slots.items())

    def layer_outputs(self, slot: str, output, weights=None) -> dict[str, torch.Tensor]:
        if slot == "attn2":
            return {"": _post_projection(self.x_block.attn2, output, weights)}
        image, text = output
        outputs = {"": _post_projection(self.x_block.attn, image, weights)}
        if text is not None and not self.context_block.pre_only:
            outputs[".text"] = _post_projection(self.context_block.attn, text, weights)
        return outputs

    def forward(self, context, x, c, use_checkpoint=False, transformer_options={}, **kwargs):
        context_block, x_block = self.context_block, self.x_block
        dual = x_block.x_block_self_attn
        context_in, context_intermediates = _modulated(context_block, context, c)
        if dual:
            x_in, x_in2, x_intermediates = _modulated_dual(x_block, x, c)
        else:
            (x_in, x_intermediates), x_in2 = _modulated(x_block, x, c), None
        grid = mmdit_token_grid(transformer_options, x.shape[1])

        x_attn, context_attn = self.slots["attn"](x_in, context_in, grid=grid, x_attn=x_block.attn,
                                                  context_attn=context_block.attn,
                                                  image_rows_only=context_block.pre_only,
                                                  transformer_options=transformer_options)
        weights = projection_weights(self.slots["attn"])
        context = None if context_block.pre_only else _post_attention(context_block, context_attn,
                                                                      context_intermediates, weights)
        if dual:
            attn2 = self.slots["attn2"](x_in2, grid=grid, attn=x_block.attn2, transformer_options=transformer_options)
            x = _post_attention_x(x_block, x_attn, attn2, x_intermediates, weights,
                                  projection_weights(self.slots["attn2"]))
        else:
            x = _post_attention(x_block, x_attn, x_intermediates, weights)
        return context, x


def _accepts(diffusion_model) -> bool:
    return isinstance(diffusion_model, mmdit.MMDiT)


def patch_mmdit(clone, plan, layers: dict, *, gate=None, fill_only: bool = False) -> dict:
    """Object-patch every joint block with a converted (i, "attn") or (i, "attn2") layer; add the grid wrapper.
    A block that is already patched keeps the converted slots this patch does not replace; with ``fill_only`` this
    patch replaces none of them (it converts only slots still running softmax)."""
    converted = {}
    for block in sorted({block for block, _ in layers}):
        name = f"diffusion_model.joint_blocks.{block}"
        current = clone.get_model_object(name)
        attentions = {}
        if isinstance(current, AttentionSlots):  # stack on an earlier patch: keep what it converted
            attentions = {slot: module for slot, module in current.slots.items()
                          if not is_softmax(module, current.softmax_slots.get(slot))}
        new = {}
        if (block, "attn") in layers and not (fill_only and not slot_is_free(current, "attn")):
            new["attn"] = EDiTJointAttention(layers[(block, "attn")], plan.variant, eta=plan.eta,
                                             backend=plan.backend, gate=gate)
        if (block, "attn2") in layers and not (fill_only and not slot_is_free(current, "attn2")):
            new["attn2"] = EDiTSelfAttention(layers[(block, "attn2")], plan.variant, backend=plan.backend, gate=gate)
        if not new:
            continue
        clone.add_object_patch(name, EDiTJointBlock(current, block, {**attentions, **new}))
        converted.update({(block, slot): module for slot, module in new.items()})
    if converted and not clone.get_wrappers(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY):
        patch_size = int(clone.get_model_object("diffusion_model").x_embedder.patch_size[0])
        clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY,
                                   make_grid_wrapper(patch_size))
    return converted


MMDIT_HOST = ComfyHost(name="MMDiT", accepts=_accepts, num_heads=lambda dm: None,
                       patch_size=lambda dm: int(dm.x_embedder.patch_size[0]), patch=patch_mmdit)
