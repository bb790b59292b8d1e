"""Tile layout and MultiDiffusion blending (edit_core.tiling), on CPU."""

import pytest
import torch

from edit_core.tiling import (Tile, TileBlender, axis_starts, blend, plan_tiles, tile_batches, tile_weights,
                              tiled_apply)

# (H, W, tile_h, tile_w, overlap): odd sizes, non-multiples, tiles bigger than the latent
LAYOUTS = [(61, 45, 32, 32, 8), (40, 56, 32, 32, 8), (64, 64, 32, 32, 8), (20, 13, 32, 32, 8),
           (33, 100, 16, 24, 5), (7, 9, 3, 4, 1), (128, 96, 64, 48, 0)]
BLENDS = ["average", "feathered"]


def _coverage(tiles, H, W):
    count = torch.zeros(H, W, dtype=torch.int64)
    for t in tiles:
        t.crop(count).add_(1)
    return count


def _pointwise(x_tiles, batch):
    """A per-pixel model: its tiled prediction must equal the untiled one exactly (up to blending)."""
    return torch.tanh(1.7 * x_tiles) - 0.3 * x_tiles ** 2


class SmallConvNet(torch.nn.Module):
    def __init__(self, channels=4, hidden=8):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, hidden, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x):
        return self.conv2(torch.nn.functional.silu(self.conv1(x)))


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: "{}x{}_t{}x{}_o{}".format(*l))
def test_every_pixel_is_covered(layout):
    H, W, th, tw, overlap = layout
    tiles = plan_tiles(H, W, th, tw, overlap)
    assert bool((_coverage(tiles, H, W) > 0).all())


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: "{}x{}_t{}x{}_o{}".format(*l))
def test_tiles_stay_inside_the_latent_and_share_one_size(layout):
    H, W, th, tw, overlap = layout
    tiles = plan_tiles(H, W, th, tw, overlap)
    assert {t.size for t in tiles} == {(min(th, H), min(tw, W))}
    for t in tiles:
        assert 0 <= t.y and t.y + t.h <= H and 0 <= t.x and t.x + t.w <= W


def test_last_tile_is_shifted_back_to_the_border():
    assert axis_starts(61, 32, 8) == [0, 24, 29]
    assert axis_starts(45, 32, 8) == [0, 13]
    assert axis_starts(64, 32, 8) == [0, 24, 32]
    assert axis_starts(56, 32, 8) == [0, 24]


def test_neighbouring_tiles_overlap_by_at_least_the_overlap():
    for length, tile, overlap in [(61, 32, 8), (1000, 128, 16), (129, 64, 0), (45, 32, 8)]:
        starts = axis_starts(length, tile, overlap)
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
        assert starts[-1] + tile == length


def test_tile_bigger_than_the_latent_is_clamped_to_one_tile():
    assert plan_tiles(20, 13, 32, 32, 8) == [Tile(0, 0, 20, 13)]
    assert plan_tiles(40, 56, 40, 64, 100) == [Tile(0, 0, 40, 56)]  # overlap is irrelevant with one tile


def test_overlap_not_smaller_than_the_tile_is_rejected():
    with pytest.raises(ValueError, match="overlap 32 must be smaller than the tile"):
        plan_tiles(64, 64, 32, 32, 32)


@pytest.mark.parametrize("blend_mode", BLENDS)
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: "{}x{}_t{}x{}_o{}".format(*l))
def test_normalised_weights_sum_to_one_everywhere(layout, blend_mode):
    H, W, th, tw, overlap = layout
    tiles = plan_tiles(H, W, th, tw, overlap)
    weights = [tile_weights(t, blend_mode, overlap, (H, W)) for t in tiles]
    assert all(bool((w > 0).all()) for w in weights)
    total = torch.zeros(H, W, dtype=torch.float64)
    for t, w in zip(tiles, weights):
        t.crop(total).add_(w.double())
    normalised_sum = torch.zeros(H, W, dtype=torch.float64)
    for t, w in zip(tiles, weights):
        t.crop(normalised_sum).add_(w.double() / t.crop(total))
    torch.testing.assert_close(normalised_sum, torch.ones(H, W, dtype=torch.float64), rtol=0, atol=1e-12)


def test_feathered_ramp_never_reaches_zero_and_spares_the_border():
    w = tile_weights(Tile(0, 24, 32, 32), "feathered", 8, (61, 80))
    assert float(w.min()) == pytest.approx(1 / 81)  # corner of two ramped edges: (1/9)·(1/9)
    assert torch.equal(w[0], w[16])  # the top edge is on the latent border: no fade towards it
    assert float(w[0, 16]) == 1.0 and float(w[16, 16]) == 1.0
    assert float(w[16, 0]) == pytest.approx(1 / 9) and float(w[-1, 16]) == pytest.approx(1 / 9)


def test_feathered_ramps_of_two_tiles_sum_to_one_across_the_overlap():
    left, right = Tile(0, 0, 4, 32), Tile(0, 24, 4, 32)  # overlap exactly 8 on a 4×56 latent
    wl = tile_weights(left, "feathered", 8, (4, 56))[0, 24:]
    wr = tile_weights(right, "feathered", 8, (4, 56))[0, :8]
    torch.testing.assert_close(wl + wr, torch.ones(8))


def test_unknown_blend_is_rejected():
    with pytest.raises(ValueError, match="unknown blend 'max'"):
        tile_weights(Tile(0, 0, 4, 4), "max")


@pytest.mark.parametrize("blend_mode", BLENDS)
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: "{}x{}_t{}x{}_o{}".format(*l))
def test_pointwise_model_tiled_equals_untiled(layout, blend_mode):
    H, W, th, tw, overlap = layout
    x = torch.randn(2, 4, H, W)
    tiles = plan_tiles(H, W, th, tw, overlap)
    out = tiled_apply(_pointwise, x, tiles, batch_size=3, blend=blend_mode, overlap=overlap)
    torch.testing.assert_close(out, _pointwise(x, None), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("blend_mode", BLENDS)
def test_conv_model_with_one_whole_latent_tile_is_bitwise_untiled(blend_mode):
    model = SmallConvNet()
    x = torch.randn(2, 4, 61, 45)
    tiles = plan_tiles(61, 45, 64, 64, 8)
    with torch.no_grad():
        out = tiled_apply(lambda xt, batch: model(xt), x, tiles, blend=blend_mode, overlap=8)
        assert torch.equal(out, model(x))


def test_conv_model_tiled_is_exact_away_from_seams():
    """A 2-layer 3×3 conv sees 2 pixels around: where no tile cuts that window, tiled equals untiled."""
    model = SmallConvNet()
    H, W = 61, 45
    x = torch.randn(1, 4, H, W)
    tiles = plan_tiles(H, W, 32, 32, 8)
    with torch.no_grad():
        out = tiled_apply(lambda xt, batch: model(xt), x, tiles, overlap=8)
        ref = model(x)
    cut = torch.zeros(H, W, dtype=torch.bool)  # within 2 pixels of an inner border of a tile holding it
    for t in tiles:
        near = torch.ones(t.h, t.w, dtype=torch.bool)
        near[2 if t.y > 0 else 0: t.h - 2 if t.y + t.h < H else t.h,
             2 if t.x > 0 else 0: t.w - 2 if t.x + t.w < W else t.w] = False
        t.crop(cut).logical_or_(near)
    assert int((~cut).sum()) > H * W // 2
    torch.testing.assert_close(out[..., ~cut], ref[..., ~cut], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out, ref, rtol=1e-5, atol=1e-6)  # and the seams do differ: tiles see less


@pytest.mark.parametrize("blend_mode", BLENDS)
def test_tile_batching_matches_batch_size_one(blend_mode):
    model = SmallConvNet()
    x = torch.randn(2, 4, 61, 45)
    tiles = plan_tiles(61, 45, 32, 32, 8)
    with torch.no_grad():
        one = tiled_apply(lambda xt, batch: model(xt), x, tiles, batch_size=1, blend=blend_mode, overlap=8)
        for batch_size in (2, 4, len(tiles), 100):
            many = tiled_apply(lambda xt, batch: model(xt), x, tiles, batch_size=batch_size, blend=blend_mode,
                               overlap=8)
            torch.testing.assert_close(many, one, rtol=1e-6, atol=1e-6)


def test_stacked_tiles_are_tile_major():
    x = torch.arange(2 * 1 * 4 * 6, dtype=torch.float32).reshape(2, 1, 4, 6)
    tiles = plan_tiles(4, 6, 4, 4, 2)
    seen = []

    def record(xt, batch):
        seen.append((xt.clone(), list(batch)))
        return xt

    tiled_apply(record, x, tiles, batch_size=2)
    xt, batch = seen[0]
    assert xt.shape == (4, 1, 4, 4)
    assert torch.equal(xt[:2], batch[0].crop(x)) and torch.equal(xt[2:], batch[1].crop(x))


def test_list_outputs_are_blended_separately():
    x = torch.randn(1, 4, 40, 56)
    tiles = plan_tiles(40, 56, 32, 32, 8)
    cond, uncond = tiled_apply(lambda xt, batch: [xt * 2, xt - 1], x, tiles, batch_size=2, overlap=8)
    torch.testing.assert_close(cond, x * 2)
    torch.testing.assert_close(uncond, x - 1)


def test_accumulation_is_float32_and_output_keeps_the_model_dtype():
    x = torch.randn(1, 4, 40, 56).to(torch.bfloat16)
    tiles = plan_tiles(40, 56, 32, 32, 8)
    out = tiled_apply(lambda xt, batch: xt, x, tiles, blend="feathered", overlap=8)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, x)  # the bf16 values survive an fp32 weighted mean


def test_progress_and_interrupt_hooks_run_per_tile_batch():
    x = torch.randn(1, 4, 61, 45)
    tiles = plan_tiles(61, 45, 32, 32, 8)  # 3 × 2 tiles
    calls, checks = [], []
    tiled_apply(lambda xt, batch: xt, x, tiles, batch_size=4, progress=lambda d, n: calls.append((d, n)),
                check_interrupt=lambda: checks.append(1))
    assert calls == [(1, 2), (2, 2)] and len(checks) == 2


def test_interrupt_stops_before_the_next_tile_batch():
    x = torch.randn(1, 4, 61, 45)
    tiles = plan_tiles(61, 45, 32, 32, 8)
    ran = []

    def interrupt():
        if len(ran) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tiled_apply(lambda xt, batch: ran.append(1) or xt, x, tiles, check_interrupt=interrupt)
    assert len(ran) == 2


def test_tile_batches_group_equal_sizes_only():
    tiles = [Tile(0, 0, 4, 4), Tile(0, 4, 4, 2), Tile(4, 0, 4, 4), Tile(4, 4, 4, 2), Tile(8, 0, 4, 4)]
    groups = tile_batches(tiles, 2)
    assert [[t.size for t in g] for g in groups] == [[(4, 4), (4, 4)], [(4, 4)], [(4, 2), (4, 2)]]


def test_blend_function_matches_the_accumulator():
    H, W = 40, 56
    tiles = plan_tiles(H, W, 32, 32, 8)
    preds = [torch.randn(1, 3, t.h, t.w) for t in tiles]
    weights = [tile_weights(t, "feathered", 8, (H, W)) for t in tiles]
    blender = TileBlender((1, 3, H, W))
    for t, p, w in zip(tiles, preds, weights):
        blender.add(t, p, w)
    assert torch.equal(blend(preds, tiles, weights, (1, 3, H, W)), blender.result())


def test_blender_refuses_uncovered_pixels():
    blender = TileBlender((1, 1, 8, 8))
    blender.add(Tile(0, 0, 4, 8), torch.ones(1, 1, 4, 8), torch.ones(4, 8))
    with pytest.raises(ValueError, match="32 latent pixels are covered by no tile"):
        blender.result()


@pytest.mark.parametrize("latent, tile, expected", [
    ((30, 200), (34, 34), (30, 36)),   # thin latent: the wide side grows so h + w reaches 66
    ((200, 20), (34, 34), (46, 20)),
    ((40, 40), (34, 34), (34, 34)),    # already enough: unchanged
    ((30, 36), (16, 16), (30, 36)),    # grown to the whole latent
])
def test_tiles_grow_to_a_minimum_side_sum_on_thin_latents(latent, tile, expected):
    tiles = plan_tiles(*latent, *tile, overlap=4, min_side_sum=66)
    assert {t.size for t in tiles} == {expected}
    covered = torch.zeros(latent, dtype=torch.bool)
    for t in tiles:
        t.crop(covered).fill_(True)
    assert bool(covered.all())


def test_a_latent_below_the_minimum_side_sum_is_refused():
    with pytest.raises(ValueError, match=r"30×30 latent is too small.*at least 66"):
        plan_tiles(30, 30, 34, 34, overlap=4, min_side_sum=66)
