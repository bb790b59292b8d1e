"""The default recipe as the ``distill`` command applies it (``edit_core.distill.recipe``), and training on
clean latents given by the user (``--latents``)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from edit_core.adapter import load_adapter
from edit_core.distill import recipe
from tests.distill.helpers import cli_args, distill, write_cli_inputs


@pytest.fixture(scope="module")
def pixart_inputs(tmp_path_factory):
    return write_cli_inputs(tmp_path_factory.mktemp("pixart_recipe"), "pixart_sigma")


def _latents(path, n=6, channels=4, size=16, prompt_index=None):
    tensors = {"latents": torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(0))}
    if prompt_index is not None:
        tensors["prompt_index"] = torch.tensor(prompt_index)
    save_file(tensors, str(path))
    return str(path)


def test_latents_are_real_data_and_projections_train_by_default(pixart_inputs, tmp_path, capsys):
    latents = _latents(tmp_path / "latents.safetensors", prompt_index=[0, 1, 2, 3, 0, 1])
    out = tmp_path / "a.safetensors"
    code, stdout, err = distill(capsys, *cli_args(pixart_inputs, out, "--latents", latents, "--steps", "2", "--batch",
                                                  "2", "--eval-batches", "0"))
    assert code == 0, err
    adapter = load_adapter(str(out))
    training = adapter.config.training
    assert training["data"] == "images" and training["data_items"] == [6] and training["resolutions"] == [128]
    assert training["loss_weights"]["task"] == recipe.TASK_WEIGHT == 0.0  # the target is the teacher
    assert training["trainable"] == "adapter+projections" and adapter.finetuned(0, "attn")
    width = adapter.config.hidden_size
    assert training["lr"] == pytest.approx(recipe.learning_rate(width))
    assert f"learning rate {recipe.learning_rate(width):.3g} (default for width {width})" in stdout

    frozen = tmp_path / "frozen.safetensors"
    code, _, err = distill(capsys, *cli_args(pixart_inputs, frozen, "--latents", latents, "--steps", "1", "--batch",
                                             "2", "--eval-batches", "0", "--no-train-projections", "--lr", "1e-3"))
    assert code == 0, err
    frozen = load_adapter(str(frozen))
    assert not frozen.finetuned(0, "attn") and frozen.config.training["lr"] == 1e-3


def test_the_learning_rate_follows_the_width():
    assert recipe.learning_rate(96) == pytest.approx(1e-3)
    assert recipe.learning_rate(1152) == pytest.approx(1e-3 * 96 / 1152)
    assert recipe.learning_rate(1536) < recipe.learning_rate(1152)


@pytest.mark.parametrize("problem, needle", [
    ("channels", "channels"), ("prompts", "prompt"), ("resolution", "fix the resolution"), ("images", "choose one"),
    ("index", "prompt_index")])
def test_bad_latents_are_refused_before_training(pixart_inputs, tmp_path, capsys, problem, needle, monkeypatch):
    from edit_core.distill import teachers

    monkeypatch.setattr(teachers, "load_teacher", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    path = tmp_path / "latents.safetensors"
    extra = []
    if problem == "channels":
        _latents(path, channels=3)
    elif problem == "prompts":
        _latents(path, n=5)  # 4 prompts, 5 latents, no prompt_index
    elif problem == "index":
        _latents(path, prompt_index=[0, 1, 2, 3, 4, 0])  # row 4 does not exist
    else:
        _latents(path)
        extra = ["--resolution", "256"] if problem == "resolution" else ["--images", str(tmp_path)]  # (last wins)
    argv = cli_args(pixart_inputs, tmp_path / "a.safetensors", "--latents", str(path), *extra)
    code, _, err = distill(capsys, *argv)
    assert code == 2 and err.startswith("error: ") and needle in err, err


def test_training_noise_uses_the_teachers_sampling_shift(tmp_path, capsys):
    inputs = write_cli_inputs(tmp_path, "sd35_medium")
    for extra, shift in (((), 3.0), (("--flow-shift", "1.5"), 1.5)):
        out = tmp_path / f"shift{shift}.safetensors"
        code, _, err = distill(capsys, *cli_args(inputs, out, "--steps", "1", "--batch", "1", "--eval-batches", "0",
                                                 "--work-dir", str(tmp_path / f"w{shift}"), *extra))
        assert code == 0, err
        assert load_adapter(str(out)).config.training["schedule"]["shift"] == shift
