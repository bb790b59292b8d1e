"""(d) Whole graphs through ComfyUI's own executor with the pack installed as a custom node, and the
EDiT checkpoint round trip (Save EDiT Checkpoint → Load EDiT Checkpoint)."""

import os

import pytest

if not os.environ.get("COMFYUI_DIR"):
    pytest.skip("COMFYUI_DIR is not set: tests/comfy need a real ComfyUI (see README)", allow_module_level=True)

import shutil  # noqa: E402

import torch  # noqa: E402

from tests.comfy.harness import PACK_DIR_NAME, REPO  # noqa: E402

NODE_IDS = ("EDiTAdapterLoader", "EDiTApply", "EDiTCheckpointLoader", "EDiTCheckpointSave")


def graph(model_node: dict, *, family: str, vae: str, width: int, height: int, apply: dict | None = None,
          steps: int = 2, prefix: str = "edit_test", tiled: bool = True) -> dict:
    """loader → [EDiTApply] → KSampler → VAEDecodeTiled / VAEDecode (random TAESD) → SaveImage; conditioning
    from a test node."""
    sd3 = family == "sd3"
    prompt = {
        "model": model_node,
        "pos": {"class_type": "EDiTTestConditioning", "inputs": {"family": family, "seed": 1, "length": 20}},
        "neg": {"class_type": "EDiTTestConditioning", "inputs": {"family": family, "seed": 2, "length": 20}},
        "latent": {"class_type": "EmptySD3LatentImage" if sd3 else "EmptyLatentImage",
                   "inputs": {"width": width, "height": height, "batch_size": 1}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": vae}},
        "sample": {"class_type": "KSampler", "inputs": {
            "model": ["model", 0], "seed": 0, "steps": steps, "cfg": 2.0, "sampler_name": "euler",
            "scheduler": "simple", "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
            "denoise": 1.0}},
        "decode": {"class_type": "VAEDecodeTiled", "inputs": {"samples": ["sample", 0], "vae": ["vae", 0],
                                                             "tile_size": 128, "overlap": 32, "temporal_size": 64,
                                                             "temporal_overlap": 8}} if tiled else
                  {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["vae", 0]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": prefix}},
    }
    if apply is not None:
        prompt["adapter"] = {"class_type": "EDiTAdapterLoader", "inputs": {"adapter_name": apply.pop("adapter")}}
        prompt["edit"] = {"class_type": "EDiTApply", "inputs": {"model": ["model", 0], "adapter": ["adapter", 0],
                                                                "backend": "auto", "eta": "adapter default",
                                                                "convert_attn2": "adapter default", **apply}}
        prompt["sample"]["inputs"]["model"] = ["edit", 0]
    return prompt


def unet(filename: str) -> dict:
    return {"class_type": "UNETLoader", "inputs": {"unet_name": filename, "weight_dtype": "default"}}


def test_pack_imports_cleanly_as_a_custom_node(comfy_env):
    pack_lines = [line for line in comfy_env.startup_log.splitlines() if PACK_DIR_NAME in line]
    assert pack_lines, comfy_env.startup_log[-2000:]
    assert not any("IMPORT FAILED" in line or "Cannot import" in line for line in pack_lines), "\n".join(pack_lines)
    for node_id in NODE_IDS:
        assert node_id in comfy_env.nodes.NODE_CLASS_MAPPINGS
        schema = comfy_env.node(node_id).GET_SCHEMA()
        assert schema.category == "EDiT"
        assert all(i.tooltip for i in schema.inputs), f"{node_id} has inputs without a tooltip"
        assert os.path.isfile(os.path.join(comfy_env.path("custom_nodes", PACK_DIR_NAME), "web", "docs",
                                           f"{node_id}.md"))
    assert comfy_env.nodes.EXTENSION_WEB_DIRS  # WEB_DIRECTORY registered


def _saved_image(env, result):
    (images,) = [out["images"] for out in result.outputs.values() if "images" in out]
    return os.path.join(env.path("output"), images[0]["subfolder"], images[0]["filename"])


def test_sd35_medium_graph_with_edit_runs_to_a_saved_image(comfy_env, sd3, vaes):
    prompt = graph(unet(sd3.filename), family="sd3", vae=vaes[16], width=128, height=128,
                   apply={"adapter": sd3.adapter_file})
    result = comfy_env.run_prompt(prompt)
    assert result.valid and result.success, result.error_text()
    assert os.path.isfile(_saved_image(comfy_env, result))


def test_pixart_graph_with_edit_runs_to_a_saved_image(comfy_env, pixart, vaes):
    prompt = graph(unet(pixart.filename), family="pixart", vae=vaes[4], width=320, height=320, steps=1,
                   tiled=False,
                   apply={"adapter": pixart.adapter_file})
    result = comfy_env.run_prompt(prompt)
    assert result.valid and result.success, result.error_text()
    assert os.path.isfile(_saved_image(comfy_env, result))


def test_checkpoint_round_trip_reproduces_the_patched_model(comfy_env, sd3, apply_edit):
    from comfy.utils import load_torch_file

    prompt = {
        "model": unet(sd3.filename),
        "adapter": {"class_type": "EDiTAdapterLoader", "inputs": {"adapter_name": sd3.finetuned_adapter_file}},
        "edit": {"class_type": "EDiTApply", "inputs": {"model": ["model", 0], "adapter": ["adapter", 0],
                                                       "backend": "auto", "eta": "exact",
                                                       "convert_attn2": "adapter default", "start_block": 1,
                                                       "end_block": -1}},
        "save": {"class_type": "EDiTCheckpointSave", "inputs": {"model": ["edit", 0],
                                                               "filename_prefix": "diffusion_models/edit_test"}},
    }
    result = comfy_env.run_prompt(prompt)
    assert result.valid and result.success, result.error_text()
    saved = comfy_env.path("output", "diffusion_models", "edit_test_00001_.safetensors")
    tensors, metadata = load_torch_file(saved, return_metadata=True)
    assert metadata["edit_checkpoint_format"] == "1"
    assert metadata["edit_adapter.family"] == "sd35_medium" and metadata["edit_adapter.eta"] == "exact"
    assert metadata["edit_adapter.converted_blocks"] == "[1]" and metadata["edit_adapter.attn2_blocks"] == "[]"
    assert any(k.startswith("model.diffusion_model.joint_blocks.") for k in tensors)
    assert {k.split(".")[1:4] == ["blocks", "1", "attn"] for k in tensors if k.startswith("edit_adapter.")} == {True}
    assert not any(k.split(".")[4] in ("to_q", "to_out") for k in tensors if k.startswith("edit_adapter."))

    shutil.copy(saved, comfy_env.path("models", "diffusion_models", "edit_test_checkpoint.safetensors"))
    (loaded,) = comfy_env.node("EDiTCheckpointLoader").execute(ckpt_name="edit_test_checkpoint.safetensors",
                                                               weight_dtype="default", backend="auto").args
    original = apply_edit(sd3.model, sd3.finetuned_adapter, eta="exact", start_block=1)
    from tests.comfy.harness import conditioning

    pos, neg = conditioning(sd3.family, seed=1), conditioning(sd3.family, seed=2)
    a = comfy_env.sample(loaded, pos, neg, torch.zeros(1, 16, 24, 32))
    b = comfy_env.sample(original, pos, neg, torch.zeros(1, 16, 24, 32))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # a plain Load Diffusion Model reads the same file as the merged teacher
    (plain,) = comfy_env.node("UNETLoader")().load_unet("edit_test_checkpoint.safetensors", "default")
    assert plain.get_attachment("edit") is None and not plain.object_patches


def test_a_node_module_that_cannot_import_disables_only_its_own_nodes(comfy_env, monkeypatch):
    import importlib
    import io
    import logging

    pack_nodes = comfy_env.pack("nodes")

    class _Importlib:
        @staticmethod
        def import_module(name, package=None):
            if name == ".nodes_checkpoint":
                raise ModuleNotFoundError("No module named 'safetensors'", name="safetensors")
            return importlib.import_module(name, package)

    monkeypatch.setattr(pack_nodes, "importlib", _Importlib)
    stream, logger = io.StringIO(), logging.getLogger("ComfyUI-EDiT")
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        classes = pack_nodes.load_node_classes()
    finally:
        logger.removeHandler(handler)
    names = {c.GET_SCHEMA().node_id for c in classes}
    assert {"EDiTAdapterLoader", "EDiTApply"} <= names
    assert not names & {"EDiTCheckpointLoader", "EDiTCheckpointSave"}
    assert "pip install safetensors" in stream.getvalue() and "EDiTCheckpointLoader" in stream.getvalue()


def test_pack_root_is_harmless_to_import_outside_comfyui(tmp_path):
    import subprocess
    import sys

    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('edit_pack', {os.path.join(REPO, '__init__.py')!r},\n"
            f"    submodule_search_locations=[{REPO!r}])\n"
            "module = importlib.util.module_from_spec(spec); sys.modules['edit_pack'] = module\n"
            "spec.loader.exec_module(module)\n"
            "assert module.WEB_DIRECTORY == './web'\n"
            "assert not any(m == 'comfy' or m.startswith(('comfy.', 'comfy_api', 'torch')) for m in sys.modules)\n"
            "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
