"""Checkpoints and resume: a run killed after a checkpoint and resumed ends bit for bit where an
uninterrupted run ends (CPU, fixed seeds, deterministic algorithms); a stop request saves what it has."""

from __future__ import annotations

import json
import os

import pytest
import torch

from edit_core.distill.checkpoint import list_checkpoints
from edit_core.distill.data import stage_plan
from edit_core.distill.diffusers_host import DiffusersDistillHost
from edit_core.distill.plot import read_log
from edit_core.distill.schedules import schedule_for
from edit_core.distill.trainer import DistillConfig, DistillError, Trainer
from tests.distill.helpers import teacher_and_data

STEPS = 6


@pytest.fixture
def deterministic():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(previous)


def make_trainer(work_dir, crash_at=None, **overrides):
    """PixArt-Σ tiny teacher; two resolution stages; EMA, warm-up, cosine LR, grad accumulation and
    caption dropout on, so every piece of state must survive the resume."""
    model, data = teacher_and_data("pixart_sigma", items=6, latent_size=12)
    _, small = teacher_and_data("pixart_sigma", items=6, latent_size=8)
    host = DiffusersDistillHost(model)
    config = DistillConfig(steps=STEPS, batch_size=2, grad_accum=2, lr=1e-2, warmup_steps=2, lr_schedule="cosine",
                           ema_decay=0.9, uncond_prob=0.3, checkpoint_every=2, log_every=1, **overrides)

    def progress(step, total, values):
        if crash_at is not None and step == crash_at:
            raise KeyboardInterrupt("simulated kill")

    return Trainer(host, [small, data], stage_plan(STEPS, [64, 96], [1, 1]), schedule_for("pixart_sigma"), config,
                   work_dir=str(work_dir), progress=progress)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """The uninterrupted reference run (deterministic algorithms on)."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    try:
        work = tmp_path_factory.mktemp("straight")
        return work, make_trainer(work).run()
    finally:
        torch.use_deterministic_algorithms(previous)


def test_killed_run_resumes_exactly(straight_run, tmp_path, deterministic):
    reference = straight_run[1].adapter

    with pytest.raises(KeyboardInterrupt):
        make_trainer(tmp_path / "killed", crash_at=STEPS - 1).run()  # dies after step 5; last checkpoint: step 4
    assert list_checkpoints(str(tmp_path / "killed" / "checkpoints"))[-1] == 4
    resumed_trainer = make_trainer(tmp_path / "killed")
    resumed = resumed_trainer.run(resume=True)
    assert resumed.steps == STEPS and not resumed.stopped
    assert resumed.adapter.tensors.keys() == reference.tensors.keys()
    for key, value in reference.tensors.items():
        assert torch.equal(resumed.adapter.tensors[key], value), key
    # the log is continuous: steps 5.. were re-done, not duplicated
    assert [e["step"] for e in read_log(resumed.log_path)] == list(range(1, STEPS + 1))


def test_checkpoint_is_safetensors_plus_json(straight_run):
    tmp_path = straight_run[0]
    folder = tmp_path / "checkpoints"
    assert sorted(os.listdir(folder)) == ["step-00000004.json", "step-00000004.safetensors",
                                          "step-00000006.json", "step-00000006.safetensors"]  # keeps the newest 2
    info = json.loads((folder / "step-00000006.json").read_text())
    assert info["step"] == STEPS and info["data_position"]["resolution"] == 96
    from safetensors.torch import load_file
    tensors = load_file(str(folder / "step-00000006.safetensors"))
    assert any(k.endswith(".exp_avg_sq") for k in tensors) and any(k.startswith("ema.") for k in tensors)
    assert "rng.torch" in tensors
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_stop_request_saves_a_checkpoint_and_the_adapter_so_far(tmp_path):
    calls = []
    model, data = teacher_and_data("pixart_sigma", items=4)
    host = DiffusersDistillHost(model)
    config = DistillConfig(steps=10, batch_size=2, lr=1e-2, checkpoint_every=0, log_every=5, uncond_prob=0)
    trainer = Trainer(host, [data], stage_plan(10, [128]), schedule_for("pixart_sigma"), config,
                      work_dir=str(tmp_path), progress=lambda s, t, v: calls.append(s),
                      should_stop=lambda: len(calls) >= 3)
    result = trainer.run()
    assert result.stopped and result.steps == 3 and calls == [1, 2, 3]
    assert list_checkpoints(str(tmp_path / "checkpoints")) == [3]
    assert result.adapter.config.training["stopped_early"] is True
    assert [e["step"] for e in read_log(result.log_path)] == [3]  # the stop step is logged


def test_resume_with_other_settings_is_refused(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        make_trainer(tmp_path, crash_at=2).run()
    other = make_trainer(tmp_path, seed=1)
    with pytest.raises(DistillError, match="seed"):
        other.run(resume=True)


def test_a_param_group_lr_scale_multiplies_the_schedules_rate(tmp_path):
    """``lr_scale`` on an optimizer group (used by tools/recipe_ablation.py --new-lr-scale) scales that group's
    rate every step; scale 0 freezes the group while the rest trains."""
    model, data = teacher_and_data("pixart_sigma", items=4)
    host = DiffusersDistillHost(model)
    config = DistillConfig(steps=2, batch_size=2, lr=1e-2, checkpoint_every=0, log_every=1, uncond_prob=0)
    trainer = Trainer(host, [data], stage_plan(2, [128]), schedule_for("pixart_sigma"), config, work_dir=str(tmp_path))
    frozen = {k: p for k, p in trainer.params.items() if "key_compressor" in k}
    rest = {k: p for k, p in trainer.params.items() if k not in frozen}
    assert frozen and rest
    trainer.optimizer = torch.optim.AdamW([{"params": list(rest.values())},
                                           {"params": list(frozen.values()), "lr_scale": 0.0}], lr=config.lr)
    before = {k: p.detach().clone() for k, p in trainer.params.items()}
    trainer.run()
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [1e-2, 0.0]
    assert all(torch.equal(p, before[k]) for k, p in frozen.items())
    assert any(not torch.equal(p, before[k]) for k, p in rest.items())
