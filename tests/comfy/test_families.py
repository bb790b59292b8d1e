"""Every model family of the registry (``edit_core/families``) in a real ComfyUI, on tiny models of the family's
own layout loaded by ComfyUI's UNETLoader: PixArt-Σ, PixArt-α (micro-conditions), SD3.5-Medium (qk-norm + attn2),
SD3.5-Large (qk-norm, no attn2), SD3-Medium (no qk-norm, no attn2).

Per family: (1) ComfyUI loads the expected kind of model and the pack describes it as the family; (2) Apply EDiT
converts every planned layer, no image↔image softmax is left, and the shared MODEL is untouched; (3) the patched
prediction equals the float64 edit_core/diffusers reference; (4) the original MODEL samples bit-identically after
a patched clone ran; (5) an adapter of a sibling family is a clear node error naming both families, and the next
prompt runs; (6) UNETLoader → EDiT adapter → Apply EDiT → [Tiled Diffusion (EDiT)] → KSampler → VAEDecode →
SaveImage through ComfyUI's executor. Plus: the EDiT checkpoint round trip and a 2-step Distill EDiT Adapter run
on new families."""

import os

import pytest

if not os.environ.get("COMFYUI_DIR"):
    pytest.skip("COMFYUI_DIR is not set: tests/comfy need a real ComfyUI (see README)", allow_module_level=True)

import shutil  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tests.comfy.harness import conditioning, edit_reference_model, reference_output  # noqa: E402
from tests.comfy.test_no_image_softmax import _image_image, attention_calls  # noqa: E402,F401  (fixture)
from tests.comfy.test_oracle import TOLERANCE  # noqa: E402
from tests.util import rel_rmse  # noqa: E402


# What each tiny model is, and what ComfyUI and the registry must make of it.
FAMILIES = {
    "pixart_sigma": dict(fixture="pixart", title="PixArt-Sigma", comfy_config="PixArtSigma", blocks=1, heads=16,
                         width=1152, attn2=[], qk_norm=None, micro=False),
    "pixart_alpha": dict(fixture="pixart_alpha", title="PixArt-Alpha", comfy_config="PixArtAlpha", blocks=1,
                         heads=16, width=1152, attn2=[], qk_norm=None, micro=True),
    "sd35_medium": dict(fixture="sd3", title="SD3.5-Medium", comfy_config="SD3", blocks=2, heads=2, width=128,
                        attn2=[0], qk_norm="rms"),
    "sd35_large": dict(fixture="sd35_large", title="SD3.5-Large", comfy_config="SD3", blocks=2, heads=2, width=128,
                       attn2=[], qk_norm="rms"),
    "sd3_medium": dict(fixture="sd3_medium", title="SD3-Medium", comfy_config="SD3", blocks=2, heads=2, width=128,
                       attn2=[], qk_norm=None),
}
NEW_FAMILIES = ["pixart_alpha", "sd35_large", "sd3_medium"]
TEXT_TOKENS = 20
# Latents. ComfyUI's PixArt derives its position-embedding scale from (H + W) / 2, which must be 33..95 latent px
# to match the tiny diffusers model's (interpolation 1, base 32 patches); a flat 16×52 latent (8×26 tokens) keeps
# the 1152-wide PixArt cheap. ODD_LATENT: odd token grids.
LATENT = {"pixart": (1, 4, 16, 52), "mmdit": (1, 16, 24, 32)}
ODD_LATENT = {"pixart": (1, 4, 18, 50), "mmdit": (1, 16, 20, 30)}
# Executor graphs (pixels, height × width) and their Tiled Diffusion tiles (tiles: PixArt's minimum is 34 latent
# px = 272 px): PixArt 272×320 → two 272 px tiles, SD3 128×128 → four 96 px tiles. PixArt samples without CFG.
GRAPH_PX = {"pixart": (272, 320), "mmdit": (128, 128)}
TILE_PX = {"pixart": 272, "mmdit": 96}
TILES = {"pixart": 2, "mmdit": 4}
GRAPH_CFG = {"pixart": 1.0, "mmdit": 2.0}
VAE_CHANNELS = {"pixart": 4, "mmdit": 16}


def is_pixart(family: str) -> bool:
    return family.startswith("pixart")


def arch(family: str) -> str:
    return "pixart" if is_pixart(family) else "mmdit"


def cond_kind(family: str) -> str:
    """EDiTTestConditioning's ``family`` choice (and ``harness.conditioning``'s)."""
    return "pixart" if is_pixart(family) else "sd3"


def planned_layers(family: str) -> list:
    facts = FAMILIES[family]
    return sorted([(b, "attn") for b in range(facts["blocks"])] + [(b, "attn2") for b in facts["attn2"]])


pytestmark = pytest.mark.usefixtures("one_thread")  # (tests/comfy/conftest.py)


@pytest.fixture(params=list(FAMILIES))
def family(request):
    return request.param


@pytest.fixture(params=NEW_FAMILIES)
def new_family(request):
    return request.param


@pytest.fixture
def tiny(request, family):
    return request.getfixturevalue(FAMILIES[family]["fixture"])


def _tiny_of(request, family):
    return request.getfixturevalue(FAMILIES[family]["fixture"])


def _latent(family):
    return torch.zeros(LATENT[arch(family)])


def _snapshot(model):
    return (dict(model.object_patches), {k: list(v) for k, v in model.patches.items()},
            dict(model.additional_models), model.patches_uuid, dict(model.model_options.get("transformer_options", {})),
            model.get_attachment("edit"))


# ---------------------------------------------------------------------------------------------- (1) detection

def test_comfyui_loads_the_family_and_the_pack_describes_it(comfy_env, family, tiny):
    from edit_core.families import detect_from_config, detect_teacher

    facts = FAMILIES[family]
    spec, host = comfy_env.pack("nodes.hosts").describe_model(tiny.model)
    assert spec.family == family, spec.describe()
    assert spec.title == facts["title"] and spec.layout == "comfyui"
    assert (spec.num_blocks, spec.num_heads, spec.hidden_size) == (facts["blocks"], facts["heads"], facts["width"])
    assert spec.attn2_blocks == facts["attn2"] and spec.qk_norm == facts["qk_norm"]
    assert host.name == ("PixArtMS" if is_pixart(family) else "MMDiT")

    model_config = tiny.model.model.model_config
    assert type(model_config).__name__ == facts["comfy_config"]
    diffusion_model = tiny.model.model.diffusion_model
    if is_pixart(family):
        assert type(tiny.model.model).__name__ == "PixArt"
        assert model_config.unet_config["micro_condition"] is facts["micro"]
        assert diffusion_model.micro_conditioning is facts["micro"]
        assert hasattr(diffusion_model, "csize_embedder") is facts["micro"]
    else:
        assert type(tiny.model.model).__name__ == "SD3"
        assert model_config.unet_config.get("qk_norm") == facts["qk_norm"]
        assert model_config.unet_config.get("x_block_self_attn_layers", []) == facts["attn2"]
        assert [b.x_block.x_block_self_attn for b in diffusion_model.joint_blocks] == \
            [b in facts["attn2"] for b in range(facts["blocks"])]

    # the file (diffusers keys), its config and the adapters made from it say the same family
    assert detect_teacher(tiny.state_dict).family == family
    assert detect_from_config(dict(tiny.diffusers.config, _class_name=type(tiny.diffusers).__name__)).family == family
    assert tiny.adapter.config.family == family and tiny.finetuned_adapter.config.family == family
    assert tiny.adapter.config.attn2_blocks == facts["attn2"]


# ---------------------------------------------------------------------------------------------- (2) patching

def test_apply_converts_every_planned_layer_and_no_image_softmax_remains(comfy_env, family, tiny, apply_edit,
                                                                        attention_calls):
    from edit_core.families import get_family

    hosts_base = comfy_env.pack("nodes.hosts.base")
    facts = FAMILIES[family]
    latent = _latent(family)
    num_image = (latent.shape[-2] // 2) * (latent.shape[-1] // 2)
    positive = conditioning(cond_kind(family), seed=1, length=TEXT_TOKENS)

    comfy_env.predict(tiny.model, positive, latent)
    teacher_softmax = _image_image(attention_calls, num_image)
    assert len(teacher_softmax) == facts["blocks"] + len(facts["attn2"])  # the instrumentation sees the teacher
    attention_calls.clear()

    before = _snapshot(tiny.model)
    patched = apply_edit(tiny.model, tiny.adapter)
    assert _snapshot(tiny.model) == before  # the shared MODEL is untouched
    applied = patched.get_attachment("edit")
    assert applied.spec.family == family and applied.config.family == family
    assert sorted(applied.converted) == planned_layers(family)

    units = [u for u in patched.object_patches.values() if isinstance(u, hosts_base.AttentionSlots)]
    assert sorted(u.block for u in units) == list(range(facts["blocks"]))
    running = {(u.block, slot): module for u in units for slot, module in u.slots.items()}
    assert running == applied.converted  # every slot of every patched unit runs its converted module
    assert all(not type(m).__name__.startswith("Softmax") for m in running.values())
    (adapter_patcher,) = patched.get_additional_models_with_key("edit")
    assert sorted(adapter_patcher.model.layers) == sorted(f"{b}_{s}" for b, s in planned_layers(family))

    comfy_env.predict(patched, positive, latent)
    assert attention_calls, "no softmax call was seen at all (text rows / cross-attention stay softmax)"
    assert _image_image(attention_calls, num_image) == []
    assert (num_image, TEXT_TOKENS) in attention_calls  # image rows → text keys (PixArt: cross-attention)
    if get_family(family).joint:
        assert (TEXT_TOKENS, TEXT_TOKENS + num_image) in attention_calls  # text rows → all keys
    assert _snapshot(tiny.model) == before


# ---------------------------------------------------------------------------------------------- (3) oracle

def _reference(env, tiny, call, adapter, *, eta=None, layers=None):
    reference, grid_box = edit_reference_model(tiny.diffusers, adapter, eta=eta, layers=layers)
    return reference_output(reference, grid_box, tiny.family, call,
                            model_sampling=tiny.model.get_model_object("model_sampling"))


def _check(tiny, what, actual, expected):
    error = rel_rmse(actual, expected)
    print(f"{tiny.family} {what}: rel-RMSE vs float64 reference {error:.2e}")
    assert error <= TOLERANCE, f"{tiny.family} {what}: rel-RMSE {error:.2e} against the float64 diffusers reference"


def test_teacher_and_patched_model_match_float64_references(comfy_env, family, tiny, apply_edit):
    """The teacher: ComfyUI's unpatched model equals the float64 diffusers model (PixArt-α: ComfyUI's size
    conditioning as diffusers' resolution / aspect ratio). The patched clone equals the float64 diffusers model
    whose attention edit_core computes with the adapter's layers."""
    latent = _latent(family)
    positive = conditioning(cond_kind(family), seed=3)
    teacher = comfy_env.predict(tiny.model, positive, latent, seed=5)
    if FAMILIES[family].get("micro"):
        h, w = latent.shape[-2:]
        assert teacher["kwargs"]["c_size"].tolist() == [[8.0 * h, 8.0 * w]]
        assert torch.allclose(teacher["kwargs"]["c_ar"], torch.tensor([[h / w]]))
    _check(tiny, "teacher", teacher["output"], _reference(comfy_env, tiny, teacher, tiny.adapter, layers=[]))

    patched = comfy_env.predict(apply_edit(tiny.model, tiny.adapter), positive, latent, seed=5)
    assert torch.equal(patched["x"], teacher["x"]) and torch.equal(patched["sigma"], teacher["sigma"])
    expected = _reference(comfy_env, tiny, patched, tiny.adapter)
    _check(tiny, "EDiT", patched["output"], expected)
    assert rel_rmse(teacher["output"], expected) > 10 * TOLERANCE  # the attention really changed


# η is MM-EDiT's (joint attention) choice; PixArt's EDiT has none
FINETUNED = [("pixart_alpha", "adapter default"), ("sd35_large", "adapter default"), ("sd35_large", "exact"),
             ("sd3_medium", "adapter default"), ("sd3_medium", "exact")]


@pytest.mark.parametrize("new_family,eta", FINETUNED)
def test_finetuned_adapter_matches_edit_core_reference(comfy_env, request, new_family, apply_edit, eta):
    tiny = _tiny_of(request, new_family)
    eta_choice = None if eta == "adapter default" else eta
    patched = apply_edit(tiny.model, tiny.finetuned_adapter, eta=eta)
    applied = patched.get_attachment("edit")
    assert applied.finetuned_keys, "the fine-tuned adapter added no weight patches"
    assert applied.config.eta == (eta_choice or tiny.finetuned_adapter.config.eta)
    call = comfy_env.predict(patched, conditioning(cond_kind(new_family), seed=3),
                             torch.zeros(ODD_LATENT[arch(new_family)]), seed=5)
    _check(tiny, f"fine-tuned, eta {eta}", call["output"],
           _reference(comfy_env, tiny, call, tiny.finetuned_adapter, eta=eta_choice))


# ---------------------------------------------------------------------------------------------- (4) unpatch

def test_original_model_samples_bit_identically_after_a_patched_clone(comfy_env, family, tiny, apply_edit):
    kind = cond_kind(family)
    pos, neg = conditioning(kind, seed=1), conditioning(kind, seed=2)

    def sample(model):
        return comfy_env.sample(model, pos, neg, _latent(family), steps=1, seed=0, cfg=GRAPH_CFG[arch(family)])

    before = sample(tiny.model)
    patched = sample(apply_edit(tiny.model, tiny.finetuned_adapter))
    after = sample(tiny.model)
    assert not torch.equal(before, patched)
    assert torch.equal(before, after)
    diffusion_model = tiny.model.model.diffusion_model
    if is_pixart(family):
        originals = [type(b.attn).__name__ for b in diffusion_model.blocks]
    else:
        originals = [type(b).__name__ for b in diffusion_model.joint_blocks]
    assert originals and not any(name.startswith("EDiT") for name in originals), originals


# ---------------------------------------------------------------------------------------------- (5) mismatch

def _unet(filename):
    return {"class_type": "UNETLoader", "inputs": {"unet_name": filename, "weight_dtype": "default"}}


def _apply_and_sample(tiny, adapter_file, prefix):
    """UNETLoader → adapter → Apply EDiT → KSampler (1 step, small latent) → SaveLatent."""
    family = tiny.family
    h, w = LATENT[arch(family)][-2:]
    return {
        "model": _unet(tiny.filename),
        "adapter": {"class_type": "EDiTAdapterLoader", "inputs": {"adapter_name": adapter_file}},
        "edit": {"class_type": "EDiTApply", "inputs": {"model": ["model", 0], "adapter": ["adapter", 0],
                                                       "backend": "auto", "eta": "adapter default",
                                                       "convert_attn2": "adapter default"}},
        "pos": {"class_type": "EDiTTestConditioning", "inputs": {"family": cond_kind(family), "seed": 1,
                                                                 "length": 12}},
        "latent": {"class_type": "EmptySD3LatentImage" if not is_pixart(family) else "EmptyLatentImage",
                   "inputs": {"width": 8 * w, "height": 8 * h, "batch_size": 1}},
        "sample": {"class_type": "KSampler", "inputs": {
            "model": ["edit", 0], "seed": 0, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
            "positive": ["pos", 0], "negative": ["pos", 0], "latent_image": ["latent", 0], "denoise": 1.0}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sample", 0], "filename_prefix": prefix}},
    }


MISMATCHES = [("sd3_medium", "sd35_large"), ("sd35_large", "sd3_medium"), ("sd35_large", "sd35_medium"),
              ("sd35_medium", "sd35_large"), ("pixart_alpha", "pixart_sigma"), ("pixart_sigma", "pixart_alpha")]


@pytest.mark.parametrize("model_family,adapter_family", MISMATCHES, ids=[f"{a}-adapter-on-{m}" for m, a in MISMATCHES])
def test_sibling_family_adapter_is_a_clear_error_and_the_next_prompt_runs(comfy_env, request, model_family,
                                                                         adapter_family):
    model, other = _tiny_of(request, model_family), _tiny_of(request, adapter_family)
    result = comfy_env.run_prompt(_apply_and_sample(model, other.adapter_file, f"edit_mismatch_{model_family}"))
    assert result.valid and not result.success
    (error,) = result.errors
    assert error["node_type"] == "EDiTApply"
    message = error["exception_message"]
    m, a = FAMILIES[model_family], FAMILIES[adapter_family]
    assert f"it is for {a['title']} ({a['blocks']} blocks, width {a['width']})" in message, message
    assert f"this model is {m['title']} ({m['blocks']} blocks, width {m['width']})" in message, message
    assert other.adapter_file in message

    good = comfy_env.run_prompt(_apply_and_sample(model, model.adapter_file, f"edit_mismatch_{model_family}"))
    assert good.success, good.error_text()


# ---------------------------------------------------------------------------------------------- (6) executor

def graph(tiny, vaes, *, tiled: bool, prefix: str) -> dict:
    """UNETLoader → EDiTAdapterLoader → EDiTApply → [EDiTTiledDiffusion] → KSampler (1 step) → VAEDecode (random
    TAESD) → SaveImage, conditioning from EDiTTestConditioning."""
    family = tiny.family
    a = arch(family)
    height, width = GRAPH_PX[a]
    prompt = {
        "model": _unet(tiny.filename),
        "adapter": {"class_type": "EDiTAdapterLoader", "inputs": {"adapter_name": tiny.adapter_file}},
        "edit": {"class_type": "EDiTApply", "inputs": {"model": ["model", 0], "adapter": ["adapter", 0],
                                                       "backend": "auto", "eta": "adapter default",
                                                       "convert_attn2": "adapter default"}},
        "pos": {"class_type": "EDiTTestConditioning", "inputs": {"family": cond_kind(family), "seed": 1,
                                                                 "length": 20}},
        "neg": {"class_type": "EDiTTestConditioning", "inputs": {"family": cond_kind(family), "seed": 2,
                                                                 "length": 20}},
        "latent": {"class_type": "EmptyLatentImage" if is_pixart(family) else "EmptySD3LatentImage",
                   "inputs": {"width": width, "height": height, "batch_size": 1}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": vaes[VAE_CHANNELS[a]]}},
        "sample": {"class_type": "KSampler", "inputs": {
            "model": ["edit", 0], "seed": 0, "steps": 1, "cfg": GRAPH_CFG[a], "sampler_name": "euler",
            "scheduler": "simple", "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
            "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["vae", 0]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": prefix}},
    }
    if tiled:
        tile = TILE_PX[a]
        prompt["tiled"] = {"class_type": "EDiTTiledDiffusion", "inputs": {
            "model": ["edit", 0], "tile_width": tile, "tile_height": tile, "overlap": 16, "tile_batch_size": 2,
            "blend": "feathered"}}
        prompt["sample"]["inputs"]["model"] = ["tiled", 0]
    return prompt


def _saved_image(env, result) -> np.ndarray:
    from PIL import Image

    (images,) = [out["images"] for out in result.outputs.values() if "images" in out]
    path = os.path.join(env.path("output"), images[0]["subfolder"], images[0]["filename"])
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture
def edit_grids(comfy_env, monkeypatch):
    """Token grids the converted attentions run on (PixArt self-attention, MMDiT joint attention), and the
    Tiled Diffusion tile plans, recorded while a prompt runs."""
    pixart_host = comfy_env.pack("nodes.hosts.pixart")
    mmdit_host = comfy_env.pack("nodes.hosts.mmdit")
    tiling = comfy_env.pack("edit_core.tiling")
    seen = {"grids": [], "tiles": []}

    pixart_forward = pixart_host.EDiTPixArtSelfAttention.forward
    joint_forward = mmdit_host.EDiTJointAttention.forward
    tiled_apply = tiling.tiled_apply

    def pixart(self, x, mask=None, HW=None, block_id=None, **kwargs):
        seen["grids"].append(pixart_host.pixart_token_grid(x.shape[1], HW, self.patch_size))
        return pixart_forward(self, x, mask=mask, HW=HW, block_id=block_id, **kwargs)

    def joint(self, x_in, context_in, *, grid, **kwargs):
        seen["grids"].append(tuple(grid))
        return joint_forward(self, x_in, context_in, grid=grid, **kwargs)

    def recording_tiled_apply(run, x_in, tiles, **kwargs):
        seen["tiles"].append((tuple(x_in.shape[-2:]), [(t.h, t.w) for t in tiles]))
        return tiled_apply(run, x_in, tiles, **kwargs)

    monkeypatch.setattr(pixart_host.EDiTPixArtSelfAttention, "forward", pixart)
    monkeypatch.setattr(mmdit_host.EDiTJointAttention, "forward", joint)
    monkeypatch.setattr(tiling, "tiled_apply", recording_tiled_apply)
    return seen


def test_graph_with_and_without_tiled_diffusion_runs_to_saved_images(comfy_env, request, new_family, vaes,
                                                                     edit_grids):
    """(PixArt-Σ's and SD3.5-Medium's graphs run in test_workflow.py and test_tiled_diffusion.py.)"""
    tiny = _tiny_of(request, new_family)
    a = arch(new_family)
    height, width = (px // 8 for px in GRAPH_PX[a])

    plain = comfy_env.run_prompt(graph(tiny, vaes, tiled=False, prefix=f"edit_family_{new_family}"))
    assert plain.valid and plain.success, plain.error_text()
    plain_image = _saved_image(comfy_env, plain)
    assert plain_image.shape == (*GRAPH_PX[a], 3)
    assert edit_grids["grids"] and set(edit_grids["grids"]) == {(height // 2, width // 2)}  # EDiT, whole latent
    assert edit_grids["tiles"] == []
    edit_grids["grids"].clear()

    tiled = comfy_env.run_prompt(graph(tiny, vaes, tiled=True, prefix=f"edit_family_{new_family}_tiled"))
    assert tiled.valid and tiled.success, tiled.error_text()
    tiled_image = _saved_image(comfy_env, tiled)
    assert tiled_image.shape == plain_image.shape
    tile = TILE_PX[a] // 8
    assert edit_grids["tiles"], "Tiled Diffusion (EDiT) did not run"
    for shape, tiles in edit_grids["tiles"]:
        assert shape == (height, width) and len(tiles) == TILES[a] and set(tiles) == {(tile, tile)}
    assert set(edit_grids["grids"]) == {(tile // 2, tile // 2)}  # EDiT ran at tile size only
    assert not np.array_equal(tiled_image, plain_image)  # tiles see less context: the prediction changed


# ---------------------------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("ckpt_family", ["sd35_large", "pixart_alpha"])
def test_edit_checkpoint_round_trip(comfy_env, request, ckpt_family, apply_edit):
    from comfy.utils import load_torch_file

    tiny = _tiny_of(request, ckpt_family)
    facts = FAMILIES[ckpt_family]
    prefix = f"diffusion_models/edit_family_ckpt_{ckpt_family}"
    eta = "adapter default" if is_pixart(ckpt_family) else "exact"
    prompt = {
        "model": _unet(tiny.filename),
        "adapter": {"class_type": "EDiTAdapterLoader", "inputs": {"adapter_name": tiny.finetuned_adapter_file}},
        "edit": {"class_type": "EDiTApply", "inputs": {"model": ["model", 0], "adapter": ["adapter", 0],
                                                       "backend": "auto", "eta": eta,
                                                       "convert_attn2": "adapter default"}},
        "save": {"class_type": "EDiTCheckpointSave", "inputs": {"model": ["edit", 0], "filename_prefix": prefix}},
    }
    result = comfy_env.run_prompt(prompt)
    assert result.valid and result.success, result.error_text()
    saved = comfy_env.path("output", f"{prefix}_00001_.safetensors")
    tensors, metadata = load_torch_file(saved, return_metadata=True)
    assert metadata["edit_checkpoint_format"] == "1"
    assert metadata["edit_adapter.family"] == ckpt_family
    assert metadata["edit_adapter.converted_blocks"] == str(list(range(facts["blocks"])))
    model_keys = "model.diffusion_model.blocks." if is_pixart(ckpt_family) else "model.diffusion_model.joint_blocks."
    assert any(k.startswith(model_keys) for k in tensors)
    if facts.get("micro"):  # the merged teacher keeps PixArt-α's micro-condition embedders
        assert "model.diffusion_model.ar_embedder.mlp.0.weight" in tensors
    assert any(k.startswith("edit_adapter.") for k in tensors)

    name = f"edit_family_ckpt_{ckpt_family}.safetensors"
    shutil.copy(saved, comfy_env.path("models", "diffusion_models", name))
    (loaded,) = comfy_env.node("EDiTCheckpointLoader").execute(ckpt_name=name, weight_dtype="default",
                                                               backend="auto").args
    applied = loaded.get_attachment("edit")
    assert applied is not None and applied.spec.family == ckpt_family and applied.config.family == ckpt_family
    assert type(loaded.model.model_config).__name__ == facts["comfy_config"]
    original = apply_edit(tiny.model, tiny.finetuned_adapter, eta=eta)
    kind = cond_kind(ckpt_family)
    pos, neg = conditioning(kind, seed=1), conditioning(kind, seed=2)
    a = comfy_env.sample(loaded, pos, neg, _latent(ckpt_family), steps=1)
    b = comfy_env.sample(original, pos, neg, _latent(ckpt_family), steps=1)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # a plain Load Diffusion Model reads the file as the merged (fine-tuned) teacher of the same family
    (plain,) = comfy_env.node("UNETLoader")().load_unet(name, "default")
    spec, _ = comfy_env.pack("nodes.hosts").describe_model(plain)
    assert spec.family == ckpt_family and plain.get_attachment("edit") is None


# ---------------------------------------------------------------------------------------------- distillation

@pytest.mark.parametrize("distill_family", ["sd3_medium", "pixart_alpha"])
def test_distill_node_runs_two_steps_and_saves_an_adapter_of_the_family(comfy_env, request, distill_family):
    from edit_core.adapter import load_adapter

    tiny = _tiny_of(request, distill_family)
    facts = FAMILIES[distill_family]
    width, height = (416, 128) if is_pixart(distill_family) else (128, 128)  # PixArt: (H + W) / 2 > 32 latent px
    save_name = f"families/distill_{distill_family}"
    prompt = {
        "unet": _unet(tiny.filename),
        "pos": {"class_type": "EDiTTestConditioning", "inputs": {"family": cond_kind(distill_family), "seed": 1,
                                                                 "length": 8}},
        "distill": {"class_type": "EDiTDistill", "inputs": {
            "model": ["unet", 0], "positive": ["pos", 0], "width": width, "height": height, "steps": 2,
            "learning_rate": 1e-3, "batch_size": 1, "samples_per_prompt": 1, "teacher_steps": 1, "cfg": 1.0,
            "seed": 0, "save_name": save_name, "reduction": 4, "backend": "auto"}},
    }
    path = comfy_env.path("models", "edit", f"{save_name}.safetensors")
    assert not os.path.exists(path)
    result = comfy_env.run_prompt(prompt)
    assert result.valid and result.success, result.error_text()
    adapter = load_adapter(path)
    assert adapter.config.family == distill_family
    assert adapter.config.num_blocks == facts["blocks"] and adapter.config.hidden_size == facts["width"]
    assert adapter.config.attn2_blocks == facts["attn2"]
    assert adapter.config.training["steps"] == 2 and adapter.config.training["host"] == "ComfyUI"
    assert facts["title"] in adapter.config.training["teacher"]
    # it trained: the adapter differs from the one distillation starts from
    from edit_core.adapter import init_adapter_from_teacher

    start = init_adapter_from_teacher(tiny.state_dict, distill_family, reduction=4, seed=0)
    finetuned = {f"blocks.{b}.{s}.{k}" for b, s in adapter.config.layers() for k in adapter.finetuned(b, s)}
    assert finetuned and adapter.tensors.keys() - finetuned == start.tensors.keys()  # (train_projections: default)
    assert any(not torch.equal(adapter.tensors[k], start.tensors[k]) for k in start.tensors)
    # and it applies to its teacher
    (patched,) = comfy_env.node("EDiTApply").execute(model=tiny.model, adapter=adapter)
    assert patched.get_attachment("edit").config.family == distill_family
