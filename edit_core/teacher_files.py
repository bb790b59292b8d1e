"""Teacher weights on disk: where they are and what shapes they hold, from headers and configs only.

One reader for both command lines (``init-adapter`` and ``distill``). A teacher path is a single
``.safetensors`` file (ComfyUI or diffusers keys, full checkpoints too), a diffusers transformer folder
(``config.json`` + ``diffusion_pytorch_model*.safetensors``, sharded with an index or not) or a pipeline
folder (``model_index.json``; its ``transformer/`` is read). Pickle files are never loaded.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from typing import Optional

import torch

from .safetensors_file import SafetensorsFileError, read_shapes


class TeacherError(ValueError):
    """The teacher cannot be used; the message names the path and says what to pass instead."""


@dataclass
class TeacherFiles:
    path: str
    kind: str  # "pipeline" | "transformer_dir" | "file"
    files: list[str]
    config: dict = field(default_factory=dict)  # the transformer's diffusers config ({} when there is none)
    pipeline_class: Optional[str] = None  # model_index.json's _class_name (kind "pipeline")
    scheduler_config: dict = field(default_factory=dict)


def read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as e:
        raise TeacherError(f"'{path}' is not readable JSON ({e})") from None
    if not isinstance(value, dict):
        raise TeacherError(f"'{path}' is not a JSON object")
    return value


def safetensors_shapes(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Every tensor of a safetensors file as a meta tensor (shape and dtype, no data), and its metadata."""
    try:
        return read_shapes(path)
    except SafetensorsFileError as e:
        raise TeacherError(str(e)) from None


def _weights_in(folder: str) -> list[str]:
    index = os.path.join(folder, "diffusion_pytorch_model.safetensors.index.json")
    single = os.path.join(folder, "diffusion_pytorch_model.safetensors")
    if os.path.isfile(index):
        try:
            weight_map = read_json(index)["weight_map"]
            files = [os.path.join(folder, name) for name in sorted(set(weight_map.values()))]
        except (KeyError, TypeError, AttributeError) as e:
            raise TeacherError(f"'{index}' is not a safetensors index ({e})") from None
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise TeacherError(f"'{folder}': shard {os.path.basename(missing[0])} named in the index is missing")
        return files
    if os.path.isfile(single):
        return [single]
    others = sorted(glob.glob(os.path.join(glob.escape(folder), "*.safetensors")))
    if others:
        return others
    pickles = sorted(os.path.basename(p) for pattern in ("*.bin", "*.pt", "*.ckpt")
                     for p in glob.glob(os.path.join(glob.escape(folder), pattern)))
    hint = f" (found {', '.join(pickles)}: pickle files are never loaded; convert them to safetensors)" if pickles else ""
    raise TeacherError(f"'{folder}' has no diffusion_pytorch_model*.safetensors weights{hint}")


def pipeline_class(path: str) -> Optional[str]:
    """The ``_class_name`` of a diffusers pipeline folder, None for anything else."""
    index = os.path.join(path, "model_index.json")
    return str(read_json(index).get("_class_name", "?")) if os.path.isfile(index) else None


def find_teacher_files(path: str) -> TeacherFiles:
    """Resolve a teacher path to its weight files and configs. Raises TeacherError naming the path."""
    if not os.path.exists(path):
        raise TeacherError(f"teacher '{path}' does not exist")
    if os.path.isfile(path):
        if not path.endswith(".safetensors"):
            raise TeacherError(f"teacher '{path}' is not a .safetensors file or a diffusers folder (pickle files "
                               "are never loaded)")
        return TeacherFiles(path, "file", [path])
    index = os.path.join(path, "model_index.json")
    if os.path.isfile(index):
        folder = os.path.join(path, "transformer")
        config_path = os.path.join(folder, "config.json")
        if not os.path.isfile(config_path):
            raise TeacherError(f"teacher '{path}' is a {pipeline_class(path)} folder without transformer/config.json")
        scheduler = os.path.join(path, "scheduler", "scheduler_config.json")
        return TeacherFiles(path, "pipeline", _weights_in(folder), read_json(config_path), pipeline_class(path),
                            read_json(scheduler) if os.path.isfile(scheduler) else {})
    for folder in (path, os.path.join(path, "transformer")):  # a transformer folder, or a model folder holding one
        config_path = os.path.join(folder, "config.json")
        if os.path.isfile(config_path):
            return TeacherFiles(folder, "transformer_dir", _weights_in(folder), read_json(config_path))
    raise TeacherError(f"teacher '{path}' is a folder with neither model_index.json (a diffusers pipeline) nor "
                       "config.json (a diffusers transformer); for a single checkpoint give the .safetensors file")


def read_teacher_shapes(files: TeacherFiles) -> tuple[dict[str, torch.Tensor], dict]:
    """All tensors of the teacher's files as meta tensors, and the first file's metadata."""
    state: dict[str, torch.Tensor] = {}
    first: Optional[dict] = None
    for file in files.files:
        shapes, metadata = safetensors_shapes(file)
        state.update(shapes)
        first = metadata if first is None else first
    return state, first or {}


def load_teacher_tensors(files: TeacherFiles) -> dict[str, torch.Tensor]:
    """The teacher's tensors themselves (safetensors only)."""
    from safetensors.torch import load_file

    return {k: v for f in files.files for k, v in load_file(f).items()}


__all__ = ["TeacherError", "TeacherFiles", "find_teacher_files", "read_teacher_shapes", "load_teacher_tensors",
           "safetensors_shapes", "read_json", "pipeline_class"]
