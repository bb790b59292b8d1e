"""Training checkpoints without pickle: tensors in safetensors, everything else in a JSON sidecar.

``{dir}/step-{step:08d}.safetensors`` holds ``param.{name}`` (the trainable tensors), ``optimizer.{name}.{key}``
(per-parameter optimizer state, e.g. AdamW's ``exp_avg``, ``exp_avg_sq``, ``step``), ``ema.{name}`` and
``rng.*`` (torch CPU / CUDA generator states as uint8). ``step-{step:08d}.json`` holds the step, the
optimizer's param groups and non-tensor state, the grad-scaler state, the data position and the run
settings a resume must agree with. The JSON is written last (both via a temporary file and
``os.replace``), so a checkpoint without its JSON is incomplete and ignored.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Optional, Sequence

import torch

CHECKPOINT_FORMAT = "edit-distill-checkpoint"
CHECKPOINT_VERSION = 1
_NAME = re.compile(r"step-(\d{8})\.json$")


def checkpoint_paths(directory: str, step: int) -> tuple[str, str]:
    base = os.path.join(directory, f"step-{step:08d}")
    return base + ".safetensors", base + ".json"


def list_checkpoints(directory: str) -> list[int]:
    """Steps of the complete checkpoints in ``directory``, ascending."""
    steps = []
    for path in glob.glob(os.path.join(glob.escape(directory), "step-*.json")):
        match = _NAME.search(os.path.basename(path))
        if match and os.path.isfile(checkpoint_paths(directory, int(match.group(1)))[0]):
            steps.append(int(match.group(1)))
    return sorted(steps)


def optimizer_state_to_tensors(optimizer: torch.optim.Optimizer, names: Sequence[str]) -> tuple[dict, dict]:
    """(tensors, json) for ``optimizer``, whose params are in the order of ``names``."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        name = names[int(index)]
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{name}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{name}.{key}"] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"} | {
        "params": list(g["params"])} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_state_from_tensors(optimizer: torch.optim.Optimizer, names: Sequence[str], tensors: dict,
                                 info: dict) -> None:
    state: dict[int, dict] = {}
    for index, name in enumerate(names):
        prefix = f"optimizer.{name}."
        values = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        values.update({k[len(name) + 1:]: v for k, v in info["scalars"].items() if k.startswith(name + ".")})
        if values:
            state[index] = values
    groups = []
    for group in info["param_groups"]:
        group = dict(group)
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_state_tensors() -> dict[str, torch.Tensor]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    return tensors


def restore_rng_state(tensors: dict) -> None:
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"].to(torch.uint8))
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        states = [tensors[k].to(torch.uint8) for k in cuda][:torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)


def save_checkpoint(directory: str, step: int, tensors: dict[str, torch.Tensor], info: dict, keep: int = 2) -> str:
    """Write one checkpoint (tensors + JSON), then delete all but the newest ``keep``; returns the JSON path."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    tensor_path, json_path = checkpoint_paths(directory, step)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, tensor_path + ".tmp")
    os.replace(tensor_path + ".tmp", tensor_path)
    info = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": int(step), **info}
    with open(json_path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1, sort_keys=True)
    os.replace(json_path + ".tmp", json_path)
    if keep > 0:
        for old in list_checkpoints(directory)[:-keep]:
            for path in checkpoint_paths(directory, old)[::-1]:  # JSON first: never a JSON without tensors
                try:
                    os.remove(path)
                except FileNotFoundError:
                    pass
    return json_path


def load_checkpoint(directory: str, step: Optional[int] = None) -> Optional[tuple[dict, dict]]:
    """(tensors, info) of the newest (or the given) complete checkpoint, or None when there is none."""
    from safetensors.torch import load_file

    steps = list_checkpoints(directory) if os.path.isdir(directory) else []
    if step is None:
        if not steps:
            return None
        step = steps[-1]
    tensor_path, json_path = checkpoint_paths(directory, step)
    with open(json_path, encoding="utf-8") as f:
        info = json.load(f)
    if info.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"'{json_path}' is not an EDiT distillation checkpoint")
    if int(info.get("version", 0)) > CHECKPOINT_VERSION:
        raise ValueError(f"'{json_path}' was written by a newer ComfyUI-EDiT (checkpoint version {info['version']})")
    return load_file(tensor_path), info


__all__ = ["save_checkpoint", "load_checkpoint", "list_checkpoints", "optimizer_state_to_tensors",
           "optimizer_state_from_tensors", "rng_state_tensors", "restore_rng_state", "CHECKPOINT_FORMAT"]
