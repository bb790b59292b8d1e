"""``bench`` names its families as the registry does: canonical names out, aliases and old results files in."""

from __future__ import annotations

import json
import os

import torch

from edit_core import bench
from edit_core.cli import main
from edit_core.families import get_family

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAST = ("--tiny", "--device", "cpu", "--repeats", "1", "--warmup", "0", "--threads", "1")


def test_family_aliases_are_read_as_canonical_names_in_benchmark_order():
    assert bench.parse_families("sd35, pixart") == ("pixart_sigma", "sd35_medium")
    assert bench.parse_families("pixart_sigma") == ("pixart_sigma",)


def test_a_registered_family_without_benchmark_shapes_is_a_one_line_error(capsys):
    assert main(["bench", *FAST, "--families", "sd35_large"]) == 2
    err = capsys.readouterr().err
    assert "no layer shapes for SD3.5-Large" in err and "pixart_sigma, sd35_medium" in err


def test_joint_families_get_the_joint_section_and_others_the_self_attention_ones():
    assert set(bench.family_sections("sd35_medium")) == {"joint", "tf-joint", "memory", "op-bw", "model"}
    assert set(bench.family_sections("pixart_sigma")) == {"op", "layer", "block", "tf-layer", "tf-block", "memory",
                                                          "op-bw", "model"}


def test_full_model_configs_are_the_registry_reference_configs():
    for name in bench.FAMILIES:
        assert bench.model_config(name) == dict(get_family(name).reference_config)


def test_tiny_model_configs_keep_the_reference_layout_at_width_64():
    for name in bench.FAMILIES:
        tiny, reference = bench.model_config(name, tiny=True), get_family(name).reference_config
        assert set(tiny) == set(reference)
        assert tiny["num_attention_heads"] * tiny["attention_head_dim"] == 64 and tiny["num_layers"] == 2


def test_old_results_file_with_short_family_names_reads_as_canonical():
    with open(os.path.join(REPO, "bench", "results-cpu.json")) as f:
        data = json.load(f)
    assert data["families"] == ["pixart", "sd35"]
    assert bench.BenchResults.from_json(data).config.families == ("pixart_sigma", "sd35_medium")


def test_rows_saved_with_short_family_names_print_the_same_report(tmp_path):
    json_path = tmp_path / "r.json"
    threads = torch.get_num_threads()
    assert main(["bench", *FAST, "--sections", "op-bw", "--bw-tokens", "16", "--json", str(json_path)]) == 0
    torch.set_num_threads(threads)
    data = json.loads(json_path.read_text())
    old = json.loads(json_path.read_text().replace('"pixart_sigma"', '"pixart"').replace('"sd35_medium"', '"sd35"'))
    assert {r["family"] for r in old["rows"]} == {"pixart", "sd35"}
    now, before = bench.BenchResults.from_json(data), bench.BenchResults.from_json(old)
    assert {r.family for r in before.rows} == {"pixart_sigma", "sd35_medium"}
    assert bench.report_lines(before) == bench.report_lines(now)
    assert any("PixArt-Σ" in line for line in bench.report_lines(now))
