"""Every distillable variant (the paper's baselines) runs in ComfyUI exactly as in the diffusers integration:
the same adapter (perturbed new tensors and fine-tuned projections), two hosts, one prediction."""

import copy
import os

import pytest

if not os.environ.get("COMFYUI_DIR"):
    pytest.skip("COMFYUI_DIR is not set: tests/comfy need a real ComfyUI (see README)", allow_module_level=True)

import torch  # noqa: E402

from tests.comfy.harness import conditioning, perturbed_adapter, reference_output  # noqa: E402
from tests.util import rel_rmse  # noqa: E402

TOLERANCE = 1e-4
CASES = [("pixart_sigma", "sana"), ("pixart_sigma", "linfusion"), ("pixart_sigma", "edit_no_convfusion"),
         ("pixart_sigma", "kv_compress"), ("sd35_medium", "mm_linear"), ("sd35_medium", "kv_compress")]


def _variant_adapter(state: dict, variant: str):
    from edit_core.adapter import FINETUNE_NAMES

    adapter = perturbed_adapter(state, seed=4, finetune=True, variant=variant)
    g = torch.Generator().manual_seed(11)
    for key, value in adapter.tensors.items():  # move every new tensor off its init
        if key.split(".")[3] not in FINETUNE_NAMES:
            adapter.tensors[key] = value + 0.05 * torch.randn(value.shape, generator=g)
    return adapter


@pytest.mark.parametrize("family, variant", CASES)
def test_variant_matches_the_diffusers_integration(comfy_env, request, family, variant, apply_edit):
    from edit_core.integrations.diffusers import apply_edit as diffusers_apply_edit

    tiny = request.getfixturevalue("sd3" if family == "sd35_medium" else "pixart")
    adapter = _variant_adapter(tiny.state_dict, variant)
    latent = torch.zeros(1, 16, 22, 30) if family == "sd35_medium" else torch.zeros(1, 4, 42, 54)
    patched = apply_edit(tiny.model, adapter)
    call = comfy_env.predict(patched, conditioning(family, seed=3), latent, seed=5)
    model = diffusers_apply_edit(copy.deepcopy(tiny.diffusers), adapter, backend="torch")
    expected = reference_output(model, [None], family, call, dtype=torch.float32,
                                model_sampling=patched.get_model_object("model_sampling"))
    error = rel_rmse(call["output"], expected)
    teacher = comfy_env.predict(tiny.model, conditioning(family, seed=3), latent, seed=5)
    print(f"{variant}: rel-RMSE vs the diffusers integration {error:.2e}")
    assert error <= TOLERANCE
    assert rel_rmse(teacher["output"], expected) > 10 * TOLERANCE  # the variant really changed the model
