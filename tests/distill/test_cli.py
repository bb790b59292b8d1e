"""``distill`` command end to end (in-process, through an argparse root built here like edit_core.cli's),
and every bad input refused with one clear line before any training starts."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from edit_core.adapter import load_adapter
from tests.distill.helpers import cli_args, distill, write_cli_inputs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def pixart_inputs(tmp_path_factory):
    return write_cli_inputs(tmp_path_factory.mktemp("pixart_cli"), "pixart_sigma")


@pytest.mark.parametrize("family", ["pixart_sigma", "sd35_medium"])
def test_cli_writes_a_loadable_adapter_log_and_plot(family, tmp_path, capsys):
    inputs = write_cli_inputs(tmp_path, family)
    out = tmp_path / "edit.safetensors"
    code, stdout, err = distill(capsys, *cli_args(inputs, out, "--steps", "3", "--batch", "2", "--lr", "1e-3",
                                                  "--resolution", "64,128", "--aspect-ratios", "1:1,2:1",
                                                  "--checkpoint-every", "2"))
    assert code == 0, err
    adapter = load_adapter(str(out), expect_family=family)
    training = adapter.config.training
    assert training["stage"] == "distilled" and training["steps"] == 3 and training["resolutions"] == [64, 128]
    assert training["teacher"] == "teacher.safetensors" and training["data"] == "teacher samples"
    assert set(training["error_vs_teacher"]) == {"init", "final"}
    work = tmp_path / "edit.work"
    log = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3]
    assert {"loss", "loss_feature", "loss_kd", "loss_task", "lr"} <= set(log[0])
    assert [e["resolution"] for e in log] == [64, 64, 128]  # progressive stages: 6:3 split of 3 steps → 2 + 1
    assert (work / "loss.png").read_bytes()[:8] == PNG_MAGIC
    shards = os.listdir(work / "cache" / "128")
    assert "index.json" in shards and "null_cond.safetensors" in shards
    assert any(name.startswith("12x22-") for name in shards)  # the 2:1 bucket at 128 px: 96×176 px
    assert "finished step 3/3" in stdout


def test_cli_resume_continues_and_refuses_silent_restarts(pixart_inputs, tmp_path, capsys):
    out = tmp_path / "a.safetensors"
    base = cli_args(pixart_inputs, out, "--batch", "2", "--checkpoint-every", "1", "--eval-batches", "0")
    assert distill(capsys, *base, "--steps", "2")[0] == 0
    code, _, err = distill(capsys, *base, "--steps", "2")
    assert code == 2 and "--resume" in err  # an earlier run's checkpoints are never silently overwritten
    code, stdout, err = distill(capsys, *base, "--steps", "2", "--resume")
    assert code == 0 and "resuming at step 2" in stdout, err


# ---------------------------------------------------------------------------------------------- bad inputs

@pytest.fixture
def never_trains(monkeypatch):
    """Fail loudly if a bad input got as far as loading the teacher."""
    from edit_core.distill import teachers

    def refuse(*args, **kwargs):
        raise AssertionError("the teacher was loaded although the input was bad")

    monkeypatch.setattr(teachers, "load_teacher", refuse)


def _expect_error(capsys, argv, *needles):
    code, _, err = distill(capsys, *argv)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_teacher_that_is_not_pixart_sigma_or_sd35_is_refused(pixart_inputs, tmp_path, capsys, never_trains):
    other = tmp_path / "unet.safetensors"
    unet = {"conv_in.weight": torch.zeros(4, 4, 3, 3), "down_blocks.0.resnets.0.conv1.weight": torch.zeros(4, 4, 3, 3)}
    save_file(unet, str(other), metadata={"config": "{}"})
    inputs = dict(pixart_inputs, teacher=str(other))
    _expect_error(capsys, cli_args(inputs, tmp_path / "a.safetensors"), "PixArt-Sigma", "SD3.5-Medium")

    pipeline = tmp_path / "flux"
    pipeline.mkdir()
    (pipeline / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    inputs = dict(pixart_inputs, teacher=str(pipeline))
    _expect_error(capsys, cli_args(inputs, tmp_path / "a.safetensors"), "FluxPipeline", "PixArtSigmaPipeline")


def test_empty_prompt_file_is_refused(pixart_inputs, tmp_path, capsys, never_trains):
    empty = tmp_path / "prompts.txt"
    empty.write_text("# only a comment\n\n   \n")
    inputs = dict(pixart_inputs, prompts=str(empty))
    _expect_error(capsys, cli_args(inputs, tmp_path / "a.safetensors"), "has no prompts")


def test_unwritable_output_is_refused(pixart_inputs, tmp_path, capsys, never_trains):
    _expect_error(capsys, cli_args(pixart_inputs, tmp_path / "missing" / "a.safetensors"), "does not exist")
    _expect_error(capsys, cli_args(pixart_inputs, tmp_path), "is a folder")


@pytest.mark.parametrize("resolution", ["500", "512,1000"])
def test_resolution_off_the_patch_grid_is_refused(pixart_inputs, tmp_path, capsys, never_trains, resolution):
    argv = cli_args(pixart_inputs, tmp_path / "a.safetensors") + ["--resolution", resolution]
    _expect_error(capsys, argv, "not a multiple of 16", "VAE factor 8 × patch 2")


def test_text_embeddings_that_do_not_match_are_refused(pixart_inputs, tmp_path, capsys, never_trains):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\ntwo\n")  # the embeddings file has 4 rows
    _expect_error(capsys, cli_args(dict(pixart_inputs, prompts=str(prompts)), tmp_path / "a.safetensors"),
                  "4 rows", "2 prompts")
    argv = cli_args(pixart_inputs, tmp_path / "a.safetensors")
    del argv[2:4]  # no --text-embeddings for a bare transformer file
    _expect_error(capsys, argv, "--text-embeddings")


def test_cli_on_a_pipeline_folder_encodes_prompts_and_images(tmp_path, capsys):
    from PIL import Image

    from tests.distill.helpers import write_tiny_pixart_pipeline

    pipeline = write_tiny_pixart_pipeline(tmp_path)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a tiny red cat\na blue dog\n")
    common = ["--teacher", pipeline, "--prompts", str(prompts), "--resolution", "64", "--steps", "2", "--batch", "2",
              "--sample-steps", "2", "--device", "cpu", "--no-progress", "--eval-batches", "1"]
    code, _, err = distill(capsys, *common, "--out", str(tmp_path / "prompts.safetensors"))
    assert code == 0, err
    assert load_adapter(str(tmp_path / "prompts.safetensors")).config.training["data"] == "teacher samples"

    images = tmp_path / "images"
    images.mkdir()
    for i, color in enumerate([(200, 20, 20), (20, 200, 20), (20, 20, 200)]):
        Image.new("RGB", (80 + 16 * i, 64), color).save(images / f"{i}.png")
        (images / f"{i}.txt").write_text("a photo of a field")
    code, _, err = distill(capsys, *common, "--images", str(images), "--out", str(tmp_path / "images.safetensors"),
                           "--log-every", "1", "--task-weight", "1")  # (the default recipe leaves it off)
    assert code == 0, err
    training = load_adapter(str(tmp_path / "images.safetensors")).config.training
    assert training["data"] == "images" and training["loss_weights"]["task"] == 1.0
    log = [json.loads(line) for line in (tmp_path / "images.work" / "log.jsonl").read_text().splitlines()]
    assert all(e["loss_task"] > 0 for e in log)
