"""A short distillation really teaches the student: on tiny PixArt-Σ and SD3.5-M-layout teachers whose
attention the untrained student cannot read (``quick.structured_tiny_teacher``: a constant key offset),
60 steps bring the student's prediction error vs the teacher, on held-out noise and timesteps, down at
least 3× from the init adapter's (measured: about 6–7×), and the layer and output-KD losses fall."""

from __future__ import annotations

import pytest

from edit_core.distill.plot import read_log
from edit_core.distill.quick import quick_distill
from tests.distill.helpers import FAMILIES

STEPS = 60


def _mean(values):
    return sum(values) / len(values)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_short_run_cuts_the_students_error_three_times(family, tmp_path):
    result = quick_distill(family, steps=STEPS, work_dir=str(tmp_path))
    assert result.steps == STEPS
    assert result.error_before > 0.05  # the init adapter is clearly off
    assert result.error_after * 3 <= result.error_before, (result.error_before, result.error_after)

    log = read_log(result.result.log_path)
    assert [e["step"] for e in log] == list(range(1, STEPS + 1))
    for key in ("loss_feature", "loss_kd"):
        first, last = _mean([e[key] for e in log[:5]]), _mean([e[key] for e in log[-5:]])
        assert last * 3 < first, (key, first, last)
    assert all(e["loss_task"] == 0 for e in log)  # data-free: no task loss
    assert result.adapter.config.training["steps"] == STEPS
