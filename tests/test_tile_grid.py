"""The tile layout the graph editor shows comes from the sampler's own planner."""

import pytest

from edit_core import tiling
from edit_core.tile_grid import tile_grid


def test_sd35m_fast_4k_layout_is_3x3_tiles_of_1536():
    plan = tile_grid(4096, 4096, 1536, 1536, 256)
    assert (plan["rows"], plan["cols"], plan["count"], plan["tile"]) == (3, 3, 9, [1536, 1536])
    assert plan["tokens_per_tile"] == 96 * 96 and plan["tokens_whole"] == 256 * 256


def test_tiles_match_plan_tiles_in_latent_px():
    plan = tile_grid(1000, 600, 512, 256, 64)
    expected = tiling.plan_tiles(75, 125, 32, 64, 8)
    assert plan["tiles"] == [[t.x, t.y, t.w, t.h] for t in expected]


def test_overlap_is_clamped_to_half_the_tile_like_the_node():
    assert tile_grid(4096, 4096, 1024, 1024, 4000)["overlap"] == 512


def test_a_tile_larger_than_the_image_is_one_tile():
    assert tile_grid(512, 512, 1024, 1024, 128)["count"] == 1


def test_sizes_below_one_latent_pixel_are_refused():
    with pytest.raises(ValueError):
        tile_grid(4, 512, 512, 512, 0)
