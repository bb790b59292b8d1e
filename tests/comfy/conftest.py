"""Session fixtures for the real-ComfyUI tests: one in-process ComfyUI with this pack installed, tiny
SD3.5-Medium-layout and PixArt-Σ models (and, for tests/comfy/test_families.py, tiny SD3-Medium, SD3.5-Large
and PixArt-α ones) saved and loaded through ComfyUI's own loader, and adapters made by ``edit_core`` from the
same files. Every test module skips itself when COMFYUI_DIR is not set."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

import tests.util  # noqa: F401  (import this repo's `tests` before ComfyUI, which has its own `tests` package)


@dataclass
class TinyModel:
    family: str
    diffusers: object  # the diffusers model the file was saved from (fp32, eval)
    state_dict: dict
    filename: str  # in models/diffusion_models
    model: object  # the ComfyUI MODEL from UNETLoader
    adapter: object  # perturbed adapter (edit_core.adapter.Adapter)
    adapter_file: str  # in models/edit
    finetuned_adapter: object
    finetuned_adapter_file: str


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one torch thread is about as fast, and immune to other processes competing for the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def comfy_env(tmp_path_factory):
    comfyui_dir = os.environ.get("COMFYUI_DIR")
    if not comfyui_dir:
        pytest.skip("COMFYUI_DIR is not set: tests/comfy need a real ComfyUI (see README)")
    from tests.comfy.harness import ComfyEnv

    return ComfyEnv(comfyui_dir, str(tmp_path_factory.mktemp("comfyui_base"))).start()


def _tiny(env, family: str, diffusers_model) -> TinyModel:
    from edit_core.adapter import save_adapter
    from tests.comfy.harness import perturbed_adapter, save_state_dict

    filename = f"edit_test_{family}.safetensors"
    state = save_state_dict(diffusers_model, env.path("models", "diffusion_models", filename))
    adapter = perturbed_adapter(state, seed=1)
    finetuned = perturbed_adapter(state, seed=2, finetune=True)
    save_adapter(adapter, env.path("models", "edit", f"edit_test_{family}.safetensors"))
    save_adapter(finetuned, env.path("models", "edit", f"edit_test_{family}_finetuned.safetensors"))
    (model,) = env.node("UNETLoader")().load_unet(filename, "default")
    return TinyModel(family, diffusers_model, state, filename, model, adapter, f"edit_test_{family}.safetensors",
                     finetuned, f"edit_test_{family}_finetuned.safetensors")


@pytest.fixture(scope="session")
def sd3(comfy_env) -> TinyModel:
    from tests.comfy.harness import tiny_sd3_diffusers

    return _tiny(comfy_env, "sd35_medium", tiny_sd3_diffusers())


@pytest.fixture(scope="session")
def pixart(comfy_env) -> TinyModel:
    from tests.comfy.harness import tiny_pixart_diffusers

    return _tiny(comfy_env, "pixart_sigma", tiny_pixart_diffusers())


@pytest.fixture(scope="session")
def sd3_medium(comfy_env) -> TinyModel:
    """SD3-Medium layout (no qk-norm, no attn2), 2 blocks × 2 heads of 64."""
    from tests.comfy.harness import tiny_mmdit_diffusers

    return _tiny(comfy_env, "sd3_medium", tiny_mmdit_diffusers("sd3_medium", seed=11))


@pytest.fixture(scope="session")
def sd35_large(comfy_env) -> TinyModel:
    """SD3.5-Large layout (RMS qk-norm, no attn2), 2 blocks × 2 heads of 64."""
    from tests.comfy.harness import tiny_mmdit_diffusers

    return _tiny(comfy_env, "sd35_large", tiny_mmdit_diffusers("sd35_large", seed=12))


@pytest.fixture(scope="session")
def pixart_alpha(comfy_env) -> TinyModel:
    """PixArt-α layout (micro-conditions) at ComfyUI's hard-coded width 1152, depth 1."""
    from tests.comfy.harness import tiny_pixart_diffusers

    return _tiny(comfy_env, "pixart_alpha", tiny_pixart_diffusers(seed=13, micro_conditions=True))


@pytest.fixture(scope="session")
def vaes(comfy_env) -> dict:
    from tests.comfy.harness import random_taesd

    files = {}
    for channels in (4, 16):
        files[channels] = f"edit_test_taesd{channels}.safetensors"
        random_taesd(channels, comfy_env.path("models", "vae", files[channels]))
    return files


@pytest.fixture(scope="session")
def apply_edit(comfy_env):
    """The pack's ``apply_edit`` (as ComfyUI loaded it)."""
    return comfy_env.pack("nodes.apply").apply_edit

