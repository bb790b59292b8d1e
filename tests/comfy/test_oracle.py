"""(a) Cross-host oracle: the ComfyUI-patched model's prediction equals a float64 reference computed by
edit_core on diffusers' own copy of the same weights (unfused projections, image-first token order)."""

import os

import pytest

if not os.environ.get("COMFYUI_DIR"):
    pytest.skip("COMFYUI_DIR is not set: tests/comfy need a real ComfyUI (see README)", allow_module_level=True)

import torch  # noqa: E402

from tests.comfy.harness import conditioning, edit_reference_model, reference_output  # noqa: E402
from tests.util import rel_rmse  # noqa: E402

TOLERANCE = 1e-4


def _check(env, tiny, patched, adapter, latent, *, eta=None, layers=None):
    call = env.predict(patched, conditioning(tiny.family, seed=3), latent, seed=5)
    reference, grid_box = edit_reference_model(tiny.diffusers, adapter, eta=eta, layers=layers)
    expected = reference_output(reference, grid_box, tiny.family, call,
                                model_sampling=patched.get_model_object("model_sampling"))
    error = rel_rmse(call["output"], expected)
    print(f"rel-RMSE vs float64 reference: {error:.2e}")
    assert error <= TOLERANCE, f"rel-RMSE {error:.2e} against the float64 edit_core/diffusers reference"
    return call, expected


def test_sd35_medium_matches_edit_core_reference(comfy_env, sd3, apply_edit):
    patched = apply_edit(sd3.model, sd3.adapter)
    call, expected = _check(comfy_env, sd3, patched, sd3.adapter, torch.zeros(1, 16, 24, 32))
    teacher = comfy_env.predict(sd3.model, conditioning(sd3.family, seed=3), torch.zeros(1, 16, 24, 32), seed=5)
    assert rel_rmse(teacher["output"], expected) > 10 * TOLERANCE  # the attention really changed


def test_sd35_medium_with_finetuned_projections_and_exact_eta(comfy_env, sd3, apply_edit):
    patched = apply_edit(sd3.model, sd3.finetuned_adapter, eta="exact")
    _check(comfy_env, sd3, patched, sd3.finetuned_adapter, torch.zeros(1, 16, 20, 28), eta="exact")


def test_sd35_medium_block_range_and_softmax_attn2(comfy_env, sd3, apply_edit):
    patched = apply_edit(sd3.model, sd3.adapter, convert_attn2="off", start_block=1, end_block=1)
    _check(comfy_env, sd3, patched, sd3.adapter, torch.zeros(1, 16, 24, 24), layers=[(1, "attn")])


def test_pixart_sigma_matches_edit_core_reference(comfy_env, pixart, apply_edit):
    patched = apply_edit(pixart.model, pixart.adapter)
    call, expected = _check(comfy_env, pixart, patched, pixart.adapter, torch.zeros(1, 4, 48, 48))
    teacher = comfy_env.predict(pixart.model, conditioning(pixart.family, seed=3), torch.zeros(1, 4, 48, 48),
                                seed=5)
    assert rel_rmse(teacher["output"], expected) > 10 * TOLERANCE


def test_pixart_sigma_with_finetuned_projections_on_odd_grid(comfy_env, pixart, apply_edit):
    patched = apply_edit(pixart.model, pixart.finetuned_adapter)
    _check(comfy_env, pixart, patched, pixart.finetuned_adapter, torch.zeros(1, 4, 42, 58))


@pytest.mark.parametrize("family", ["sd35_medium", "pixart_sigma"])
def test_matches_the_diffusers_integration(comfy_env, request, family, apply_edit):
    """Same adapter (with fine-tuned projections), two hosts: ComfyUI's patcher and edit_core's diffusers one."""
    try:
        from edit_core.integrations.diffusers import apply_edit as diffusers_apply_edit
    except ImportError:
        pytest.skip("edit_core.integrations.diffusers is not available")
    import copy

    tiny = request.getfixturevalue("sd3" if family == "sd35_medium" else "pixart")
    latent = torch.zeros(1, 16, 24, 32) if family == "sd35_medium" else torch.zeros(1, 4, 40, 56)
    patched = apply_edit(tiny.model, tiny.finetuned_adapter)
    call = comfy_env.predict(patched, conditioning(family, seed=3), latent, seed=5)
    model = diffusers_apply_edit(copy.deepcopy(tiny.diffusers), tiny.finetuned_adapter, backend="torch")
    expected = reference_output(model, [None], family, call, dtype=torch.float32,
                                model_sampling=patched.get_model_object("model_sampling"))
    error = rel_rmse(call["output"], expected)
    print(f"rel-RMSE vs the diffusers integration: {error:.2e}")
    assert error <= TOLERANCE
