"""Tiled Diffusion (EDiT) inside a real ComfyUI (the shared ``comfy_env``, pack installed as a custom node):
a tiny SD3 whose positional embedding stops at 16 patches, the shared tiny SD3.5 with EDiT, a tiny PixArt."""

import os

import pytest

if not os.environ.get("COMFYUI_DIR"):
    pytest.skip("COMFYUI_DIR is not set: tests/comfy need a real ComfyUI (see README)", allow_module_level=True)

import torch  # noqa: E402

from tests.comfy.harness import conditioning  # noqa: E402

CAP = 16  # the capped SD3's pos_embed_max_size in patches: latents up to 32 latent px per side


@pytest.fixture(scope="module")
def td(comfy_env):
    """nodes/tiled_diffusion.py as ComfyUI loaded the pack."""
    return comfy_env.pack("nodes.tiled_diffusion")


@pytest.fixture(scope="module")
def tiling(comfy_env):
    return comfy_env.pack("edit_core.tiling")


@pytest.fixture(scope="module")
def sd3_capped(comfy_env):
    """A 2-layer SD3.5-style MMDiT (dual attention in layer 0, RMS qk-norm) with a 16-patch pos-embed cap."""
    from diffusers import SD3Transformer2DModel
    from safetensors.torch import save_file
    import comfy.sd

    torch.manual_seed(0)
    model = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                                  attention_head_dim=64, num_attention_heads=2, joint_attention_dim=4096,
                                  caption_projection_dim=128, pooled_projection_dim=2048, pos_embed_max_size=CAP,
                                  dual_attention_layers=(0,), qk_norm="rms_norm")
    path = comfy_env.path("models", "diffusion_models", "edit_test_sd3_cap16.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return comfy.sd.load_diffusion_model(path)


@pytest.fixture(scope="module")
def conds():
    return conditioning("sd3", seed=1, length=154), conditioning("sd3", seed=2, length=154)


def _sample(model, conds, latent_hw, steps=2, cfg=2.0, batch=1, seed=3):
    import comfy.sample
    h, w = latent_hw
    latent = torch.zeros(batch, 16, h, w)
    noise = torch.randn(batch, 16, h, w, generator=torch.Generator().manual_seed(seed))
    positive, negative = conds
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", positive, negative, latent,
                               disable_pbar=True, seed=seed)


def _tiled(td, model, tile_px, overlap_px=64, tile_batch_size=1, blend="feathered"):
    (out,) = td.EDiTTiledDiffusion.execute(model=model, tile_width=tile_px, tile_height=tile_px,
                                           overlap=overlap_px, tile_batch_size=tile_batch_size,
                                           blend=blend).result
    return out


def _record_apply_model(model, key="test_recorder"):
    """A clone with an APPLY_MODEL wrapper that records the latent sizes the model is run on."""
    import comfy.patcher_extension
    seen = []

    def wrapper(executor, x, *args, **kwargs):
        seen.append(tuple(x.shape))
        return executor(x, *args, **kwargs)

    m = model.clone()
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, key, wrapper)
    return m, seen


def test_node_schema_has_a_tooltip_on_every_input(td):
    schema = td.EDiTTiledDiffusion.define_schema()
    assert schema.node_id == "EDiTTiledDiffusion" and schema.display_name == "Tiled Diffusion (EDiT)"
    assert schema.category == "EDiT" and td.NODES == [td.EDiTTiledDiffusion]
    assert [i.id for i in schema.inputs] == ["model", "tile_width", "tile_height", "overlap", "tile_batch_size",
                                             "blend"]
    assert all(i.tooltip for i in schema.inputs) and all(o.tooltip for o in schema.outputs)
    sizes = {i.id: i for i in schema.inputs if i.id in ("tile_width", "tile_height", "overlap")}
    assert all(i.step % 16 == 0 and i.default % 16 == 0 for i in sizes.values())
    assert sizes["tile_width"].default == 1024 and sizes["overlap"].default == 128
    info = td.EDiTTiledDiffusion.GET_NODE_INFO_V1()  # what /object_info serves; validates the schema
    assert info["display_name"] == "Tiled Diffusion (EDiT)" and info["output"] == ["MODEL"]
    assert info["input"]["required"]["blend"][1]["options"] == ["average", "feathered"]


def test_node_returns_a_clone_and_leaves_the_input_model_alone(td, sd3_capped):
    import comfy.patcher_extension
    tiled = _tiled(td, sd3_capped, 256)
    calc = comfy.patcher_extension.WrappersMP.CALC_COND_BATCH
    assert tiled is not sd3_capped and td.WRAPPER_KEY in tiled.wrappers[calc]
    assert td.WRAPPER_KEY not in sd3_capped.wrappers.get(calc, {})
    again = _tiled(td, tiled, 512)  # applying it twice replaces the settings rather than nesting tilers
    assert len(again.wrappers[calc][td.WRAPPER_KEY]) == 1


def test_whole_latent_tile_is_bitwise_untiled(td, sd3_capped, conds):
    untiled = _sample(sd3_capped, conds, (32, 24))
    assert untiled.abs().sum() > 0
    tiled = _sample(_tiled(td, sd3_capped, 512), conds, (32, 24))
    assert torch.equal(tiled, untiled)


def test_latent_beyond_the_pos_embed_cap_fails_untiled_but_samples_tiled(td, sd3_capped, conds):
    with pytest.raises(AssertionError, match=r"\(24, 16\)"):  # cropped_pos_embed: 24 patches > 16
        _sample(sd3_capped, conds, (48, 40), steps=1)
    recorded, seen = _record_apply_model(sd3_capped)
    out = _sample(_tiled(td, recorded, 256), conds, (48, 40), steps=1)
    assert out.shape == (1, 16, 48, 40) and bool(torch.isfinite(out).all())
    assert seen and {s[-2:] for s in seen} == {(32, 32)}  # the model only ever ran on tiles


@pytest.mark.parametrize("latent_hw", [(45, 37), (61, 33), (33, 20)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_odd_latent_sizes_sample_tiled(td, sd3_capped, conds, latent_hw):
    recorded, seen = _record_apply_model(sd3_capped)
    out = _sample(_tiled(td, recorded, 256, overlap_px=64, blend="average"), conds, latent_hw, steps=1)
    assert out.shape == (1, 16) + latent_hw and bool(torch.isfinite(out).all())
    assert {s[-2:] for s in seen} == {(min(32, latent_hw[0]), min(32, latent_hw[1]))}


def test_tile_batching_matches_one_tile_at_a_time(td, sd3_capped, conds):
    one = _sample(_tiled(td, sd3_capped, 256, tile_batch_size=1), conds, (45, 37), steps=1, batch=2)
    recorded, seen = _record_apply_model(sd3_capped)
    many = _sample(_tiled(td, recorded, 256, tile_batch_size=3), conds, (45, 37), steps=1, batch=2)
    torch.testing.assert_close(many, one, rtol=1e-4, atol=1e-5)
    assert max(s[0] for s in seen) == 3 * 2 * 2  # 3 tiles × latent batch 2 × (cond, uncond)


def test_composes_with_apply_model_wrappers_below_and_above(td, sd3_capped, conds):
    below, seen_below = _record_apply_model(sd3_capped, "below")
    tiled = _tiled(td, below, 256)
    above, seen_above = _record_apply_model(tiled, "above")
    _sample(above, conds, (48, 40), steps=1, cfg=1.0)
    assert len(seen_below) == len(seen_above) == 4  # one model call per tile: 2 × 2 tiles, cfg 1
    assert {s[-2:] for s in seen_below + seen_above} == {(32, 32)}


def test_stacks_with_edit_attention_in_either_order(td, sd3, apply_edit, conds):
    """EDiT's object patches and grid wrapper see each tile: its attention checks the token grid, so a tile
    run with the whole latent's grid would raise."""
    edit = apply_edit(sd3.model, sd3.adapter)
    untiled = _sample(edit, conds, (40, 48), steps=1)
    assert torch.equal(_sample(_tiled(td, edit, 1024), conds, (40, 48), steps=1), untiled)
    edit_then_tiled = _sample(_tiled(td, edit, 256), conds, (40, 48), steps=1)
    tiled_then_edit = _sample(apply_edit(_tiled(td, sd3.model, 256), sd3.adapter), conds, (40, 48), steps=1)
    assert torch.equal(edit_then_tiled, tiled_then_edit)
    plain_tiled = _sample(_tiled(td, sd3.model, 256), conds, (40, 48), steps=1)
    assert not torch.equal(edit_then_tiled, plain_tiled) and bool(torch.isfinite(edit_then_tiled).all())


def test_memory_is_estimated_at_tile_size(td, sd3_capped, conds, monkeypatch):
    shapes = []
    real = sd3_capped.model.memory_required

    def memory_required(input_shape, *args, **kwargs):
        shapes.append(tuple(input_shape))
        return real(input_shape, *args, **kwargs)

    monkeypatch.setattr(sd3_capped.model, "memory_required", memory_required)
    _sample(_tiled(td, sd3_capped, 256, tile_batch_size=2), conds, (48, 40), steps=1)
    assert shapes and all(s[-2:] == (32, 32) for s in shapes)
    assert shapes[0][0] == 2 * 2  # prepare_sampling: 2 tiles per batch × (cond, uncond)


def test_progress_folds_tiles_into_the_step_bar(td, sd3_capped, conds, monkeypatch):
    import comfy.utils
    reports = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, node_id=None:
                        reports.append((value, total)))
    _sample(_tiled(td, sd3_capped, 256), conds, (48, 40), steps=2, cfg=1.0)
    assert reports[-1] == (8, 8)  # 2 steps × 4 tile batches
    fractions = [v / t for v, t in reports]
    assert fractions == sorted(fractions) and len(reports) == 8


def test_interrupt_stops_sampling_between_tile_batches(td, sd3_capped, conds):
    import comfy.model_management as mm
    import comfy.patcher_extension

    def interrupt_after(executor, *args, **kwargs):  # a user presses Cancel while the first tile runs
        out = executor(*args, **kwargs)
        mm.interrupt_current_processing(True)
        return out

    recorded, seen = _record_apply_model(sd3_capped)
    recorded.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "interrupt", interrupt_after)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _sample(_tiled(td, recorded, 256), conds, (48, 40), steps=2, cfg=1.0)
    finally:
        mm.interrupt_current_processing(False)
    assert len(seen) == 1  # the 3 other tiles of the step never ran


def test_spatial_conds_are_cropped_tile_major(td, tiling):
    import comfy.conds
    x = torch.randn(2, 4, 40, 56)
    c_concat = torch.randn(1, 5, 40, 56)
    mask = torch.rand(1, 40, 56)
    text = torch.randn(1, 7, 32)
    conds = [[{"model_conds": {"c_concat": comfy.conds.CONDNoiseShape(c_concat),
                               "c_crossattn": comfy.conds.CONDCrossAttn(text)},
               "mask": mask, "uuid": "u"}], None]
    tiles = tiling.plan_tiles(40, 56, 32, 32, 8)[:2]
    cond, uncond = td.crop_conds(conds, tiles, x)
    assert uncond is None
    (c,) = cond
    assert c["model_conds"]["c_crossattn"].cond is text
    got = c["model_conds"]["c_concat"].cond
    assert got.shape == (4, 5, 32, 32)  # 2 tiles × latent batch 2, tile-major
    assert torch.equal(got[0], tiles[0].crop(c_concat)[0]) and torch.equal(got[1], tiles[0].crop(c_concat)[0])
    assert torch.equal(got[2], tiles[1].crop(c_concat)[0])
    assert c["mask"].shape == (4, 32, 32) and torch.equal(c["mask"][3], tiles[1].crop(mask)[0])
    assert conds[0][0]["mask"] is mask  # the caller's conds are not modified


def test_area_conds_are_intersected_with_the_tile(td, tiling):
    x = torch.randn(1, 4, 64, 64)
    conds = [[{"model_conds": {}, "area": (16, 16, 40, 8)}, {"model_conds": {}}]]
    top_left, bottom_left = tiling.Tile(0, 0, 32, 32), tiling.Tile(32, 0, 32, 32)
    (in_top,) = td.crop_conds(conds, [top_left], x)
    assert len(in_top) == 1 and "area" not in in_top[0]  # the area lies outside this tile: dropped
    (in_bottom,) = td.crop_conds(conds, [bottom_left], x)
    assert in_bottom[0]["area"] == (16, 16, 8, 8)


def _tiny_pixart():
    """A width-64 PixArt-Σ built directly (detection bypassed), its weights filled with small random values."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    cfg = comfy.supported_models.PixArtSigma({"image_model": "pixart_sigma", "hidden_size": 64, "num_heads": 2,
                                              "depth": 1, "caption_channels": 32, "patch_size": 2,
                                              "in_channels": 4, "model_max_length": 8,
                                              "micro_condition": False})
    cfg.set_inference_dtype(torch.float32, None)
    pixart = comfy.model_patcher.ModelPatcher(cfg.get_model({}), mm.get_torch_device(), mm.unet_offload_device())
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for t in list(pixart.model.parameters()) + list(pixart.model.buffers()):
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g) * 0.02)
    return pixart


def _sample_pixart(model, latent_hw, seed=0):
    import comfy.sample
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 4, *latent_hw, generator=g)
    cond = [[torch.randn(1, 8, 32, generator=g), {}]]
    return comfy.sample.sample(model, noise, 1, 1.0, "euler", "simple", cond, cond, torch.zeros_like(noise),
                               disable_pbar=True, seed=seed)


def test_pixart_tiles_are_clamped_up_to_its_minimum(td):
    pixart = _tiny_pixart()
    patched, notes = td.apply_tiled_diffusion(pixart, 128, 512, 64, 1, "average")
    assert len(notes) == 1 and "tile_width 128 px is below 272 px" in notes[0]
    tiles = patched.wrappers["calc_cond_batch"][td.WRAPPER_KEY][0].__self__.plan(80, 72)
    assert {t.size for t in tiles} == {(64, 34)}
    out = _sample_pixart(patched, (80, 72))  # 34-px tiles run; 16-px ones divide by zero
    assert out.shape == (1, 4, 80, 72) and bool(torch.isfinite(out).all())


def test_thin_pixart_latent_tiles_grow_the_other_side(td):
    """A 30-px-high latent clamps the tile height to 30; 30 + 34 would divide by zero inside PixArt."""
    recorded, seen = _record_apply_model(_tiny_pixart())
    patched, _ = td.apply_tiled_diffusion(recorded, 272, 272, 32, 1, "feathered")
    out = _sample_pixart(patched, (30, 120))
    assert out.shape == (1, 4, 30, 120) and bool(torch.isfinite(out).all())
    assert {s[-2:] for s in seen} == {(30, 36)}


def test_pixart_latent_too_small_for_any_tile_is_refused_clearly(td):
    patched, _ = td.apply_tiled_diffusion(_tiny_pixart(), 272, 272, 32, 1, "average")
    with pytest.raises(ValueError, match=r"30×30 latent is too small.*use a larger image"):
        _sample_pixart(patched, (30, 30))


class _HintRecorder(torch.nn.Module):
    """A tiny control model for ComfyUI's own ``comfy.controlnet.ControlNet``: it records the latent and the
    hint each call gets and adds no residuals (an empty control dict)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.dtype = torch.float32
        self.calls = []

    def forward(self, x, hint, timesteps, context, **kwargs):
        self.calls.append((tuple(x.shape), hint.detach().clone()))
        return {}


def _position_hint(height_px: int, width_px: int) -> torch.Tensor:
    """[1, 3, H, W]: channel 0 the row, channel 1 the column, channel 2 a constant, all in [0, 1)."""
    rows = torch.arange(height_px, dtype=torch.float32)[:, None].expand(height_px, width_px) / height_px
    cols = torch.arange(width_px, dtype=torch.float32)[None, :].expand(height_px, width_px) / width_px
    return torch.stack([rows, cols, torch.full_like(rows, 0.5)])[None]


def _with_control(conds, control):
    positive, negative = conds
    return ([[positive[0][0], {**positive[0][1], "control": control, "control_apply_to_uncond": False}]],
            negative)


@pytest.mark.parametrize("tile_batch_size", [1, 2])
def test_controlnet_hint_and_mask_are_cropped_to_each_tile(td, tiling, sd3_capped, conds, tile_batch_size):
    import comfy.controlnet
    import comfy.model_management as mm

    latent_hw, scale = (48, 40), 8
    hint = _position_hint(latent_hw[0] * scale, latent_hw[1] * scale)
    mask = (torch.arange(latent_hw[0] * scale)[:, None] * 7 + torch.arange(latent_hw[1] * scale)[None, :])
    mask = (mask % 11).float()[None, None] / 10  # an inpainting-ControlNet-style mask, concatenated to the hint
    recorder = _HintRecorder()
    control = comfy.controlnet.ControlNet(recorder, compression_ratio=scale, load_device=mm.get_torch_device())
    control = control.copy().set_cond_hint(hint, 1.0, (0.0, 1.0), extra_concat=[mask])
    out = _sample(_tiled(td, sd3_capped, 256, overlap_px=64, tile_batch_size=tile_batch_size),
                  _with_control(conds, control), latent_hw, steps=1, cfg=1.0)
    assert out.shape == (1, 16) + latent_hw and bool(torch.isfinite(out).all())

    tiles = tiling.plan_tiles(*latent_hw, 32, 32, 8)
    batches = tiling.tile_batches(tiles, tile_batch_size)
    assert len(recorder.calls) == len(batches) > 1
    expected_hint = torch.cat([hint, mask], dim=1)
    for (x_shape, got), batch in zip(recorder.calls, batches):
        assert x_shape[0] == len(batch) and x_shape[-2:] == (32, 32)
        for j, tile in enumerate(batch):
            crop = expected_hint[..., tile.y * scale:(tile.y + tile.h) * scale, tile.x * scale:(tile.x + tile.w) * scale]
            assert torch.equal(got[j:j + 1], crop), f"tile {tile} got another part of the hint"


def test_controlnet_hint_cropping_keeps_the_callers_control_untouched(td, tiling):
    import comfy.controlnet
    import comfy.model_management as mm

    control = comfy.controlnet.ControlNet(_HintRecorder(), compression_ratio=8, load_device=mm.get_torch_device())
    control = control.copy().set_cond_hint(_position_hint(320, 256), 1.0, (0.0, 1.0))
    original = control.cond_hint_original
    conds = [[{"model_conds": {}, "control": control}]]
    tiles = tiling.plan_tiles(40, 32, 32, 32, 8)
    cache = {}
    (cropped,) = td.crop_conds(conds, tiles[:1], torch.zeros(1, 16, 40, 32), cache)
    (again,) = td.crop_conds(conds, tiles[:1], torch.zeros(1, 16, 40, 32), cache)
    assert cropped[0]["control"] is again[0]["control"]  # one copy per tile and run, so cond/uncond still batch
    assert control.cond_hint_original is original and conds[0][0]["control"] is control
    assert cropped[0]["control"].cond_hint_original.shape[-2:] == (256, 256)
