"""Load EDiT Checkpoint and Save EDiT Checkpoint (format: ``checkpoint_format``)."""

from __future__ import annotations

import json
import os

import torch

import comfy.sd
import comfy.utils
import folder_paths
from comfy.cli_args import args
from comfy_api.latest import io

from .apply import ATTACHMENT_KEY, BACKENDS, apply_edit
from .checkpoint_format import (EDiTCheckpointError, adapter_tensors_for_saving, check_readable,
                                metadata_for_saving, split_checkpoint)

CATEGORY = "EDiT"
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")
CHECKPOINT_FOLDER = "diffusion_models"


def _checkpoint_files() -> list[str]:
    return [f for f in folder_paths.get_filename_list(CHECKPOINT_FOLDER) if f.lower().endswith(".safetensors")]


def _model_options(weight_dtype: str) -> dict:
    """The same choices as ComfyUI's Load Diffusion Model."""
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype must be one of {WEIGHT_DTYPES}, got {weight_dtype!r}")
    if weight_dtype == "default":
        return {}
    options = {"dtype": torch.float8_e5m2 if weight_dtype == "fp8_e5m2" else torch.float8_e4m3fn}
    if weight_dtype == "fp8_e4m3fn_fast":
        options["fp8_optimizations"] = True
    return options


class EDiTCheckpointLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EDiTCheckpointLoader",
            display_name="Load EDiT Checkpoint",
            category=CATEGORY,
            description="Loads an EDiT checkpoint (one .safetensors file with a diffusion model and its EDiT "
                        "adapter, written by Save EDiT Checkpoint) and returns the MODEL with EDiT attention "
                        "already applied.",
            inputs=[
                io.Combo.Input("ckpt_name", options=_checkpoint_files(),
                               tooltip="EDiT checkpoint in models/diffusion_models (Save EDiT Checkpoint writes "
                                       "them to output/diffusion_models)."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default",
                               tooltip="Storage dtype of the diffusion model's weights, as in Load Diffusion "
                                       "Model: fp8 halves memory; _fast also uses fp8 matrix multiplies where "
                                       "the GPU supports them. The adapter stays in the compute dtype."),
                io.Combo.Input("backend", options=list(BACKENDS), default="auto",
                               tooltip="Linear-attention kernels: auto, torch or triton (see Apply EDiT Attention)."),
            ],
            outputs=[io.Model.Output(tooltip="The diffusion model with EDiT attention.")],
        )

    @classmethod
    def execute(cls, ckpt_name: str, weight_dtype: str = "default", backend: str = "auto") -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise(CHECKPOINT_FOLDER, ckpt_name)
        check_readable(path)
        state_dict, metadata = comfy.utils.load_torch_file(path, safe_load=True, return_metadata=True)
        model_sd, adapter = split_checkpoint(path, state_dict, metadata)
        model = comfy.sd.load_diffusion_model_state_dict(model_sd, model_options=_model_options(weight_dtype))
        if model is None:
            raise EDiTCheckpointError(path, "ComfyUI does not recognise its diffusion model")
        return io.NodeOutput(apply_edit(model, adapter, backend=backend))


class EDiTCheckpointSave(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EDiTCheckpointSave",
            display_name="Save EDiT Checkpoint",
            category=CATEGORY,
            description="Saves a MODEL that went through Apply EDiT Attention as one EDiT checkpoint "
                        "(.safetensors under output/): the diffusion model with all its weight patches merged "
                        "(LoRAs, fine-tuned projections) plus the applied adapter. Load it with Load EDiT "
                        "Checkpoint.",
            inputs=[
                io.Model.Input("model", tooltip="A MODEL from Apply EDiT Attention (or Load EDiT Checkpoint)."),
                io.String.Input("filename_prefix", default="diffusion_models/EDiT",
                                tooltip="Path under the output folder and file name prefix; a counter and "
                                        ".safetensors are appended."),
            ],
            outputs=[],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, filename_prefix: str = "diffusion_models/EDiT") -> io.NodeOutput:
        applied = model.get_attachment(ATTACHMENT_KEY)
        if applied is None:
            raise ValueError("this MODEL has no EDiT attention: connect it through Apply EDiT Attention (or Load "
                             "EDiT Checkpoint) before Save EDiT Checkpoint")
        output_dir = folder_paths.get_output_directory()
        folder, filename, counter, _, _ = folder_paths.get_save_image_path(filename_prefix, output_dir)
        os.makedirs(folder, exist_ok=True)
        metadata = metadata_for_saving(applied)
        if not args.disable_metadata:
            if cls.hidden.prompt is not None:
                metadata["prompt"] = json.dumps(cls.hidden.prompt)
            if cls.hidden.extra_pnginfo is not None:
                for key, value in cls.hidden.extra_pnginfo.items():
                    metadata[key] = json.dumps(value)
        path = os.path.join(folder, f"{filename}_{counter:05}_.safetensors")
        comfy.sd.save_checkpoint(path, model, metadata=metadata, extra_keys=adapter_tensors_for_saving(applied))
        return io.NodeOutput()
