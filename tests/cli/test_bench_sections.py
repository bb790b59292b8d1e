"""``bench`` sections ``op-bw`` (op bandwidth) and ``model`` (whole transformer forward), on CPU with ``--tiny``."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from edit_core import bench
from edit_core.bench import planning
from edit_core.cli import main

FAST = ("--tiny", "--device", "cpu", "--repeats", "1", "--warmup", "0", "--threads", "1")


@pytest.fixture(scope="module")
def sections_run(tmp_path_factory):
    """One tiny run of both new sections with torch and triton rows (TRITON_INTERPRET=1 is set by conftest)."""
    threads = torch.get_num_threads()
    folder = tmp_path_factory.mktemp("bench")
    paths = {name: folder / name for name in ("r.json", "r.md")}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["bench", *FAST, "--sections", "op-bw,model", "--backend", "torch,triton", "--resolutions",
                     "128,512", "--json", str(paths["r.json"]), "--markdown", str(paths["r.md"])])
    torch.set_num_threads(threads)
    assert code == 0
    return out.getvalue(), json.loads(paths["r.json"].read_text()), paths


def _rows(results, section, backend=None):
    return [r for r in results["rows"] if r["section"] == section and backend in (None, r["backend"])]


# ---------------------------------------------------------------------------------------------- rows

def test_op_bw_rows_give_bandwidth_against_measured_copy(sections_run):
    stdout, results, _ = sections_run
    assert "copy bandwidth" in stdout and results["references"]["copy_gbps"] > 0
    rows = _rows(results, "op-bw", "torch")
    assert {(r["family"], r["tokens"]) for r in rows} == {(f, n) for f in ("pixart_sigma", "sd35_medium") for n in (64, 256)}
    for r in rows:
        assert r["device"] == results["device"]["name"] and r["heads"] == "4x16"
        n = r["tokens"]
        m = ((int(n ** 0.5) + 1) // 2) ** 2
        assert r["edit_bytes"] == 4 * (2 * n * 16 + 2 * m * 16) * 4  # fp32: read q, k, v + write out
        assert r["edit_gbps"] == pytest.approx(r["edit_bytes"] / r["edit"]["median_s"] / 1e9)
        assert r["copy_percent"] == pytest.approx(100 * r["edit_gbps"] / results["references"]["copy_gbps"])
        assert r["teacher"]["median_s"] > 0 and r["speedup"] > 0


def test_model_rows_give_seconds_speedup_and_tflops_against_matmul_peak(sections_run):
    stdout, results, _ = sections_run
    peak = results["references"]["matmul_tflops"]
    assert "matmul peak" in stdout and peak > 0
    rows = [r for r in _rows(results, "model", "torch") if r["edit"]["median_s"]]
    assert {(r["family"], r["resolution"]) for r in rows} == {
        ("pixart_sigma", 128), ("pixart_sigma", 512), ("sd35_medium", 128)}
    for r in rows:
        side = r["resolution"] // 16
        assert r["tokens"] == side * side and r["grid"] == f"{side}x{side}"
        assert r["speedup"] == pytest.approx(r["teacher"]["median_s"] / r["edit"]["median_s"])
        assert r["edit_tflops"] == pytest.approx(r["edit_flops"] / r["edit"]["median_s"] / 1e12)
        assert r["peak_percent"] == pytest.approx(100 * r["edit_tflops"] / peak)
    assert set(results["models"]) == {"pixart_sigma", "sd35_medium"}


def test_sd3_beyond_its_position_table_is_skipped_with_the_reason(sections_run):
    _, results, _ = sections_run
    (row,) = [r for r in _rows(results, "model", "torch") if r["family"] == "sd35_medium" and r["resolution"] == 512]
    assert row["teacher"]["skipped"] == row["edit"]["skipped"] == "pos_embed_max_size 16 caps SD3.5-M at 256² px"


def test_triton_rows_on_cpu_are_skipped_not_run_in_the_interpreter(sections_run):
    stdout, results, _ = sections_run
    triton = [r for r in _rows(results, "op-bw", "triton") + _rows(results, "model", "triton")
              if r["teacher"]["median_s"]]  # not the rows SD3's position table rules out
    assert len(triton) == 7
    for r in triton:
        assert r["edit"]["median_s"] is None and "interpreter" in r["edit"]["skipped"]
    assert "TRITON_INTERPRET=1 would run the Triton kernels" in stdout


def test_triton_without_interpreter_on_cpu_names_the_missing_gpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(planning, "triton_interpreted", lambda: False)
    assert "needs a CUDA device" in bench.timing_problem("triton", "cpu")
    assert bench.timing_problem("auto", "cpu") is None and bench.timing_problem("torch", "cpu") is None


def test_interpreter_is_never_timed_on_cuda_either(monkeypatch):
    monkeypatch.setattr(planning, "triton_interpreted", lambda: True)
    assert "interpreter" in bench.timing_problem("triton", "cuda")
    assert "interpreter" in bench.timing_problem("auto", "cuda")


# ---------------------------------------------------------------------------------------------- outputs

def test_markdown_has_device_date_command_and_one_table_per_section(sections_run):
    _, results, paths = sections_run
    text = paths["r.md"].read_text()
    assert text.startswith(f"## {results['device']['name']} (cpu) — {results['date']}")
    assert "| command | `python -m edit_core bench --tiny" in text
    assert text.count("\n### op-bw:") == 1 and text.count("\n### model:") == 1
    assert "| model | heads | tokens |" in text and "| model | image | tokens |" in text
    assert "copy bandwidth" in text and "matmul peak" in text


def test_from_json_reprints_and_rewrites_the_same_report(sections_run, capsys, tmp_path):
    stdout, _, paths = sections_run
    again_md = tmp_path / "again.md"
    assert main(["bench", "--from-json", str(paths["r.json"]), "--markdown", str(again_md)]) == 0
    again = capsys.readouterr().out
    live = "\n".join(line for line in stdout.splitlines() if not line.startswith("wrote "))
    assert again.replace(f"wrote {again_md}", "").strip() == live.strip()
    assert again_md.read_text() == paths["r.md"].read_text()


# ---------------------------------------------------------------------------------------------- planning

def test_model_first_size_over_budget_is_skipped_by_flops_over_peak_without_building(capsys, tmp_path):
    json_path = tmp_path / "r.json"
    threads = torch.get_num_threads()
    code = main(["bench", *FAST, "--sections", "model", "--families", "pixart", "--resolutions", "128",
                 "--budget-seconds", "1e-12", "--json", str(json_path)])
    torch.set_num_threads(threads)
    assert code == 0
    (row,) = json.loads(json_path.read_text())["rows"]
    assert row["teacher"]["skipped"].startswith("est. ≥") and "(FLOPs / matmul peak)" in row["teacher"]["skipped"]


def test_slow_calls_get_fewer_timed_calls_but_at_least_three():
    config = bench.BenchConfig(warmup=10, repeats=30, case_seconds=10)
    assert planning.call_counts(None, config) == (10, 30)
    assert planning.call_counts(0.01, config) == (10, 30)
    assert planning.call_counts(1.0, config) == (2, 10)
    assert planning.call_counts(60.0, config) == (0, 3)


def test_contenders_with_fewer_calls_drop_out_of_the_round():
    calls = []
    timings = bench.measure_interleaved([lambda: calls.append("a"), lambda: calls.append("b")], "cpu",
                                        warmups=[0, 0], repeats=[3, 1])
    assert calls == ["a", "b", "a", "a"] and [len(t.times_s) for t in timings] == [3, 1]


def test_bad_resolution_is_a_one_line_error(capsys):
    assert main(["bench", *FAST, "--sections", "model", "--resolutions", "1000"]) == 2
    err = capsys.readouterr().err
    assert "multiple of 16" in err and "Traceback" not in err


def test_processor_switch_teacher_is_the_untouched_model():
    config = bench.model_config("pixart_sigma", tiny=True)
    model = bench.build_random_model("pixart_sigma", config, "cpu", torch.float32)
    inputs = bench.model_inputs("pixart_sigma", config, 128, 8, 1, "cpu", torch.float32, torch.Generator().manual_seed(0))
    with torch.inference_mode():
        before = model(**inputs)[0]
        switch = bench.ProcessorSwitch(model, "pixart_sigma", 4, seed=0)
        switch.edit("torch")()
        edit = model(**inputs)[0]
        switch.teacher()
        after = model(**inputs)[0]
    assert len(switch.layers) == config["num_layers"]
    assert torch.equal(before, after) and not torch.equal(before, edit)


# ---------------------------------------------------------------------------------------------- FLOPs

def test_pixart_flops_match_a_hand_count():
    # C = 2 heads × 4 = 8, 1 block, 4 latent channels in / 8 out, patch 2, caption 6 → 8; grid 2×2 (N = 4, M = 1),
    # T = 3 caption tokens, r = 4 (ConvFusion hidden 2). Multiply-adds:
    config = dict(num_attention_heads=2, attention_head_dim=4, in_channels=4, out_channels=8, patch_size=2,
                  num_layers=1, caption_channels=6, cross_attention_dim=8)
    patch_in, patch_out = 4 * 4 * 4 * 8, 4 * 8 * 4 * 8             # N·in·p²·C, N·C·p²·out
    ada_norm_single = 256 * 8 + 8 * 8 + 6 * 8 * 8                  # timestep MLP + 6 modulations
    caption = 3 * (6 * 8 + 8 * 8)                                  # T·(caption·C + C²)
    self_attention = 4 * 4 * 64 + 2 * 4 * 4 * 8                    # q, k, v, out; q·kᵀ and p·v
    cross_attention = 2 * 4 * 64 + 2 * 3 * 8 * 8 + 2 * 4 * 3 * 8   # q, out; k, v of the caption; products
    mlp = 8 * 4 * 64
    teacher = patch_in + patch_out + ada_norm_single + caption + self_attention + cross_attention + mlp
    assert teacher == 8784
    assert bench.model_flops("pixart_sigma", config, (2, 2), 3, edit=False) == 2 * teacher
    edit_attention = (4 * (9 * 8 * 2 + 2 * 8)                     # ConvFusion: 3×3 C → C/4, 1×1 back
                      + 4 * 4 * 64                                 # q, k, v, out
                      + 2 * 9 * 1 * 8                              # two depthwise 3×3 stride-2 compressors
                      + 1 * 8 * 4 + 4 * 8 * 4 + 4 * 8)             # state kᵀv, q·S, q·z
    assert bench.model_flops("pixart_sigma", config, (2, 2), 3, edit=True) == 2 * (teacher - self_attention + edit_attention)
    assert bench.model_flops("pixart_sigma", config, (2, 2), 3, edit=False, batch=2) == 4 * teacher


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs):
    return sdpa_flop_count(query_shape, key_shape, value_shape)


@pytest.mark.parametrize("family", ["pixart_sigma", "sd35_medium"])
@pytest.mark.parametrize("edit", [False, True], ids=["sdpa", "edit"])
def test_model_flops_match_torch_flop_counter_on_an_odd_grid(family, edit):
    config = bench.model_config(family, tiny=True)
    model = bench.build_random_model(family, config, "cpu", torch.float32)
    if edit:
        bench.ProcessorSwitch(model, family, 4, seed=0).edit("torch")()
    inputs = bench.model_inputs(family, config, 144, 5, 1, "cpu", torch.float32, torch.Generator().manual_seed(0))
    cpu_sdpa = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu  # not in torch's own FLOP table
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping={cpu_sdpa: _cpu_sdpa_flops}) as counter:
        model(**inputs)
    assert bench.model_flops(family, config, (9, 9), 5, edit=edit) == counter.get_total_flops()


@pytest.mark.parametrize("repeats, warmup, says, never_says", [
    (1, 0, "median of 1 after 0 warm-up", ("never fewer", "no warm-up where")),
    (3, 1, "no warm-up where a call is estimated", ("never fewer",)),
    (30, 10, "never fewer than 3 calls", ()),
])
def test_header_states_only_the_timing_rules_that_apply(repeats, warmup, says, never_says):
    from edit_core.bench.report import _timing_text

    text = _timing_text(bench.BenchConfig(repeats=repeats, warmup=warmup))
    assert says in text and not any(s in text for s in never_says)


def test_memory_section_measures_edit_peak_per_token_count_without_a_teacher(tmp_path):
    json_path = tmp_path / "m.json"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["bench", *FAST, "--sections", "memory", "--tokens", "16,64", "--json", str(json_path)])
    assert code == 0
    rows = json.loads(json_path.read_text())["rows"]
    assert {(r["family"], r["tokens"]) for r in rows} == {(f, n) for f in ("pixart_sigma", "sd35_medium")
                                                          for n in (16, 64)}
    assert all(r["teacher"]["median_s"] is None and r["edit"]["peak_bytes"] is not None for r in rows)
    assert "per token" in out.getvalue() and "KiB" in out.getvalue()
