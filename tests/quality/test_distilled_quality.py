"""``python -m edit_core quality`` in --quick mode (what CI can afford): every distillable variant goes through
the real ``distill`` command with its defaults, the report, JSON, picture and merge of families work."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("matplotlib")

from edit_core import quality  # noqa: E402
from edit_core.distill import recipe  # noqa: E402
from edit_core.quality import distilled  # noqa: E402


def test_every_distillable_variant_is_listed_default_first():
    assert distilled.distillable("pixart_sigma") == ["edit", "edit_no_convfusion", "kv_compress", "linfusion", "sana"]
    assert distilled.distillable("sd35_medium") == ["mm_edit", "kv_compress", "mm_linear"]


def test_the_command_line_is_the_default_recipe_plus_the_teachers_facts(tmp_path):
    argv = distilled.distill_argv("sd35_medium", "mm_linear", {"embeddings": "e", "prompts": "p", "latents": "l"},
                                  str(tmp_path / "a.safetensors"), distilled.Budget())
    assert not {"--lr", "--kd-weight", "--feature-weight", "--train-projections", "--no-train-projections",
                "--task-weight", "--warmup-steps"} & set(argv)
    assert argv[argv.index("--steps") + 1] == "1000" and argv[argv.index("--batch") + 1] == "16"
    assert argv[argv.index("--flow-shift") + 1] == "1"  # the tiny SD3.5 teacher's own shift
    args = distilled._parse(argv)
    assert args.train_projections is recipe.TRAIN_PROJECTIONS and args.lr is None  # the recipe's width rule


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("quality"))
    quality.run(["pixart_sigma"], out, quick=True, variants=["edit", "sana"], parts=["distilled"], log=lambda s: None)
    first = json.load(open(os.path.join(out, "quality.json")))
    quality.run(["sd35_medium"], out, quick=True, variants=["mm_linear"], parts=["distilled"], log=lambda s: None)
    return out, first


def test_quick_run_measures_each_student(quick_report):
    out, first = quick_report
    rows = first["distilled"]["pixart_sigma"]["rows"]
    assert [(r["variant"], r["kind"]) for r in rows] == [("edit", "untrained init"), ("kv_pool", "training-free, r = 2"),
                                                        ("edit", "distilled"), ("sana", "distilled")]
    for row in rows:
        assert 0 < row["output_error"] < 2 and row["student_loss"] > 0 and row["sample_error"] > 0
    edit, sana = rows[2], rows[3]
    assert edit["default"] and not sana["default"]
    assert [s for s, _ in edit["curve"]] == [distilled.QUICK.steps]
    assert set(edit["layer_errors"]) == {f"blocks.{i}.attn" for i in range(4)}
    assert sana["trained_tensors"] > 0  # sana has no tensors of its own: these are its trained projections
    for row in rows:  # the 4 quick items' stratified timesteps fall one in each quarter
        assert list(row["error_by_t"]) == ["0–250", "250–500", "500–750", "750–1000"]
        assert all(0 <= e < 2 for e in row["error_by_t"].values())


def test_error_by_timestep_splits_items_by_their_timestep():
    import torch

    reference = torch.ones(5, 2, 3, 3)
    prediction = reference.clone()
    prediction[0] += 0.5  # t = 10: error 0.5 in the first range only
    prediction[4] -= 0.25  # t = 1000 (SD3's end point) belongs to the last range
    got = distilled.error_by_timestep(prediction, reference, torch.tensor([10, 260, 600, 999.5, 1000]))
    assert got == pytest.approx({"0–250": 0.5, "250–500": 0.0, "500–750": 0.0, "750–1000": 0.25 / 2 ** 0.5})
    assert list(distilled.error_by_timestep(prediction[:1], reference[:1], torch.tensor([3]))) == ["0–250"]


def test_families_merge_into_one_report_and_picture(quick_report):
    out, _ = quick_report
    merged = json.load(open(os.path.join(out, "quality.json")))
    assert list(merged["distilled"]) == ["pixart_sigma", "sd35_medium"]
    assert [r["variant"] for r in merged["distilled"]["sd35_medium"]["rows"]] == ["mm_edit", "kv_pool", "mm_linear"]
    text = open(os.path.join(out, "QUALITY.md"), encoding="utf-8").read()
    assert "--quick run" in text and "| **edit** (default) | distilled |" in text and "mm_linear" in text
    assert "| student | kind | t 0–250 | t 250–500 | t 500–750 | t 750–1000 |" in text
    assert "quality --out bench --quick`" in text  # the command that made these numbers
    with open(os.path.join(out, "quality.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_regenerate_line_names_the_budget_that_made_the_numbers(quick_report):
    out, _ = quick_report
    result = json.load(open(os.path.join(out, "quality.json")))
    result["quick"] = False
    for res in result["distilled"].values():
        res["budget"]["steps"] = 200
    assert "`python -m edit_core quality --out bench --steps 200`" in "\n".join(quality.report_lines(result))
    for res in result["distilled"].values():
        res["budget"]["steps"] = distilled.Budget().steps
    assert "`python -m edit_core quality --out bench`" in "\n".join(quality.report_lines(result))
