"""The layer loss counts only (teacher, student) pairs that a trainable tensor can move."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edit_core.distill.diffusers_host import DiffusersDistillHost
from edit_core.distill.losses import layer_loss
from tests.distill.helpers import teacher_and_data


def _pairs(train_projections: bool):
    model, data = teacher_and_data("sd35_medium")
    host = DiffusersDistillHost(model, train_projections=train_projections)
    x0, cond = data.load([0, 1])
    _, pairs = host.teacher_forced(x0, torch.tensor([300.0, 700.0]), cond)
    return pairs


def test_frozen_projections_leave_mm_edit_text_pairs_out_of_the_layer_loss():
    pairs = _pairs(train_projections=False)
    text = [p for p in pairs if p.name.endswith(".text")]
    image = [p for p in pairs if not p.name.endswith(".text")]
    assert text and image
    assert not any(p.student.requires_grad for p in text)  # the teacher's exact softmax rows
    expected = torch.stack([F.mse_loss(p.student, p.teacher) for p in image]).mean()
    assert torch.allclose(layer_loss(pairs), expected)
    with_text = torch.stack([F.mse_loss(p.student, p.teacher) for p in pairs]).mean()
    assert not torch.allclose(with_text, expected)  # (so the test can tell the two apart)


def test_trained_projections_keep_every_pair():
    pairs = _pairs(train_projections=True)
    assert all(p.student.requires_grad for p in pairs)
    expected = torch.stack([F.mse_loss(p.student, p.teacher) for p in pairs]).mean()
    assert torch.allclose(layer_loss(pairs), expected)
