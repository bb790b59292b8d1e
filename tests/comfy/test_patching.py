"""(c) Patching is clean: the base MODEL is never changed, clones don't leak into each other, weight patches
(LoRAs) still reach the converted attention, and the patch composes with SLG and torch.compile."""

import os

import pytest

if not os.environ.get("COMFYUI_DIR"):
    pytest.skip("COMFYUI_DIR is not set: tests/comfy need a real ComfyUI (see README)", allow_module_level=True)

import torch  # noqa: E402

from tests.comfy.harness import conditioning  # noqa: E402
from tests.util import rel_rmse  # noqa: E402

SD3_LATENT = (1, 16, 24, 32)
PIXART_LATENT = (1, 4, 40, 48)


def _sample(env, tiny, model, steps=2, seed=0):
    shape = SD3_LATENT if tiny.family.startswith("sd3") else PIXART_LATENT
    return env.sample(model, conditioning(tiny.family, seed=1), conditioning(tiny.family, seed=2),
                      torch.zeros(shape), steps=steps, seed=seed)


@pytest.fixture(params=["sd3", "pixart"])
def tiny(request):
    return request.getfixturevalue(request.param)


def test_applying_leaves_the_input_model_untouched(tiny, apply_edit):
    before = (dict(tiny.model.object_patches), dict(tiny.model.patches), dict(tiny.model.additional_models),
              tiny.model.patches_uuid)
    patched = apply_edit(tiny.model, tiny.finetuned_adapter)
    assert patched is not tiny.model and patched.model is tiny.model.model
    assert (dict(tiny.model.object_patches), dict(tiny.model.patches), dict(tiny.model.additional_models),
            tiny.model.patches_uuid) == before
    assert tiny.model.get_attachment("edit") is None
    assert patched.object_patches and patched.patches and len(patched.get_additional_models_with_key("edit")) == 1


def test_base_model_samples_bit_identically_after_the_patched_clone(comfy_env, tiny, apply_edit):
    before = _sample(comfy_env, tiny, tiny.model)
    patched = _sample(comfy_env, tiny, apply_edit(tiny.model, tiny.finetuned_adapter))
    after = _sample(comfy_env, tiny, tiny.model)
    assert not torch.equal(before, patched)
    assert torch.equal(before, after)
    blocks = tiny.model.model.diffusion_model
    original = blocks.joint_blocks[0] if tiny.family.startswith("sd3") else blocks.blocks[0].attn
    assert not type(original).__name__.startswith("EDiT")


def test_two_clones_with_different_adapters_do_not_leak(comfy_env, tiny, apply_edit):
    first = apply_edit(tiny.model, tiny.adapter)
    second = apply_edit(tiny.model, tiny.finetuned_adapter, eta="exact")
    a1, b1 = _sample(comfy_env, tiny, first), _sample(comfy_env, tiny, second)
    a2, b2 = _sample(comfy_env, tiny, first), _sample(comfy_env, tiny, second)
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    assert not torch.equal(a1, b1)


def test_adapter_modules_are_loaded_with_the_model(comfy_env, tiny, apply_edit):
    import comfy.model_management as mm

    patched = apply_edit(tiny.model, tiny.adapter)
    (adapter_patcher,) = patched.get_additional_models_with_key("edit")
    _sample(comfy_env, tiny, patched, steps=1)
    assert any(loaded.model is not None and loaded.model.model is adapter_patcher.model
               for loaded in mm.current_loaded_models)


def _qkv_key(tiny):
    if tiny.family.startswith("sd3"):
        return "diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"
    return "diffusion_model.blocks.0.attn.qkv.weight"


def test_lora_style_weight_patch_changes_the_patched_model(comfy_env, tiny, apply_edit):
    key = _qkv_key(tiny)
    weight = tiny.model.model.state_dict()[key]
    delta = 0.2 * weight.std() * torch.randn(weight.shape, generator=torch.Generator().manual_seed(7))

    patched = apply_edit(tiny.model, tiny.finetuned_adapter)
    lora_after = patched.clone()
    assert lora_after.add_patches({key: ("diff", (delta,))}) == [key]
    lora_first = tiny.model.clone()
    lora_first.add_patches({key: ("diff", (delta,))})
    lora_before = apply_edit(lora_first, tiny.finetuned_adapter)

    plain, after, before = (_sample(comfy_env, tiny, m) for m in (patched, lora_after, lora_before))
    assert rel_rmse(after, plain) > 1e-3
    assert rel_rmse(after, before) < 1e-5  # LoRA and fine-tuned diffs stack in either order (fp32 rounding apart)


def test_skip_layer_guidance_replaces_and_calls_the_patched_blocks(comfy_env, sd3, apply_edit):
    patched = apply_edit(sd3.model, sd3.adapter)
    passthrough = patched.clone()
    seen = []

    def through_original(args, extra):
        seen.append(type(passthrough.get_model_object("diffusion_model.joint_blocks.1")).__name__)
        return extra["original_block"](args)

    passthrough.set_model_patch_replace(through_original, "dit", "double_block", 1)
    assert torch.equal(_sample(comfy_env, sd3, passthrough), _sample(comfy_env, sd3, patched))
    assert seen and set(seen) == {"EDiTJointBlock"}

    (slg,) = comfy_env.node("SkipLayerGuidanceDiT").execute(patched, scale=3.0, start_percent=0.0, end_percent=1.0,
                                                           double_layers="1", single_layers="")
    guided = _sample(comfy_env, sd3, slg)
    assert torch.isfinite(guided).all() and not torch.equal(guided, _sample(comfy_env, sd3, patched))


def test_torch_compile_wrapper_composes(comfy_env, sd3, apply_edit):
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    torch._dynamo.reset()
    patched = apply_edit(sd3.model, sd3.adapter, backend="torch")
    compiled = patched.clone()
    set_torch_compile_wrapper(model=compiled, backend="eager")
    torch.testing.assert_close(_sample(comfy_env, sd3, compiled, steps=1), _sample(comfy_env, sd3, patched, steps=1),
                               rtol=1e-5, atol=1e-5)


def test_fp8_weights_go_through_comfyui_casting(comfy_env, sd3, apply_edit):
    (fp8,) = comfy_env.node("UNETLoader")().load_unet(sd3.filename, "fp8_e4m3fn")
    qkv = fp8.model.diffusion_model.joint_blocks[0].x_block.attn.qkv
    assert qkv.weight.dtype == torch.float8_e4m3fn and qkv.comfy_cast_weights
    low = _sample(comfy_env, sd3, apply_edit(fp8, sd3.finetuned_adapter), steps=1)
    full = _sample(comfy_env, sd3, apply_edit(sd3.model, sd3.finetuned_adapter), steps=1)
    assert torch.isfinite(low).all() and rel_rmse(low, full) < 0.1
