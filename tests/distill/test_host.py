"""DiffusersDistillHost: the three modes, the recorded layer pairs, export and restore."""

from __future__ import annotations

import pytest
import torch

from edit_core.adapter import FINETUNE_NAMES, Adapter, validate_tensors
from edit_core.distill.diffusers_host import DiffusersDistillHost
from edit_core.integrations.diffusers import apply_edit, is_edit_applied
from tests.distill.helpers import FAMILIES, teacher_and_data
from tests.util import rel_rmse


def _inputs(dataset, rows=(0, 1, 2)):
    x0, cond = dataset.load(list(rows))
    return x0, torch.tensor([900.0, 500.0, 20.0][:len(rows)]), cond


def _run_plain(model, x, t, cond):
    """The unconverted model, called as the host calls it."""
    host = DiffusersDistillHost.__new__(DiffusersDistillHost)
    host.transformer, host.family, host.dtype = model, "pixart_sigma" if hasattr(model.config, "caption_channels") \
        else "sd35_medium", torch.float32
    with torch.no_grad():
        return DiffusersDistillHost._forward(host, x, t, cond)


@pytest.mark.parametrize("family", FAMILIES)
def test_teacher_mode_and_teacher_forced_pass_compute_the_teacher(family):
    model, data = teacher_and_data(family)
    x, t, cond = _inputs(data)
    expected = _run_plain(model, x, t, cond)
    host = DiffusersDistillHost(model)
    assert torch.equal(host.predict(x, t, cond, mode="teacher"), expected)
    forced, pairs = host.teacher_forced(x, t, cond)
    assert torch.equal(forced, expected)
    student = host.predict(x, t, cond, mode="student")
    assert rel_rmse(student, expected) > 1e-3  # the student really is different


@pytest.mark.parametrize("family", FAMILIES)
def test_teacher_forced_pass_records_every_converted_stream(family):
    model, data = teacher_and_data(family)
    host = DiffusersDistillHost(model)
    _, pairs = host.teacher_forced(*_inputs(data))
    names = [p.name for p in pairs]
    if family == "pixart_sigma":
        assert names == ["blocks.0.attn", "blocks.1.attn"]
    else:  # block 0: joint (image + text) and attn2; block 1 (last, context_pre_only): image only
        assert sorted(names) == ["blocks.0.attn", "blocks.0.attn.text", "blocks.0.attn2", "blocks.1.attn"]
    for pair in pairs:
        assert pair.teacher.shape == pair.student.shape
        assert not pair.teacher.requires_grad
        # with frozen projections MM-EDiT's text rows are the teacher's own softmax: nothing to train there
        assert pair.student.requires_grad == (not pair.name.endswith(".text"))


def test_layer_pairs_are_computed_on_the_same_layer_input():
    """The student half of a pair equals the EDiT layer run on the teacher's own layer input."""
    model, data = teacher_and_data("pixart_sigma")
    x, t, cond = _inputs(data)
    host = DiffusersDistillHost(model)
    attention = model.transformer_blocks[1].attn1
    seen = []
    handle = attention.register_forward_pre_hook(lambda m, a, k: seen.append((a, k)), with_kwargs=True)
    _, pairs = host.teacher_forced(x, t, cond)
    handle.remove()
    args, kwargs = seen[0]
    host.switch.mode = "student"
    with torch.no_grad():
        direct = attention(*args, **kwargs)
    assert torch.equal(pairs[1].student.detach(), direct)


@pytest.mark.parametrize("train_projections", [False, True])
def test_restore_gives_back_the_exact_teacher(train_projections):
    model, data = teacher_and_data("sd35_medium")
    x, t, cond = _inputs(data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = _run_plain(model, x, t, cond)
    host = DiffusersDistillHost(model, train_projections=train_projections)
    with torch.no_grad():  # pretend training moved every trainable tensor
        for p in host.trainable_parameters().values():
            p.add_(0.1)
    assert torch.equal(host.predict(x, t, cond, mode="teacher"), expected)
    host.restore()
    assert not is_edit_applied(model)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in model.parameters())


def test_trainable_tensors_are_the_adapter_plus_optional_projections():
    model, _ = teacher_and_data("sd35_medium")
    host = DiffusersDistillHost(model)
    names = host.trainable_parameters()
    assert all(k.split(".")[3] in ("conv_fusion", "key_compressor", "value_compressor") for k in names)
    host.restore()
    host = DiffusersDistillHost(model, train_projections=True)
    finetuned = {k.split(".")[3] for k in host.trainable_parameters()} & set(FINETUNE_NAMES)
    assert finetuned == set(FINETUNE_NAMES)  # SD3.5-M converts text stream, qk-norm and to_add_out too
    assert all(p.dtype == torch.float32 and p.requires_grad for p in host.trainable_parameters().values())
    host.restore()


def test_exported_adapter_reproduces_the_student():
    """Export (new modules + fine-tuned projections under canonical names) → apply_edit on a fresh teacher
    gives the student's prediction."""
    model, data = teacher_and_data("pixart_sigma")
    x, t, cond = _inputs(data)
    host = DiffusersDistillHost(model, train_projections=True)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in host.trainable_parameters().values():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    student = host.predict(x, t, cond, mode="student").detach()
    tensors = host.export_tensors()
    validate_tensors(host.adapter_config, tensors, "export")
    assert any(k.endswith("to_out.weight") for k in tensors)
    fresh, _ = teacher_and_data("pixart_sigma")
    apply_edit(fresh, Adapter(host.adapter_config, tensors))
    assert rel_rmse(_run_plain(fresh, x, t, cond), student) < 1e-6


def test_bf16_autocast_keeps_fp32_master_weights():
    model, data = teacher_and_data("pixart_sigma")
    host = DiffusersDistillHost(model, dtype=torch.bfloat16)
    x, t, cond = _inputs(data, rows=(0, 1))
    assert next(model.pos_embed.parameters()).dtype == torch.bfloat16
    _, pairs = host.teacher_forced(x, t, cond)
    sum(p.student.float().pow(2).mean() for p in pairs).backward()
    params = host.trainable_parameters().values()
    assert all(p.dtype == torch.float32 for p in params)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model, data = teacher_and_data("sd35_medium")
        host = DiffusersDistillHost(model)
        host.set_gradient_checkpointing(checkpointing)
        x, t, cond = _inputs(data, rows=(0, 1))
        _, pairs = host.teacher_forced(x, t, cond)
        sum(p.student.pow(2).mean() for p in pairs).backward()
        host.predict(x, t, cond).pow(2).mean().backward()
        grads.append({k: p.grad.clone() for k, p in host.trainable_parameters().items()})
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-5, atol=1e-7)
