"""Tiny adapter files for the browser tests: an untrained init, a 'distilled' one, a broken one, and a symlink
that points outside models/edit."""

from __future__ import annotations

import os

from edit_core.adapter import init_adapter_from_teacher, save_adapter
from edit_core.tiny import comfy_pixart_state_dict

INIT = "tiny_pixart_init.safetensors"
TRAINED = "tiny/tiny_pixart_trained.safetensors"
BROKEN = "broken.safetensors"
ESCAPING = "escaping.safetensors"


def write_adapters(edit_dir: str, outside_dir: str) -> None:
    teacher = comfy_pixart_state_dict(hidden=64, depth=2)
    adapter = init_adapter_from_teacher(teacher, "pixart_sigma", num_heads=4)
    save_adapter(adapter, os.path.join(edit_dir, INIT))
    adapter.config.training = {"stage": "distilled", "steps": 1200, "target_steps": 1200, "resolutions": [512, 1024]}
    os.makedirs(os.path.join(edit_dir, "tiny"), exist_ok=True)
    save_adapter(adapter, os.path.join(edit_dir, TRAINED))
    with open(os.path.join(edit_dir, BROKEN), "wb") as f:
        f.write(b"\x80\x02}q\x00.")  # a pickle
    outside = os.path.join(outside_dir, "outside.safetensors")
    save_adapter(adapter, outside)
    os.symlink(outside, os.path.join(edit_dir, ESCAPING))
