"""(e) Bad inputs are node errors that ComfyUI's executor reports with a message saying what is wrong, and
the next prompt still runs."""

import os

import pytest

if not os.environ.get("COMFYUI_DIR"):
    pytest.skip("COMFYUI_DIR is not set: tests/comfy need a real ComfyUI (see README)", allow_module_level=True)

import torch  # noqa: E402

from tests.comfy.harness import save_state_dict, tiny_sd3_diffusers  # noqa: E402


@pytest.fixture(scope="module")
def bad_files(comfy_env, sd3):
    from edit_core.adapter import init_adapter_from_teacher, save_adapter

    folder = comfy_env.path("models", "edit")
    three_blocks = tiny_sd3_diffusers(num_layers=3, heads=2, seed=4)  # same width, one block more
    state = {k: v.detach() for k, v in three_blocks.state_dict().items()}
    save_adapter(init_adapter_from_teacher(state), os.path.join(folder, "bad_depth.safetensors"))
    with open(os.path.join(folder, sd3.adapter_file), "rb") as f:
        data = f.read()
    with open(os.path.join(folder, "bad_truncated.safetensors"), "wb") as f:
        f.write(data[:len(data) // 2])
    torch.save({"blocks.0.attn.conv_fusion.conv_in.weight": torch.zeros(1)},
               os.path.join(folder, "bad_pickle.safetensors"))
    torch.save({"x": torch.zeros(1)}, os.path.join(folder, "bad_extension.pt"))
    save_state_dict(torch.nn.Linear(2, 2), os.path.join(folder, "bad_no_metadata.safetensors"))
    return folder


def _apply_prompt(model_node, adapter_name, output="save"):
    return {
        "model": model_node,
        "adapter": {"class_type": "EDiTAdapterLoader", "inputs": {"adapter_name": adapter_name}},
        "edit": {"class_type": "EDiTApply", "inputs": {"model": ["model", 0], "adapter": ["adapter", 0],
                                                       "backend": "auto", "eta": "adapter default",
                                                       "convert_attn2": "adapter default"}},
        "save": {"class_type": "EDiTCheckpointSave", "inputs": {"model": ["edit", 0],
                                                               "filename_prefix": "diffusion_models/edit_bad"}},
    }


def _unet(filename):
    return {"class_type": "UNETLoader", "inputs": {"unet_name": filename, "weight_dtype": "default"}}


CASES = {
    "wrong_family": ("pixart_adapter", "EDiTApply",
                     ["it is for PixArt-Sigma (1 blocks, width 1152)",
                      "this model is SD3.5-Medium (2 blocks, width 128)"]),
    "wrong_depth": ("bad_depth.safetensors", "EDiTApply", ["it has 3 blocks, this model has 2"]),
    "truncated": ("bad_truncated.safetensors", "EDiTAdapterLoader", ["truncated"]),
    "pickle": ("bad_pickle.safetensors", "EDiTAdapterLoader", ["pickle", "never unpickled"]),
    "no_metadata": ("bad_no_metadata.safetensors", "EDiTAdapterLoader", ["missing metadata", "EDiT adapter"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_adapter_is_a_clear_node_error_and_the_next_prompt_runs(comfy_env, sd3, pixart, bad_files, case):
    adapter_name, failing_node, phrases = CASES[case]
    if adapter_name == "pixart_adapter":
        adapter_name = pixart.adapter_file
    result = comfy_env.run_prompt(_apply_prompt(_unet(sd3.filename), adapter_name))
    assert result.valid and not result.success
    (error,) = result.errors
    assert error["node_type"] == failing_node
    for phrase in phrases:
        assert phrase in error["exception_message"], error["exception_message"]

    good = comfy_env.run_prompt(_apply_prompt(_unet(sd3.filename), sd3.adapter_file))
    assert good.success, good.error_text()


def test_sd3_adapter_on_pixart_names_both_models(comfy_env, sd3, pixart, bad_files):
    result = comfy_env.run_prompt(_apply_prompt(_unet(pixart.filename), sd3.adapter_file))
    assert not result.success
    message = result.errors[0]["exception_message"]
    assert "it is for SD3.5-Medium (2 blocks, width 128)" in message
    assert "this model is PixArt-Sigma (1 blocks, width 1152)" in message


def test_model_that_is_neither_pixart_nor_sd3_is_refused(comfy_env, sd3, bad_files):
    result = comfy_env.run_prompt(_apply_prompt({"class_type": "EDiTTestOtherModel", "inputs": {}},
                                                sd3.adapter_file))
    assert result.valid and not result.success
    (error,) = result.errors
    assert error["node_type"] == "EDiTApply"
    assert "SD3-Medium models; this MODEL is BaseModel (UNetModel)" in \
        error["exception_message"]
    assert comfy_env.run_prompt(_apply_prompt(_unet(sd3.filename), sd3.adapter_file)).success


def test_non_safetensors_files_are_not_offered(comfy_env, bad_files):
    assert "bad_extension.pt" not in comfy_env.pack("nodes.model_folder").adapter_files()
    result = comfy_env.run_prompt(_apply_prompt(_unet("whatever.safetensors"), "bad_extension.pt"))
    assert not result.valid  # ComfyUI's own validation: not in the list


def test_plain_diffusion_model_is_not_an_edit_checkpoint(comfy_env, sd3):
    prompt = {"ckpt": {"class_type": "EDiTCheckpointLoader",
                       "inputs": {"ckpt_name": sd3.filename, "weight_dtype": "default", "backend": "auto"}},
              "save": {"class_type": "EDiTCheckpointSave", "inputs": {"model": ["ckpt", 0],
                                                                     "filename_prefix": "diffusion_models/x"}}}
    result = comfy_env.run_prompt(prompt)
    assert result.valid and not result.success
    assert "plain diffusion model, not an EDiT checkpoint" in result.errors[0]["exception_message"]


def test_saving_a_model_without_edit_is_refused(comfy_env, sd3):
    prompt = {"model": _unet(sd3.filename),
              "save": {"class_type": "EDiTCheckpointSave", "inputs": {"model": ["model", 0],
                                                                     "filename_prefix": "diffusion_models/x"}}}
    result = comfy_env.run_prompt(prompt)
    assert result.valid and not result.success
    assert "has no EDiT attention" in result.errors[0]["exception_message"]


def test_forcing_a_backend_that_cannot_run_here_says_why(comfy_env, sd3, apply_edit, monkeypatch):
    backends = comfy_env.pack("edit_core.ops.backends")
    monkeypatch.setattr(backends, "_REGISTRY", {op: {k: v for k, v in impls.items() if k != "triton"}
                                                for op, impls in backends._REGISTRY.items()})
    monkeypatch.setattr(backends, "_LAZY", {key: entry for key, entry in backends._LAZY.items() if key[1] != "triton"})
    with pytest.raises(ValueError, match="attention backend 'triton' is unavailable: .*choose backend 'auto'"):
        apply_edit(sd3.model, sd3.adapter, backend="triton")
    apply_edit(sd3.model, sd3.adapter, backend="auto")


def test_applying_twice_is_refused(sd3, apply_edit):
    with pytest.raises(ValueError, match="already has EDiT attention"):
        apply_edit(apply_edit(sd3.model, sd3.adapter), sd3.adapter)
