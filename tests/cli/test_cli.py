"""``python -m edit_core``: every subcommand in-process through ``cli.main(argv)`` (returns the exit code)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from edit_core import tiny
from edit_core.adapter import load_adapter
from edit_core.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def comfy_pixart(tmp_path):
    path = tmp_path / "pixart_comfy.safetensors"
    save_file(tiny.comfy_pixart_state_dict(hidden=64, depth=2), str(path))
    return path


@pytest.fixture(scope="module")
def sd3_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd35") / "transformer"
    tiny.build_tiny_sd3().save_pretrained(str(folder), safe_serialization=True)
    return folder


# ---------------------------------------------------------------------------------------------- init-adapter

def test_init_adapter_from_comfy_pixart_file(capsys, comfy_pixart, tmp_path):
    out = tmp_path / "edit.safetensors"
    code, stdout, _ = run(capsys, "init-adapter", "--teacher", str(comfy_pixart), "--out", str(out), "--heads", "4")
    assert code == 0
    adapter = load_adapter(str(out))
    assert (adapter.config.family, adapter.config.num_blocks, adapter.config.num_heads) == ("pixart_sigma", 2, 4)
    assert "PixArt-Sigma" in stdout


def test_init_adapter_reads_prefixed_full_checkpoint(capsys, tmp_path):
    teacher = tmp_path / "checkpoint.safetensors"
    state = tiny.comfy_pixart_state_dict(hidden=64, depth=3, prefix="model.diffusion_model.")
    state["first_stage_model.decoder.weight"] = torch.zeros(2)  # a VAE next to it, as in full checkpoints
    save_file(state, str(teacher))
    out = tmp_path / "edit.safetensors"
    assert run(capsys, "init-adapter", "--teacher", str(teacher), "--out", str(out), "--heads", "4")[0] == 0
    assert load_adapter(str(out)).config.num_blocks == 3


def test_init_adapter_from_diffusers_sd3_folder_uses_config(capsys, sd3_folder, tmp_path):
    out = tmp_path / "mm.safetensors"
    code, _, _ = run(capsys, "init-adapter", "--teacher", str(sd3_folder.parent), "--out", str(out))
    assert code == 0
    config = load_adapter(str(out)).config
    assert (config.family, config.num_blocks, config.num_heads, config.qk_norm) == ("sd35_medium", 2, 4, "rms")
    assert config.attn2_blocks == [0]


def test_init_adapter_no_attn2_leaves_dual_attention_softmax(capsys, sd3_folder, tmp_path):
    out = tmp_path / "mm.safetensors"
    assert run(capsys, "init-adapter", "--teacher", str(sd3_folder), "--out", str(out), "--no-attn2")[0] == 0
    assert load_adapter(str(out)).config.attn2_blocks == []


def test_init_adapter_reads_sharded_diffusers_folder(capsys, tmp_path):
    folder = tmp_path / "sharded"
    tiny.build_tiny_sd3().save_pretrained(str(folder), safe_serialization=True, max_shard_size="300KB")
    assert (folder / "diffusion_pytorch_model.safetensors.index.json").is_file()
    out = tmp_path / "mm.safetensors"
    assert run(capsys, "init-adapter", "--teacher", str(folder), "--out", str(out))[0] == 0
    assert load_adapter(str(out)).config.num_blocks == 2


def test_init_adapter_pixart_width_not_multiple_of_72_needs_heads(capsys, comfy_pixart, tmp_path):
    code, _, err = run(capsys, "init-adapter", "--teacher", str(comfy_pixart), "--out", str(tmp_path / "a.safetensors"))
    assert code == 2
    assert "num_heads" in err and "Traceback" not in err


def test_init_adapter_missing_teacher_is_one_line_error(capsys, tmp_path):
    code, _, err = run(capsys, "init-adapter", "--teacher", str(tmp_path / "nope.safetensors"),
                       "--out", str(tmp_path / "a.safetensors"))
    assert code == 2
    assert "nope.safetensors" in err and "does not exist" in err and len(err.strip().splitlines()) == 1


def test_init_adapter_refuses_pickle_teacher(capsys, tmp_path):
    teacher = tmp_path / "teacher.ckpt"
    torch.save({"blocks.0.attn.qkv.weight": torch.zeros(3, 1)}, str(teacher))
    code, _, err = run(capsys, "init-adapter", "--teacher", str(teacher), "--out", str(tmp_path / "a.safetensors"))
    assert code == 2
    assert "pickle" in err and "teacher.ckpt" in err


def test_init_adapter_unsupported_model_reports_family_error(capsys, tmp_path):
    teacher = tmp_path / "unet.safetensors"
    save_file({"input_blocks.0.0.weight": torch.zeros(4, 4)}, str(teacher))
    code, _, err = run(capsys, "init-adapter", "--teacher", str(teacher), "--out", str(tmp_path / "a.safetensors"))
    assert code == 2
    assert "not a model this pack converts" in err and "Traceback" not in err


def test_init_adapter_unwritable_output(capsys, comfy_pixart, tmp_path):
    code, _, err = run(capsys, "init-adapter", "--teacher", str(comfy_pixart), "--heads", "4",
                       "--out", str(tmp_path / "missing" / "a.safetensors"))
    assert code == 2
    assert "cannot write" in err and "does not exist" in err


# ---------------------------------------------------------------------------------------------- inspect

def test_inspect_describes_family_and_blocks(capsys, comfy_pixart, tmp_path):
    out = tmp_path / "edit.safetensors"
    assert run(capsys, "init-adapter", "--teacher", str(comfy_pixart), "--out", str(out), "--heads", "4")[0] == 0
    code, stdout, _ = run(capsys, "inspect", str(out))
    assert code == 0
    assert "PixArt-Sigma (2 blocks, width 64)" in stdout and "2 attention layers" in stdout


def test_inspect_garbage_file_names_it(capsys, tmp_path):
    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(os.urandom(256))
    code, _, err = run(capsys, "inspect", str(bad))
    assert code == 2
    assert "garbage.safetensors" in err and "Traceback" not in err


def test_inspect_pickle_file_is_refused(capsys, tmp_path):
    bad = tmp_path / "adapter.pt"
    torch.save({"x": torch.zeros(1)}, str(bad))
    code, _, err = run(capsys, "inspect", str(bad))
    assert code == 2
    assert "adapter.pt" in err and "pickle" in err


def test_module_entry_point_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(b"not an adapter at all")
    proc = subprocess.run([sys.executable, "-m", "edit_core", "inspect", str(bad)], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert proc.returncode == 2
    assert "garbage.safetensors" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------- bench

def test_bench_tiny_writes_json_and_plot(capsys, tmp_path):
    json_path, plot_path = tmp_path / "r.json", tmp_path / "latency.png"
    code, stdout, _ = run(capsys, "bench", "--tiny", "--device", "cpu", "--tokens", "64,256", "--repeats", "2",
                          "--warmup", "1", "--json", str(json_path), "--plot", str(plot_path))
    assert code == 0
    assert "speed-up" in stdout and "NOT the real model widths" in stdout
    results = json.loads(json_path.read_text())
    assert results["device"]["type"] == "cpu" and results["dtype"] == "fp32" and results["torch"] == torch.__version__
    assert "date" in results and results["command"].startswith("python -m edit_core bench")
    assert {(r["section"], r["tokens"]) for r in results["rows"]} == \
        {(s, n) for s in ("op", "layer", "joint", "block", "tf-layer", "tf-joint", "tf-block") for n in (64, 256)}
    assert {r["backend"] for r in results["rows"] if r["section"].startswith("tf-")} == {"sdpa"}
    for row in results["rows"]:
        for side in ("teacher", "edit"):
            assert row[side]["median_s"] > 0 and len(row[side]["times_s"]) == 2 and row[side]["skipped"] is None
        assert row["speedup"] == pytest.approx(row["teacher"]["median_s"] / row["edit"]["median_s"], rel=1e-3)
    assert plot_path.read_bytes()[:8] == PNG_MAGIC


def test_bench_from_json_reprints_the_same_table(capsys, tmp_path):
    json_path = tmp_path / "r.json"
    code, live, _ = run(capsys, "bench", "--tiny", "--device", "cpu", "--sections", "op", "--tokens", "16,64",
                        "--repeats", "1", "--warmup", "0", "--json", str(json_path))
    assert code == 0
    code, again, _ = run(capsys, "bench", "--from-json", str(json_path))
    assert code == 0
    assert again.strip() == live.replace(f"wrote {json_path}", "").strip()


def test_bench_skips_cases_over_budget_by_extrapolation(capsys, tmp_path):
    json_path = tmp_path / "r.json"
    code, stdout, _ = run(capsys, "bench", "--tiny", "--device", "cpu", "--sections", "op", "--tokens", "16,64",
                          "--repeats", "1", "--warmup", "0", "--budget-seconds", "1e-9", "--json", str(json_path))
    assert code == 0
    rows = json.loads(json_path.read_text())["rows"]
    assert rows[0]["teacher"]["skipped"] is None  # nothing to extrapolate from at the first token count
    assert rows[1]["teacher"]["skipped"].startswith("est.") and rows[1]["edit"]["skipped"].startswith("est.")
    assert "skipped: est." in stdout


def test_bench_families_select_sections(capsys, tmp_path):
    json_path = tmp_path / "r.json"
    assert run(capsys, "bench", "--tiny", "--device", "cpu", "--families", "sd35", "--tokens", "16",
               "--repeats", "1", "--warmup", "0", "--json", str(json_path))[0] == 0
    assert {r["section"] for r in json.loads(json_path.read_text())["rows"]} == {"joint", "tf-joint"}


def test_bench_times_teacher_and_edit_interleaved():
    from edit_core.bench import measure_interleaved

    calls = []
    timings = measure_interleaved([lambda: calls.append("teacher"), lambda: calls.append("edit")], "cpu",
                                  warmups=[1, 1], repeats=3)
    assert calls == ["teacher", "edit"] + ["teacher", "edit"] * 3  # warm-ups, then round-robin timed calls
    assert [len(t.times_s) for t in timings] == [3, 3]


@pytest.mark.parametrize("argv, message", [
    (("--tokens", "1000"), "not a square"),
    (("--families", "flux"), "unknown"),
    (("--tokens", "16", "--plot", "/nonexistent-dir/p.png"), "does not exist"),
    (("--from-json", "/nonexistent-dir/r.json"), "cannot read"),
])
def test_bench_bad_settings_are_one_line_errors(capsys, argv, message):
    code, _, err = run(capsys, "bench", "--tiny", "--device", "cpu", *argv)
    assert code == 2
    assert message in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------- demo

def test_demo_writes_the_picture_and_keeps_the_adapter_it_names(capsys, tmp_path):
    out = tmp_path / "edit-demo"
    code, stdout, _ = run(capsys, "demo", "--quick", "--out", str(out))
    assert code == 0  # exit 1 when distillation did not lower the error or remove_edit did not restore
    png, adapter = out / "edit-demo.png", out / "edit-demo-adapter.safetensors"
    assert png.read_bytes()[:8] == PNG_MAGIC and str(png) in stdout
    assert str(adapter) in stdout and load_adapter(str(adapter)).config.family == "pixart_sigma"  # still there
    assert sorted(p.name for p in out.iterdir()) == ["edit-demo-adapter.safetensors", "edit-demo.png"]
    assert "tiny trained PixArt-Sigma" in stdout and "bit-identical again: yes" in stdout
    assert "untrained" in stdout and "distilled" in stdout
    assert "speed" not in stdout.replace("not EDiT's speed", "")  # no timings from a 256-token model


def test_demo_picture_grid_has_three_rows_of_zoomed_samples():
    from edit_core.demo import image_grid

    rows = [torch.full((2, 3, 4, 4), v) for v in (0.0, 0.5, 1.0)]
    grid = image_grid(rows, zoom=2, gap=1)
    assert grid.shape == (3 * 8 + 2, 2 * 8 + 1, 3) and grid.dtype == torch.uint8
    assert int(grid[0, 0, 0]) == 0 and int(grid[9, 0, 0]) == 128 and int(grid[-1, -1, 0]) == 255


def test_demo_refuses_a_file_as_out(capsys, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    code, _, err = run(capsys, "demo", "--quick", "--out", str(target))
    assert code == 2 and "is a file" in err


# ---------------------------------------------------------------------------------------------- help

@pytest.mark.parametrize("command", ["init-adapter", "inspect", "bench", "demo"])
def test_every_subcommand_has_help(capsys, command):
    code, stdout, _ = run(capsys, command, "--help")
    assert code == 0
    assert f"python -m edit_core {command}" in stdout and len(stdout.splitlines()) > 5


def test_no_command_prints_help_and_fails(capsys):
    code, stdout, _ = run(capsys)
    assert code == 2
    assert "init-adapter" in stdout and "bench" in stdout


def test_init_adapter_refuses_a_folder_that_is_not_a_model(capsys, tmp_path):
    folder = tmp_path / "downloads"
    folder.mkdir()
    save_file({"stray": torch.zeros(2)}, str(folder / "something.safetensors"))
    code, _, err = run(capsys, "init-adapter", "--teacher", str(folder), "--out", str(tmp_path / "a.safetensors"))
    assert code == 2
    assert "neither model_index.json" in err and "give the .safetensors file" in err
    assert not (tmp_path / "a.safetensors").exists()


def test_inspect_a_folder_says_it_is_a_folder(capsys, tmp_path):
    (tmp_path / "mine.safetensors").write_bytes(b"")
    code, _, err = run(capsys, "inspect", str(tmp_path))
    assert code == 2
    assert "is a folder, not an adapter file" in err and "mine.safetensors" in err and "no such file" not in err
