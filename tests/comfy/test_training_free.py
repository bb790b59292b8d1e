"""Apply Training-free Fast Attention (EDiT) in a real ComfyUI: KV compression with no adapter.

Covers: the input MODEL is untouched and samples bit-identically afterwards; below ``min_tokens`` or outside
the sampling range the output is bit-identical to the unpatched model; above it the prediction equals
edit_core's diffusers ``apply_training_free`` on the same weights; it composes with Apply EDiT Attention (either
order; EDiT keeps its layers), Tiled Diffusion (EDiT), a LoRA-style weight patch and Skip Layer Guidance; odd
latents run."""

import copy
import os

import pytest

if not os.environ.get("COMFYUI_DIR"):
    pytest.skip("COMFYUI_DIR is not set: tests/comfy need a real ComfyUI (see README)", allow_module_level=True)

import torch  # noqa: E402

from tests.comfy.harness import conditioning, reference_output  # noqa: E402
from tests.util import rel_rmse  # noqa: E402

LATENTS = {"sd3": (1, 16, 24, 32), "pixart": (1, 4, 40, 48)}  # 12×16 = 192 and 20×24 = 480 tokens


@pytest.fixture(params=["sd3", "pixart"])
def tiny(request):
    return request.getfixturevalue(request.param)


@pytest.fixture
def training_free(comfy_env):
    return comfy_env.pack("nodes.training_free").apply_training_free


def _key(tiny):
    return "sd3" if tiny.family.startswith("sd3") else "pixart"


def _sample(env, tiny, model, latent=None, steps=2):
    shape = latent or LATENTS[_key(tiny)]
    return env.sample(model, conditioning(tiny.family, seed=1), conditioning(tiny.family, seed=2), torch.zeros(shape),
                      steps=steps, seed=0)


def _tokens(tiny, latent=None):
    shape = latent or LATENTS[_key(tiny)]
    return (shape[-2] // 2) * (shape[-1] // 2)


def test_input_model_untouched_and_samples_bit_identically_after(comfy_env, tiny, training_free):
    before = _sample(comfy_env, tiny, tiny.model)
    patches = dict(tiny.model.object_patches)
    patched = training_free(tiny.model, ratio=2, min_tokens=0)
    assert patched.object_patches and dict(tiny.model.object_patches) == patches
    assert not torch.equal(_sample(comfy_env, tiny, patched), before)
    assert torch.equal(_sample(comfy_env, tiny, tiny.model), before)


def test_below_min_tokens_the_output_is_bit_identical(comfy_env, tiny, training_free):
    before = _sample(comfy_env, tiny, tiny.model)
    patched = training_free(tiny.model, ratio=2, min_tokens=_tokens(tiny) + 1)
    assert torch.equal(_sample(comfy_env, tiny, patched), before)
    at_threshold = training_free(tiny.model, ratio=2, min_tokens=_tokens(tiny))
    assert not torch.equal(_sample(comfy_env, tiny, at_threshold), before)


def test_outside_the_sampling_range_the_output_is_bit_identical(comfy_env, tiny, training_free):
    before = _sample(comfy_env, tiny, tiny.model)
    never = training_free(tiny.model, ratio=2, min_tokens=0, start_percent=1.0, end_percent=1.0)
    assert torch.equal(_sample(comfy_env, tiny, never), before)
    late = training_free(tiny.model, ratio=2, min_tokens=0, start_percent=0.5, end_percent=1.0)
    everywhere = training_free(tiny.model, ratio=2, min_tokens=0)
    late_out, everywhere_out = _sample(comfy_env, tiny, late), _sample(comfy_env, tiny, everywhere)
    assert not torch.equal(late_out, before) and not torch.equal(late_out, everywhere_out)


@pytest.mark.parametrize("ratio,temperature", [(2, "teacher"), (3, "proportional")])
def test_prediction_matches_the_diffusers_integration(comfy_env, tiny, training_free, ratio, temperature):
    from edit_core.integrations.diffusers import apply_training_free as diffusers_training_free

    latent = torch.zeros(1, 16, 22, 30) if _key(tiny) == "sd3" else torch.zeros(1, 4, 42, 58)
    patched = training_free(tiny.model, ratio=ratio, min_tokens=0, temperature=temperature)
    call = comfy_env.predict(patched, conditioning(tiny.family, seed=3), latent, seed=5)
    reference = diffusers_training_free(copy.deepcopy(tiny.diffusers).double(), ratio=ratio, temperature=temperature)
    expected = reference_output(reference, [None], tiny.family, call,
                                model_sampling=patched.get_model_object("model_sampling"))
    teacher = comfy_env.predict(tiny.model, conditioning(tiny.family, seed=3), latent, seed=5)
    error = rel_rmse(call["output"], expected)
    assert error <= 1e-4, f"rel-RMSE {error:.2e} against diffusers apply_training_free (float64)"
    assert rel_rmse(teacher["output"], expected) > max(10 * error, 1e-5)  # the attention really changed


def _slot_types(model, block):
    unit = model.get_model_object(f"diffusion_model.joint_blocks.{block}")
    return {slot: type(module).__name__ + ":" + type(module._parts[0]).__name__
            if hasattr(module, "_parts") else type(module).__name__ for slot, module in unit.slots.items()}


@pytest.mark.parametrize("order", ["edit_first", "training_free_first"])
def test_composes_with_apply_edit_and_edit_keeps_its_layers(comfy_env, sd3, apply_edit, training_free, order):
    if order == "edit_first":
        model = training_free(apply_edit(sd3.model, sd3.adapter, end_block=0), ratio=2, min_tokens=0)
    else:
        model = apply_edit(training_free(sd3.model, ratio=2, min_tokens=0), sd3.adapter, end_block=0)
    assert _slot_types(model, 0) == {"attn": "EDiTJointAttention:EDiTLayerAdapter",
                                     "attn2": "EDiTSelfAttention:EDiTLayerAdapter"}
    assert _slot_types(model, 1) == {"attn": "EDiTJointAttention:KVCompression"}
    out = _sample(comfy_env, sd3, model)
    assert torch.isfinite(out).all()
    assert not torch.equal(out, _sample(comfy_env, sd3, apply_edit(sd3.model, sd3.adapter, end_block=0)))


def test_composes_with_tiled_diffusion(comfy_env, tiny, training_free):
    tiled = comfy_env.pack("nodes.tiled_diffusion").apply_tiled_diffusion
    latent = (1, 16, 40, 48) if _key(tiny) == "sd3" else (1, 4, 72, 88)
    size = 256 if _key(tiny) == "sd3" else 384
    model, _ = tiled(training_free(tiny.model, ratio=2, min_tokens=0), size, size, 64, 2, "feathered")
    plain, _ = tiled(tiny.model, size, size, 64, 2, "feathered")
    out, reference = _sample(comfy_env, tiny, model, latent, steps=1), _sample(comfy_env, tiny, plain, latent, steps=1)
    assert torch.isfinite(out).all() and not torch.equal(out, reference)


def test_composes_with_a_weight_patch_and_skip_layer_guidance(comfy_env, sd3, training_free):
    patched = training_free(sd3.model, ratio=2, min_tokens=0)
    key = "diffusion_model.joint_blocks.1.x_block.attn.qkv.weight"
    shape = sd3.model.get_model_object("diffusion_model.joint_blocks.1").x_block.attn.qkv.weight.shape
    lora = patched.clone()
    lora.add_patches({key: ("diff", (0.05 * torch.ones(shape),))}, 1.0)
    assert not torch.equal(_sample(comfy_env, sd3, lora), _sample(comfy_env, sd3, patched))
    seen = []

    def through_original(args, extra):
        seen.append(type(lora.get_model_object("diffusion_model.joint_blocks.1")).__name__)
        return extra["original_block"](args)

    slg = patched.clone()
    slg.set_model_patch_replace(through_original, "dit", "double_block", 1)
    assert torch.equal(_sample(comfy_env, sd3, slg), _sample(comfy_env, sd3, patched))
    assert seen and set(seen) == {"EDiTJointBlock"}


@pytest.mark.parametrize("latent", [(1, 16, 18, 26), (1, 16, 19, 27)])
def test_odd_sd3_latents_run(comfy_env, sd3, training_free, latent):
    out = _sample(comfy_env, sd3, training_free(sd3.model, ratio=3, min_tokens=0), latent, steps=1)
    assert out.shape == latent and torch.isfinite(out).all()


def test_odd_pixart_latent_runs(comfy_env, pixart, training_free):
    latent = (1, 4, 42, 58)
    out = _sample(comfy_env, pixart, training_free(pixart.model, ratio=3, min_tokens=0), latent, steps=1)
    assert out.shape == latent and torch.isfinite(out).all()


def test_bad_settings_are_clear_errors(sd3, training_free):
    with pytest.raises(ValueError, match="ratio"):
        training_free(sd3.model, ratio=5)
    with pytest.raises(ValueError, match="start_percent"):
        training_free(sd3.model, start_percent=0.8, end_percent=0.2)
    with pytest.raises(ValueError, match="block range"):
        training_free(sd3.model, start_block=5, end_block=3)


def test_composes_with_the_torch_compile_wrapper(comfy_env, sd3, training_free):
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    torch._dynamo.reset()
    patched = training_free(sd3.model, ratio=2, min_tokens=0)
    compiled = patched.clone()
    set_torch_compile_wrapper(model=compiled, backend="eager")
    torch.testing.assert_close(_sample(comfy_env, sd3, compiled, steps=1), _sample(comfy_env, sd3, patched, steps=1),
                               rtol=1e-5, atol=1e-5)
