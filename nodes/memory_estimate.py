"""ComfyUI's memory estimate for a MODEL whose attention EDiT converted (the formula: edit_core.memory_estimate).

ComfyUI reads ``model.model.memory_usage_factor`` in two places: ``estimate_memory`` in ``prepare_sampling``,
before the model is loaded (so before a clone's object patches are applied), and the batch sizing in
``calc_cond_batch``, while it is loaded. On the clone:

- an object patch ``memory_usage_factor`` covers the second (applied while this clone is the loaded one,
  restored by ComfyUI when it is unpatched, never seen by other clones);
- a ``PREPARE_SAMPLING`` wrapper covers the first: during the call it sets the factor on the shared model
  after putting the original in the clone's object-patch backup, so the load that follows keeps the true
  original to restore; if the clone did not end up loaded, the original is put back at once.
"""

from __future__ import annotations

import comfy.model_management
import comfy.patcher_extension

from ..edit_core.memory_estimate import converted_memory_usage_factor

FACTOR = "memory_usage_factor"
WRAPPER_KEY = "edit_memory_estimate"


def _mlp_hidden(diffusion_model, hidden: int) -> int:
    for name, param in diffusion_model.named_parameters():
        if name.endswith("mlp.fc1.weight"):
            return int(param.shape[0])
    return 4 * hidden


def _context_tokens(diffusion_model) -> int:
    embedding = getattr(getattr(diffusion_model, "y_embedder", None), "y_embedding", None)  # PixArt's caption rows
    return int(embedding.shape[0]) if embedding is not None and embedding.dim() == 2 else 0


def _patch(diffusion_model) -> int:
    patch = getattr(diffusion_model, "patch_size", 2)
    return int(patch[0] if isinstance(patch, (tuple, list)) else patch)


def fully_converted(spec, layers) -> bool:
    """Whether every self-attention of the model is converted (otherwise softmax layers still set the peak)."""
    slots = spec.record.architecture.slots
    every = {(b, s) for b in range(spec.num_blocks) for s in slots if s != "attn2" or b in spec.attn2_blocks}
    return every <= set(layers)


def converted_factor(model, spec) -> float:
    """The factor of ``model`` (a ModelPatcher) once all its self-attentions are converted."""
    base = model.model
    dtype = model.get_model_object("manual_cast_dtype") or base.get_dtype()
    fused = bool(comfy.model_management.xformers_enabled()
                 or comfy.model_management.pytorch_attention_flash_attention())
    diffusion_model = model.get_model_object("diffusion_model")
    return converted_memory_usage_factor(
        float(model.get_model_object(FACTOR)), hidden=spec.hidden_size,
        mlp_hidden=_mlp_hidden(diffusion_model, spec.hidden_size), joint=spec.record.joint,
        patch=_patch(diffusion_model), dtype_bytes=comfy.model_management.dtype_size(dtype), heads=spec.num_heads,
        context_tokens=_context_tokens(diffusion_model), fused_attention=fused)


def _prepare_sampling(executor, model, *args, **kwargs):
    base = model.model
    patched = model.object_patches.get(FACTOR)
    original = getattr(base, FACTOR)
    if patched is None or original == patched:  # not ours, or this clone's patches are applied already
        return executor(model, *args, **kwargs)
    backup = model.object_patches_backup  # shared by the clones of one model
    seeded = FACTOR not in backup
    if seeded:
        backup[FACTOR] = original
    setattr(base, FACTOR, patched)
    try:
        return executor(model, *args, **kwargs)
    finally:
        loaded = any(m is model for m in comfy.model_management.loaded_models())
        if not loaded and getattr(base, FACTOR) == patched:  # not loaded (an error, or a test's stub loader)
            setattr(base, FACTOR, original)
            if seeded:
                backup.pop(FACTOR, None)


def add_memory_estimate(clone, spec, layers) -> None:
    """Make ComfyUI's memory estimate for ``clone`` follow its converted attention (when all of it is)."""
    if not fully_converted(spec, layers):
        return
    clone.add_object_patch(FACTOR, converted_factor(clone, spec))
    kind = comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING
    clone.remove_wrappers_with_key(kind, WRAPPER_KEY)
    clone.add_wrapper_with_key(kind, WRAPPER_KEY, _prepare_sampling)
