"""The converted model's memory formula (edit_core.memory_estimate)."""

import pytest

from edit_core.memory_estimate import bytes_per_token, comfy_mib_per_unit_factor, converted_memory_usage_factor

PIXART = dict(hidden=1152, mlp_hidden=4608, joint=False, patch=2, heads=16, context_tokens=300)
SD35M = dict(hidden=1536, mlp_hidden=6144, joint=True, patch=2)


def test_mlp_dominates_a_converted_block_with_a_4x_mlp():
    # fp16 PixArt-Σ: residual 2 + GELU MLP 2·4 = 10 widths of 1152, 2 bytes each
    assert bytes_per_token(1152, 4608, False, 2) == 2 * 1152 * 10


def test_unfused_caption_scores_are_counted():
    assert bytes_per_token(1152, 4608, False, 2, heads=16, context_tokens=300, fused_attention=False) == \
        2 * (1152 * 10 + 16 * 300)


@pytest.mark.parametrize("model, original", [(PIXART, 0.5), (SD35M, 1.2)], ids=["pixart_sigma", "sd35_medium"])
@pytest.mark.parametrize("fused", [True, False], ids=["flash", "no-flash"])
def test_converted_factor_is_lower_and_reproduces_the_formula(model, original, fused):
    factor = converted_memory_usage_factor(original, dtype_bytes=2, fused_attention=fused, **model)
    assert 0 < factor < original
    per_pixel = factor * comfy_mib_per_unit_factor(2, fused) * 2**20
    expected = bytes_per_token(model["hidden"], model["mlp_hidden"], model["joint"], 2, model.get("heads", 0),
                               model.get("context_tokens", 0), fused) / 4
    assert per_pixel == pytest.approx(expected)


def test_never_raises_the_original_factor():
    assert converted_memory_usage_factor(0.01, dtype_bytes=4, **SD35M) == 0.01
