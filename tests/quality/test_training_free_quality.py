"""The training-free mode against the tiny trained PixArt-Σ teacher: the issue's bar (output error ≤ 0.15 at
ratio 2 on held-out crops of real photos) and the orderings that make the mode's knobs meaningful."""

import pytest

pytest.importorskip("diffusers")

from edit_core.quality.training_free import Setting, evaluate, relative_error, student_for  # noqa: E402
from edit_core.tiny_teachers import load_heldout, load_tiny_teacher, predict  # noqa: E402


@pytest.fixture(scope="module")
def pixart():
    teacher, heldout = load_tiny_teacher("pixart_sigma"), load_heldout("pixart_sigma")
    return teacher, heldout, predict(teacher, heldout, "pixart_sigma")


def _output_error(pixart, setting: Setting) -> float:
    teacher, heldout, reference = pixart
    return relative_error(predict(student_for(teacher, setting), heldout, "pixart_sigma"), reference)


def test_ratio_two_stays_within_fifteen_percent_of_the_teacher(pixart):
    assert _output_error(pixart, Setting(2)) <= 0.15


def test_error_grows_with_the_pooling_ratio(pixart):
    errors = [_output_error(pixart, Setting(r)) for r in (2, 3, 4)]
    assert errors[0] < errors[1] < errors[2]


def test_compressing_only_the_late_blocks_costs_less_quality(pixart):
    assert _output_error(pixart, Setting(2, blocks="late half")) < _output_error(pixart, Setting(2))


def test_quick_evaluation_reports_every_setting():
    rows = evaluate("pixart_sigma", (Setting(2), Setting(2, percent=(0.5, 1.0))), items=8, sample_items=2, steps=4)
    full, late = rows
    assert 0 < full["output_error"] < 1 and "output_error" not in late
    assert 0 < late["sample_error"] < full["sample_error"]  # compressing only the late steps keeps more of the image
    assert full["unrelated_sample_error"] > full["sample_error"]
