"""(f) Non-square and odd latent sizes sample without shape errors (odd token grids included)."""

import os

import pytest

if not os.environ.get("COMFYUI_DIR"):
    pytest.skip("COMFYUI_DIR is not set: tests/comfy need a real ComfyUI (see README)", allow_module_level=True)

import torch  # noqa: E402

from tests.comfy.harness import conditioning  # noqa: E402


@pytest.mark.parametrize("height, width", [(40, 56), (61, 45), (7, 33), (2, 2)])
def test_sd35_medium_samples_odd_latents(comfy_env, sd3, apply_edit, height, width):
    patched = apply_edit(sd3.model, sd3.finetuned_adapter)
    out = comfy_env.sample(patched, conditioning(sd3.family, seed=1), conditioning(sd3.family, seed=2),
                           torch.zeros(1, 16, height, width), steps=1)
    assert out.shape == (1, 16, height, width) and torch.isfinite(out).all()


@pytest.mark.parametrize("height, width", [(40, 56), (42, 58)])  # 21×29 tokens: odd grid, ragged compression
def test_pixart_samples_non_square_latents(comfy_env, pixart, apply_edit, height, width):
    patched = apply_edit(pixart.model, pixart.adapter)
    out = comfy_env.sample(patched, conditioning(pixart.family, seed=1), conditioning(pixart.family, seed=2),
                           torch.zeros(1, 4, height, width), steps=1, cfg=1.0)
    assert out.shape == (1, 4, height, width) and torch.isfinite(out).all()


def test_batch_of_two_with_different_text_lengths(comfy_env, sd3, apply_edit):
    patched = apply_edit(sd3.model, sd3.adapter)
    out = comfy_env.sample(patched, conditioning(sd3.family, seed=1, length=77),
                           conditioning(sd3.family, seed=2, length=154), torch.zeros(2, 16, 24, 20), steps=1)
    assert out.shape == (2, 16, 24, 20) and torch.isfinite(out).all()
