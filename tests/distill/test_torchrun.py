"""``torchrun --nproc_per_node 2`` (gloo, CPU): both ranks make their share of the teacher-sample cache, train
on their rows of each global batch, and rank 0 writes one adapter — the same adapter, within float
tolerance, as one process training on the whole global batch (gradients are averaged, not summed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from edit_core.adapter import init_adapter_from_teacher, load_adapter
from edit_core.distill.plot import read_log
from tests.distill.helpers import cli_args, distill, write_cli_inputs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun is not installed next to this python")
def test_two_process_run_matches_one_process_on_the_same_global_batch(tmp_path, capsys):
    inputs = write_cli_inputs(tmp_path, "pixart_sigma")
    common = ["--steps", "3", "--lr", "3e-3", "--uncond-prob", "0.5", "--eval-batches", "0", "--checkpoint-every", "2"]
    two = tmp_path / "two.safetensors"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    proc = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "edit_core.distill",
                           *cli_args(inputs, two, "--batch", "1", *common)],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("finished step 3/3") == 1  # rank 0 reports (and writes) alone

    # the same teacher samples (sampling 2 steps from noise amplifies float-rounding differences between
    # batch layouts and thread counts), so the comparison isolates the data-parallel training
    shutil.copytree(tmp_path / "two.work" / "cache", tmp_path / "one.work" / "cache")
    one = tmp_path / "one.safetensors"
    code, _, err = distill(capsys, *cli_args(inputs, one, "--batch", "2", *common))
    assert code == 0, err

    parallel, single = load_adapter(str(two)), load_adapter(str(one))
    assert parallel.config.training["world_size"] == 2 and single.config.training["world_size"] == 1
    assert parallel.config.training["global_batch"] == single.config.training["global_batch"] == 2
    # gradients are averaged over ranks: the logged (post-all-reduce) gradient norms and the losses of every
    # step equal the single process's (a sum would double the norm; Adam alone would hide it)
    logs = [read_log(str(tmp_path / name / "log.jsonl")) for name in ("two.work", "one.work")]
    assert len(logs[0]) == len(logs[1]) == 3
    for a, b in zip(*logs):
        for key in ("grad_norm", "loss_feature", "loss_kd"):
            assert a[key] == pytest.approx(b[key], rel=2e-3), (a["step"], key)
    # and the adapters agree: Adam's first steps turn float-rounding noise on near-zero gradients into
    # per-element differences of up to a fraction of lr, so compare the whole update, not each element
    init = init_adapter_from_teacher(inputs["model"].state_dict(), num_heads=inputs["model"].config.num_attention_heads)
    update = torch.cat([(single.tensors[k] - init.tensors[k]).flatten() for k in init.tensors])
    difference = torch.cat([(parallel.tensors[k] - single.tensors[k]).flatten() for k in init.tensors])
    assert update.norm() > 1e-2  # training happened
    assert difference.norm() < 0.02 * update.norm(), (float(difference.norm()), float(update.norm()))
