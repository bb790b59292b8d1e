import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

from edit_core.adapter import (Adapter, AdapterError, adapter_from_state, init_adapter_from_teacher, load_adapter,
                               read_safetensors_metadata, save_adapter)
from edit_core.families import FamilyError, detect_teacher, teacher_attention_weights


def pixart_comfy(depth=2, c=144, alpha=False):
    sd = {"t_block.1.weight": torch.randn(6 * c, c), "x_embedder.proj.weight": torch.randn(c, 4, 2, 2)}
    for i in range(depth):
        sd[f"blocks.{i}.attn.qkv.weight"] = torch.randn(3 * c, c)
        sd[f"blocks.{i}.attn.qkv.bias"] = torch.randn(3 * c)
        sd[f"blocks.{i}.attn.proj.weight"] = torch.randn(c, c)
        sd[f"blocks.{i}.attn.proj.bias"] = torch.randn(c)
    if alpha:
        sd["ar_embedder.mlp.0.weight"] = torch.randn(c, 256)
    return sd


def pixart_diffusers_from(comfy: dict) -> dict:
    sd = {"adaln_single.linear.weight": comfy["t_block.1.weight"]}
    depth = len({k.split(".")[1] for k in comfy if k.startswith("blocks.")})
    for i in range(depth):
        for part in ("weight", "bias"):
            q, k, v = comfy[f"blocks.{i}.attn.qkv.{part}"].chunk(3)
            base = f"transformer_blocks.{i}.attn1"
            sd[f"{base}.to_q.{part}"], sd[f"{base}.to_k.{part}"], sd[f"{base}.to_v.{part}"] = q, k, v
            sd[f"{base}.to_out.0.{part}"] = comfy[f"blocks.{i}.attn.proj.{part}"]
    return sd


def sd35_comfy(depth=2, attn2=(0,)):
    c = 64 * depth
    sd = {"x_embedder.proj.weight": torch.randn(c, 16, 2, 2)}
    for i in range(depth):
        for stream in ("context_block", "x_block"):
            sd[f"joint_blocks.{i}.{stream}.attn.qkv.weight"] = torch.randn(3 * c, c)
            sd[f"joint_blocks.{i}.{stream}.attn.ln_q.weight"] = torch.randn(64)
        if i in attn2:
            sd[f"joint_blocks.{i}.x_block.attn2.qkv.weight"] = torch.randn(3 * c, c)
    return sd


@pytest.fixture
def pixart_adapter():
    return init_adapter_from_teacher(pixart_comfy(), num_heads=2)


# ---------------------------------------------------------------------------------- detection and init

def test_detects_pixart_comfy_and_diffusers_layouts_alike():
    comfy = pixart_comfy()
    a, b = detect_teacher(comfy, num_heads=2), detect_teacher(pixart_diffusers_from(comfy), num_heads=2)
    assert (a.family, a.layout, a.num_blocks, a.hidden_size, a.head_dim) == ("pixart_sigma", "comfyui", 2, 144, 72)
    assert (b.family, b.layout, b.num_blocks, b.hidden_size) == ("pixart_sigma", "diffusers", 2, 144)


def test_fused_and_split_teacher_weights_are_the_same():
    comfy = pixart_comfy()
    spec_c, spec_d = detect_teacher(comfy, num_heads=2), detect_teacher(pixart_diffusers_from(comfy), num_heads=2)
    fused = teacher_attention_weights({"model.diffusion_model." + k: v for k, v in comfy.items()}, spec_c, 1)
    split = teacher_attention_weights(pixart_diffusers_from(comfy), spec_d, 1)
    assert fused.keys() == split.keys() == {f"{n}.{p}" for n in ("to_q", "to_k", "to_v", "to_out")
                                            for p in ("weight", "bias")}
    assert all(torch.equal(fused[k], split[k]) for k in fused)


def test_pixart_heads_default_to_72_wide():
    assert detect_teacher(pixart_comfy(c=1152, depth=1)).num_heads == 16


def test_pixart_heads_unknown_is_a_clear_error():
    with pytest.raises(FamilyError, match="pass num_heads"):
        detect_teacher(pixart_comfy(c=64))


def test_detects_sd35_medium_with_dual_attention():
    spec = detect_teacher(sd35_comfy())
    assert (spec.family, spec.num_blocks, spec.hidden_size, spec.num_heads, spec.head_dim, spec.qk_norm,
            spec.attn2_blocks) == ("sd35_medium", 2, 128, 2, 64, "rms", [0])


def test_unknown_models_and_unexpected_families_are_refused():
    with pytest.raises(FamilyError, match="not a model this pack converts"):
        detect_teacher({"input_blocks.0.0.weight": torch.zeros(1)})
    with pytest.raises(FamilyError, match="not PixArt-Sigma"):
        detect_teacher(pixart_comfy(alpha=True), family="pixart_sigma", num_heads=2)
    with pytest.raises(FamilyError, match="not SD3.5-Medium"):
        detect_teacher(pixart_comfy(), family="sd35_medium", num_heads=2)


def test_init_adapter_is_deterministic_and_host_layout_independent():
    comfy = pixart_comfy()
    a = init_adapter_from_teacher(comfy, num_heads=2, seed=3)
    b = init_adapter_from_teacher(pixart_diffusers_from(comfy), num_heads=2, seed=3)
    assert a.tensors.keys() == b.tensors.keys()
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert a.config.to_metadata() == b.config.to_metadata()


def test_init_adapter_layout_for_sd35_with_and_without_attn2():
    with_attn2 = init_adapter_from_teacher(sd35_comfy())
    assert with_attn2.config.layers() == [(0, "attn"), (1, "attn"), (0, "attn2")]
    assert "blocks.0.attn2.key_compressor.conv.weight" in with_attn2.tensors
    without = init_adapter_from_teacher(sd35_comfy(), convert_attn2=False)
    assert without.config.attn2_blocks == [] and not any(".attn2." in k for k in without.tensors)


def test_init_adapter_starts_at_identity_conv_fusion(pixart_adapter):
    assert pixart_adapter.tensors["blocks.0.attn.conv_fusion.conv_out.weight"].abs().max() == 0
    blur = pixart_adapter.tensors["blocks.1.attn.key_compressor.conv.weight"]
    assert blur.shape == (144, 1, 3, 3) and torch.allclose(blur.sum((1, 2, 3)), torch.ones(144))


# ---------------------------------------------------------------------------------- round trip

def test_save_load_round_trip(tmp_path, pixart_adapter):
    path = tmp_path / "a.safetensors"
    save_adapter(pixart_adapter, str(path))
    loaded = load_adapter(str(path))
    assert loaded.config == pixart_adapter.config
    assert all(torch.equal(loaded.tensors[k], v) for k, v in pixart_adapter.tensors.items())
    layer = loaded.build_layer(1, "attn")
    assert torch.equal(layer.key_compressor.conv.weight, pixart_adapter.tensors["blocks.1.attn.key_compressor.conv.weight"])


def test_finetuned_tensors_round_trip(tmp_path, pixart_adapter):
    pixart_adapter.tensors["blocks.0.attn.to_q.weight"] = torch.randn(144, 144)
    save_adapter(pixart_adapter, str(tmp_path / "f.safetensors"))
    loaded = load_adapter(str(tmp_path / "f.safetensors"))
    assert set(loaded.finetuned(0, "attn")) == {"to_q.weight"} and loaded.finetuned(1, "attn") == {}


def test_compatibility_check_names_both_models(pixart_adapter):
    spec = detect_teacher(sd35_comfy())
    with pytest.raises(AdapterError, match=r"PixArt-Sigma \(2 blocks, width 144\).*SD3.5-Medium \(2 blocks, width 128\)"):
        pixart_adapter.check_compatible(spec)
    deeper = detect_teacher(pixart_comfy(depth=3), num_heads=2)
    with pytest.raises(AdapterError, match="it has 2 blocks, this model has 3"):
        pixart_adapter.check_compatible(deeper)


# ---------------------------------------------------------------------------------- bad files

def _save(tmp_path, adapter: Adapter, name="bad.safetensors", metadata=None, tensors=None):
    path = tmp_path / name
    save_file(tensors if tensors is not None else adapter.tensors, str(path),
              metadata=metadata if metadata is not None else adapter.config.to_metadata())
    return str(path)


def _error(path, **kw) -> str:
    with pytest.raises(AdapterError) as info:
        load_adapter(path, **kw)
    assert path in str(info.value)
    return str(info.value)


def test_not_safetensors(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"hello, this is not a tensor file at all" * 3)
    assert "not a safetensors file" in _error(str(path))


def test_pickle_is_refused_without_unpickling(tmp_path):
    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("the file was unpickled",))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(Boom(), protocol=4))
    assert "pickle" in _error(str(path))
    zipped = tmp_path / "model.safetensors"
    torch.save({"w": torch.zeros(2)}, str(zipped))  # zip-based torch checkpoint
    assert "never unpickled" in _error(str(zipped))


def test_truncated_file(tmp_path, pixart_adapter):
    path = _save(tmp_path, pixart_adapter)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    assert "truncated" in _error(path)
    open(path, "wb").write(struct.pack("<Q", 10_000) + b"{}")
    assert "truncated" in _error(path)


def test_missing_metadata(tmp_path, pixart_adapter):
    path = _save(tmp_path, pixart_adapter, metadata={"format": "edit-adapter"})
    msg = _error(path)
    assert "missing metadata" in msg and "family" in msg and "num_blocks" in msg


def test_wrong_family(tmp_path, pixart_adapter):
    path = _save(tmp_path, pixart_adapter)
    assert "not SD3.5-Medium" in _error(path, expect_family="sd35_medium")
    md = pixart_adapter.config.to_metadata() | {"family": "flux_dev"}
    assert "unknown model family 'flux_dev'" in _error(_save(tmp_path, pixart_adapter, "f.safetensors", metadata=md))


def test_wrong_shapes(tmp_path, pixart_adapter):
    tensors = dict(pixart_adapter.tensors)
    tensors["blocks.1.attn.conv_fusion.conv_in.weight"] = torch.zeros(36, 144, 1, 1)
    msg = _error(_save(tmp_path, pixart_adapter, tensors=tensors))
    assert "blocks.1.attn.conv_fusion.conv_in.weight has shape [36, 144, 1, 1], expected [36, 144, 3, 3]" in msg


def test_missing_and_unexpected_tensors(tmp_path, pixart_adapter):
    tensors = dict(pixart_adapter.tensors)
    del tensors["blocks.0.attn.value_compressor.conv.bias"]
    tensors["blocks.0.attn.mystery"] = torch.zeros(1)
    msg = _error(_save(tmp_path, pixart_adapter, tensors=tensors))
    assert "missing 1 tensors: blocks.0.attn.value_compressor.conv.bias" in msg
    assert "unexpected tensor blocks.0.attn.mystery" in msg


def test_nan_and_inf_weights(tmp_path, pixart_adapter):
    tensors = dict(pixart_adapter.tensors)
    tensors["blocks.0.attn.conv_fusion.norm.weight"] = tensors["blocks.0.attn.conv_fusion.norm.weight"].clone()
    tensors["blocks.0.attn.conv_fusion.norm.weight"][3] = float("nan")
    tensors["blocks.1.attn.key_compressor.conv.bias"] = torch.full((144,), float("inf"))
    msg = _error(_save(tmp_path, pixart_adapter, tensors=tensors))
    assert "blocks.0.attn.conv_fusion.norm.weight has 1 NaN/inf" in msg
    assert "blocks.1.attn.key_compressor.conv.bias has 144 NaN/inf" in msg


def test_bad_metadata_values(tmp_path, pixart_adapter):
    md = pixart_adapter.config.to_metadata() | {"num_blocks": "two", "converted_blocks": json.dumps([0, 9])}
    msg = _error(_save(tmp_path, pixart_adapter, metadata=md))
    assert "'num_blocks' is not a positive integer" in msg


def test_missing_file(tmp_path):
    assert "no such file" in _error(str(tmp_path / "nope.safetensors"))


def test_save_into_missing_folder_is_clear(tmp_path, pixart_adapter):
    with pytest.raises(AdapterError, match="does not exist"):
        save_adapter(pixart_adapter, str(tmp_path / "no" / "dir" / "a.safetensors"))


def test_adapter_from_state_validates_like_a_file(pixart_adapter):
    md = pixart_adapter.config.to_metadata()
    rebuilt = adapter_from_state(pixart_adapter.tensors, md, "ckpt.safetensors")
    assert rebuilt.config == pixart_adapter.config and rebuilt.source == "ckpt.safetensors"
    tensors = dict(pixart_adapter.tensors)
    tensors.pop("blocks.0.attn.key_compressor.conv.weight")
    with pytest.raises(AdapterError, match="ckpt.safetensors.*\\n.*missing 1 tensors"):
        adapter_from_state(tensors, md, "ckpt.safetensors")


def test_read_metadata_never_unpickles(tmp_path, pixart_adapter):
    path = _save(tmp_path, pixart_adapter)
    assert read_safetensors_metadata(path)["family"] == "pixart_sigma"
    evil = tmp_path / "e.safetensors"
    evil.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with pytest.raises(AdapterError, match="pickle"):
        read_safetensors_metadata(str(evil))
