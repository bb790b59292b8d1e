"""The EDiT checkpoint: one safetensors file with a diffusion model and the adapter applied to it.

Tensors::

    model.diffusion_model.<key>      the diffusion model as it was sampled: every weight patch on the MODEL
                                     merged (LoRAs and the adapter's fine-tuned projections)
    edit_adapter.<adapter key>       the adapter's new tensors (``blocks.{i}.{slot}.conv_fusion…``), only for
                                     the layers that were applied; no fine-tuned teacher tensors (merged above)

Metadata (strings)::

    edit_checkpoint_format           "1"
    edit_adapter.<key>               the adapter metadata (``format``, ``family``, ``variant``, ``num_blocks``,
                                     ``converted_blocks``, ``attn2_blocks``, ``eta``, …) describing exactly what
                                     was applied
    edit_checkpoint.finetuned_merged "true"
    prompt / workflow                as ComfyUI's own save nodes write them (unless --disable-metadata)

A file without ``edit_checkpoint_format`` is a plain diffusion model. Bare model keys (no
``model.diffusion_model.`` prefix) are read too. ComfyUI's plain UNETLoader reads an EDiT checkpoint as
the merged teacher (it ignores the ``edit_adapter.`` keys).
"""

from __future__ import annotations

from ..edit_core.adapter import (FINETUNE_NAMES, Adapter, AdapterError, adapter_from_state,
                                 read_safetensors_metadata)

FORMAT_KEY = "edit_checkpoint_format"
FORMAT_VERSION = "1"
ADAPTER_PREFIX = "edit_adapter."
MERGED_KEY = "edit_checkpoint.finetuned_merged"


class EDiTCheckpointError(ValueError):
    def __init__(self, path: str, problem: str):
        super().__init__(f"EDiT checkpoint '{path}' cannot be used: {problem}")


def adapter_tensors_for_saving(applied) -> dict:
    """``edit_adapter.*`` tensors of the applied layers (no fine-tuned teacher tensors: those are merged)."""
    prefixes = tuple(f"blocks.{b}.{s}." for b, s in applied.config.layers())
    out = {}
    for key, value in applied.adapter.tensors.items():
        if key.startswith(prefixes) and key.split(".")[3] not in FINETUNE_NAMES:
            out[ADAPTER_PREFIX + key] = value.detach().to("cpu").contiguous()
    return out


def metadata_for_saving(applied) -> dict:
    md = {FORMAT_KEY: FORMAT_VERSION, MERGED_KEY: "true"}
    md.update({ADAPTER_PREFIX + k: v for k, v in applied.config.to_metadata().items()})
    return md


def check_readable(path: str) -> dict:
    """The safetensors metadata of ``path``; a clear error for anything that is not a readable safetensors file."""
    try:
        metadata = read_safetensors_metadata(path)
    except AdapterError as e:
        raise EDiTCheckpointError(path, "; ".join(e.problems)) from None
    return metadata


def split_checkpoint(path: str, state_dict: dict, metadata: dict) -> tuple[dict, Adapter]:
    """(diffusion model state dict, adapter) of a loaded EDiT checkpoint."""
    metadata = metadata or {}
    if metadata.get(FORMAT_KEY) is None:
        raise EDiTCheckpointError(path, "it is a plain diffusion model, not an EDiT checkpoint (no "
                                        f"'{FORMAT_KEY}' metadata): load it with Load Diffusion Model and "
                                        "connect Load EDiT Adapter → Apply EDiT Attention")
    if metadata[FORMAT_KEY] != FORMAT_VERSION:
        raise EDiTCheckpointError(path, f"checkpoint format {metadata[FORMAT_KEY]!r} is not understood by this "
                                        f"version (it reads {FORMAT_VERSION!r}); update ComfyUI-EDiT")
    adapter_md = {k[len(ADAPTER_PREFIX):]: v for k, v in metadata.items() if k.startswith(ADAPTER_PREFIX)}
    tensors = {k[len(ADAPTER_PREFIX):]: v for k, v in state_dict.items() if k.startswith(ADAPTER_PREFIX)}
    model_sd = {k: v for k, v in state_dict.items() if not k.startswith(ADAPTER_PREFIX)}
    if not model_sd:
        raise EDiTCheckpointError(path, "it holds no diffusion model tensors")
    return model_sd, adapter_from_state(tensors, adapter_md, path)

