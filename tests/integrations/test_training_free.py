"""diffusers ``apply_training_free``: KV compression on tiny PixArt-Σ and SD3.5-M-layout transformers."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from edit_core.integrations.diffusers import (ADAPTER_MODULE, apply_training_free, is_edit_applied,  # noqa: E402
                                              remove_edit)
from edit_core.ops.kv_compression import naive_kv_compressed_attention  # noqa: E402
from tests.integrations.test_diffusers import (FAMILIES, _heads, _linear, _merge, _rms, capture,  # noqa: E402
                                              make_pixart, pixart_inputs, run)
from tests.util import rel_rmse  # noqa: E402


@pytest.mark.parametrize("family", ["pixart", "sd3"])
def test_below_min_tokens_the_model_is_bit_identical(family):
    make, _, make_inputs = FAMILIES[family]
    model, inputs = make(), make_inputs()
    before = run(model, inputs)
    apply_training_free(model, ratio=2, min_tokens=9 * 13 + 1)  # the 18×26 latent has 9×13 tokens
    assert torch.equal(run(model, inputs), before)


@pytest.mark.parametrize("family", ["pixart", "sd3"])
def test_above_min_tokens_it_changes_the_output_and_remove_restores_it(family):
    make, _, make_inputs = FAMILIES[family]
    model, inputs = make(), make_inputs()
    before = run(model, inputs)
    apply_training_free(model, ratio=2)
    changed = run(model, inputs)
    assert torch.isfinite(changed).all() and not torch.allclose(changed, before, atol=1e-6)
    remove_edit(model)
    assert not is_edit_applied(model) and torch.equal(run(model, inputs), before)


@pytest.mark.parametrize("ratio", [2, 3])
def test_pixart_self_attention_matches_float64_reference(ratio):
    model, inputs = make_pixart(), pixart_inputs(latent=(18, 26))
    apply_training_free(model, ratio=ratio)
    attn = model.transformer_blocks[1].attn1
    with capture(attn) as calls:
        run(model, inputs)
    (call_inputs, output), = calls
    x, heads = call_inputs["hidden_states"].double(), attn.heads
    q, k, v = (_rms(_heads(_linear(x, proj), heads), None) for proj in (attn.to_q, attn.to_k, attn.to_v))
    expected = _linear(_merge(naive_kv_compressed_attention(q, k, v, (9, 13), ratio)), attn.to_out[0])
    assert rel_rmse(output, expected) <= 1e-5


def test_block_range_and_sd3_attn2_are_converted():
    make, _, make_inputs = FAMILIES["sd3"]
    model = make()
    apply_training_free(model, ratio=2, blocks=(0, 0))
    block0, block1 = model.transformer_blocks
    assert type(getattr(block0.attn, ADAPTER_MODULE)).__name__ == "KVCompression"
    assert hasattr(block0.attn2, ADAPTER_MODULE)
    assert not hasattr(block1.attn, ADAPTER_MODULE)


def test_bad_settings_change_nothing():
    make, _, make_inputs = FAMILIES["pixart"]
    model = make()
    with pytest.raises(ValueError, match="ratio"):
        apply_training_free(model, ratio=5)
    with pytest.raises(ValueError, match="temperature"):
        apply_training_free(model, ratio=2, temperature="hot")
    assert not is_edit_applied(model)
