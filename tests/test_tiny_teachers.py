"""The committed tiny trained teachers (edit_core/data/tiny_teachers): they load, are what they claim to be,
denoise their held-out set and have local attention. Thresholds sit well inside what
``tools/make_tiny_teachers.py`` produced (see edit_core/data/tiny_teachers/README.md)."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("diffusers")

from edit_core import tiny_teachers  # noqa: E402
from edit_core.families import detect_teacher  # noqa: E402

FAMILIES = ("pixart_sigma", "sd35_medium")
ITEMS = 32  # of the 64 held-out crops: enough for the margins below, half the time
MAX_FILE = 2 * 1024 * 1024
UNIFORM_3X3 = 9 / 256


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request):
    family = request.param
    model = tiny_teachers.load_tiny_teacher(family)
    heldout = tiny_teachers.load_heldout(family)
    return family, model, heldout


def test_files_are_small_and_present():
    total = 0
    for family in FAMILIES:
        for path in (tiny_teachers.teacher_path(family), tiny_teachers.heldout_path(family)):
            assert os.path.isfile(path), path
            assert os.path.getsize(path) <= MAX_FILE, (path, os.path.getsize(path))
            total += os.path.getsize(path)
    assert total <= 5 * 1024 * 1024


@pytest.mark.parametrize("family", FAMILIES)
def test_detected_as_its_family(family):
    from safetensors import safe_open

    with safe_open(tiny_teachers.teacher_path(family), framework="pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    facts = tiny_teachers.teacher_facts(family)
    spec = detect_teacher({k: torch.empty(s, device="meta") for k, s in shapes.items()},
                          num_heads=facts["config"]["num_attention_heads"])
    assert spec.family == family and spec.layout == "diffusers"
    assert spec.head_dim == 32
    if family == "sd35_medium":
        assert spec.attn2_blocks == [0, 1] and spec.qk_norm == "rms"
    assert facts["steps"] > 0 and facts["heldout_loss"] < facts["zero_loss"]
    assert "make_tiny_teachers.py" in facts["command"]


def test_teacher_denoises(loaded):
    family, model, heldout = loaded
    assert not model.training and next(model.parameters()).dtype == torch.float32
    heldout_shapes = {k: tuple(v.shape) for k, v in heldout.items()}
    assert heldout_shapes["x0"] == (64, 4, 32, 32) and heldout_shapes["encoder_hidden_states"][0] == 64
    assert ("pooled_projections" in heldout) == (family == "sd35_medium")
    loss = tiny_teachers.heldout_loss(model, heldout, family, items=ITEMS)
    zero = tiny_teachers.zero_loss(heldout, items=ITEMS)
    # made: PixArt 0.066 vs 0.999 (ε; zeros = E ε²), SD3.5-M 0.391 vs 2.141 (velocity ε − x0)
    assert loss < 0.35 * zero, (loss, zero)


def test_attention_is_local(loaded):
    family, model, heldout = loaded
    table = tiny_teachers.attention_locality(model, heldout, family, items=ITEMS)
    expected = 4 if family == "pixart_sigma" else 6  # PixArt: 4 × attn1; SD3.5-M: 4 joint + 2 attn2
    assert len(table) == expected
    assert {row["slot"] for row in table} == ({"attn"} if family == "pixart_sigma" else {"attn", "attn2"})
    best = max(row["mass3x3"] for row in table)
    # made: best 3×3 mass 0.218 (PixArt attn1 of block 1) and 0.404 (SD3.5-M attn2 of block 1), uniform 0.032
    assert best >= 3 * UNIFORM_3X3, tiny_teachers.format_locality(table)
    # made: lowest entropy / log 256 0.807 (PixArt) and 0.700 (SD3.5-M); uniform attention is 1
    assert min(row["entropy_ratio"] for row in table) < 0.9, tiny_teachers.format_locality(table)
