"""ComfyUI's memory estimate for a patched MODEL follows its converted (linear) attention: lower than the
softmax model's, on the clone only, restored when the clone is unpatched."""

import os

import pytest

if not os.environ.get("COMFYUI_DIR"):
    pytest.skip("COMFYUI_DIR is not set: tests/comfy need a real ComfyUI (see README)", allow_module_level=True)

import torch  # noqa: E402

from tests.comfy.harness import conditioning  # noqa: E402

LATENT_4K = (512, 512)  # a 4096² image


@pytest.fixture(params=["sd3", "pixart"])
def tiny(request):
    return request.getfixturevalue(request.param)


def _channels(tiny) -> int:
    return 16 if tiny.family.startswith("sd3") else 4


def _estimate(model, channels: int, latent_hw=LATENT_4K) -> int:
    """The memory ComfyUI's prepare_sampling asks load_models_gpu for (bytes), loading nothing."""
    import comfy.model_management as mm
    import comfy.sampler_helpers

    import copy

    asked = []
    options = copy.deepcopy(model.model_options)
    comfy.sampler_helpers.prepare_model_patcher(model, {"positive": []}, options)  # as CFGGuider does
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mm, "load_models_gpu", lambda models, memory_required=0, **kw: asked.append(memory_required))
        comfy.sampler_helpers.prepare_sampling(model, [1, channels, *latent_hw], {"positive": []},
                                               model_options=options)
    return asked[0]


def test_estimate_for_a_4k_latent_is_lower_after_patching_and_the_base_is_untouched(tiny, apply_edit):
    base_factor = tiny.model.model.memory_usage_factor
    plain = _estimate(tiny.model, _channels(tiny))
    patched = apply_edit(tiny.model, tiny.adapter)
    lower = _estimate(patched, _channels(tiny))
    assert 0 < lower < plain
    assert tiny.model.model.memory_usage_factor == base_factor and "memory_usage_factor" not in tiny.model.object_patches
    assert _estimate(tiny.model, _channels(tiny)) == plain


def test_patched_factor_applies_while_sampling_and_unpatching_restores_it(tiny, apply_edit, comfy_env):
    import comfy.patcher_extension

    base_factor = tiny.model.model.memory_usage_factor
    seen = []

    def record(executor, *args, **kwargs):  # what calc_cond_batch's batch sizing reads at this moment
        seen.append(tiny.model.model.memory_usage_factor)
        return executor(*args, **kwargs)

    patched = apply_edit(tiny.model, tiny.adapter)
    plain = tiny.model.clone()
    for m in (patched, plain):
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "record", record)
    shape = (1, 16, 24, 32) if tiny.family.startswith("sd3") else (1, 4, 40, 48)
    cond, uncond = conditioning(tiny.family, seed=1), conditioning(tiny.family, seed=2)
    comfy_env.sample(patched, cond, uncond, torch.zeros(shape), steps=1, seed=0)
    assert set(seen) == {patched.object_patches["memory_usage_factor"]} and seen[0] < base_factor
    seen.clear()
    comfy_env.sample(plain, cond, uncond, torch.zeros(shape), steps=1, seed=0)  # ComfyUI swaps the clones
    assert set(seen) == {base_factor}


def test_a_partial_conversion_keeps_the_softmax_estimate(sd3, apply_edit):
    partial = apply_edit(sd3.model, sd3.adapter, end_block=0)  # block 1 stays softmax: it sets the peak
    assert "memory_usage_factor" not in partial.object_patches
    assert _estimate(partial, 16) == _estimate(sd3.model, 16)
