"""KV-compressed softmax attention against float64 loop references, on odd and non-square grids."""

import math

import pytest
import torch

from edit_core.ops.kv_compression import (attention_scale, kv_compressed_attention, kv_compressed_joint_attention,
                                          naive_kv_compressed_attention, naive_kv_compressed_joint_attention,
                                          naive_pool_tokens, pool_tokens, pooled_grid)
from tests.util import rel_rmse

GRIDS = [(5, 7), (6, 6), (9, 4), (1, 5), (3, 1)]


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("ratio", [2, 3, 4])
def test_pooling_averages_only_the_tokens_each_window_holds(grid, ratio):
    x = torch.randn(2, 3, grid[0] * grid[1], 8, dtype=torch.float64)
    pooled = pool_tokens(x, grid, ratio)
    assert pooled.shape[-2] == pooled_grid(grid, ratio)[0] * pooled_grid(grid, ratio)[1]
    assert torch.allclose(pooled, naive_pool_tokens(x, grid, ratio), atol=1e-12)


def test_pooling_a_constant_gives_the_constant_even_at_ragged_edges():
    x = torch.full((1, 5 * 7, 4), 3.0)
    assert torch.equal(pool_tokens(x, (5, 7), 2), torch.full((1, 3 * 4, 4), 3.0))


def test_pooling_rejects_a_grid_that_does_not_match():
    with pytest.raises(ValueError, match="does not match"):
        pool_tokens(torch.zeros(1, 10, 4), (3, 4), 2)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("ratio", [2, 3])
@pytest.mark.parametrize("temperature", ["teacher", "proportional"])
def test_fp32_matches_float64_reference(grid, ratio, temperature):
    n = grid[0] * grid[1]
    q, k, v = (torch.randn(2, 3, n, 16) for _ in range(3))
    out = kv_compressed_attention(q, k, v, grid, ratio, temperature=temperature)
    ref = naive_kv_compressed_attention(q, k, v, grid, ratio, temperature)
    assert out.shape == q.shape and rel_rmse(out, ref) <= 1e-5


@pytest.mark.parametrize("text_first", [True, False], ids=["text-first", "image-first"])
@pytest.mark.parametrize("image_rows_only", [False, True], ids=["all-rows", "image-rows"])
def test_joint_matches_float64_reference(text_first, image_rows_only):
    grid, num_text = (5, 7), 6
    q, k, v = (torch.randn(2, 3, num_text + 35, 16) for _ in range(3))
    kw = dict(num_text=num_text, text_first=text_first, image_rows_only=image_rows_only)
    out = kv_compressed_joint_attention(q, k, v, grid, 2, **kw)
    ref = naive_kv_compressed_joint_attention(q, k, v, grid, 2, **kw)
    assert out.shape == ref.shape and rel_rmse(out, ref) <= 1e-5


def test_text_keys_stay_exact_in_joint_attention():
    """With pooling that changes nothing (ratio 1 on the image), joint attention is plain softmax attention."""
    q, k, v = (torch.randn(1, 2, 4 + 12, 8) for _ in range(3))
    out = kv_compressed_joint_attention(q, k, v, (3, 4), 1, num_text=4, text_first=True)
    assert torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-6)


def test_proportional_temperature_scales_by_log_key_ratio():
    assert attention_scale(64, 256, 1024, "teacher") == pytest.approx(1 / 8)
    assert attention_scale(64, 256, 1024, "proportional") == pytest.approx(math.sqrt(math.log(256) / math.log(1024)) / 8)
    with pytest.raises(ValueError, match="temperature"):
        attention_scale(64, 256, 1024, "hot")
