"""Distillation smoke test for the families without an embedded quick config: ``quick_distill`` on a tiny
SD3-Medium (flow, no qk-norm) and PixArt-α (ε, micro-conditions) teacher runs, and exports an adapter for
that family that loads and validates like a file would. Plumbing only (two steps), not learning."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("diffusers")

from edit_core.adapter import adapter_from_state, save_adapter, load_adapter  # noqa: E402
from edit_core.distill.quick import quick_distill, structured_tiny_teacher  # noqa: E402
from edit_core.families import get_family  # noqa: E402
from edit_core.integrations.diffusers import apply_edit, is_edit_applied, remove_edit  # noqa: E402
from tests.test_families import TINY_CONFIGS  # noqa: E402


@pytest.mark.parametrize("family", ["sd3_medium", "pixart_alpha"])
def test_quick_distill_exports_a_valid_adapter_for_the_family(family, tmp_path):
    teacher = structured_tiny_teacher(family, config=TINY_CONFIGS[family])
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    run = quick_distill(family, teacher=teacher, steps=2, batch_size=2, items=2, latent_size=8)

    adapter = run.adapter
    config = adapter.config
    assert run.steps == 2 and math.isfinite(run.error_before) and math.isfinite(run.error_after)
    assert config.family == family and config.variant == get_family(family).default_variant
    assert (config.num_blocks, config.num_heads) == (TINY_CONFIGS[family]["num_layers"],
                                                     TINY_CONFIGS[family]["num_attention_heads"])
    assert config.training["schedule"]["schedule"] == {"ddpm": "ddpm_epsilon",
                                                       "flow": "rectified_flow"}[get_family(family).schedule["kind"]]
    reloaded = adapter_from_state(adapter.tensors, config.to_metadata(), "<distilled>")
    assert reloaded.config.family == family
    path = str(tmp_path / "adapter.safetensors")
    save_adapter(adapter, path)
    assert load_adapter(path, expect_family=family).config.layers() == config.layers()

    # the teacher comes back unconverted and unchanged, and takes the adapter it produced
    assert not is_edit_applied(teacher)
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in before.items())
    apply_edit(teacher, reloaded)
    remove_edit(teacher)


@pytest.mark.parametrize("micro_conditions, family", [(False, "pixart_sigma"), (True, "pixart_alpha")])
def test_pixart_alpha_pipeline_folder_is_accepted_with_or_without_micro_conditions(micro_conditions, family,
                                                                                   tmp_path):
    """PixArt-α 512 has no micro-conditions and reads as PixArt-Σ (converted identically); its
    ``PixArtAlphaPipeline`` folder is still a teacher. Only headers and configs are read."""
    import json

    from safetensors.torch import save_file

    from edit_core.distill.teachers import inspect_teacher

    config = dict(TINY_CONFIGS["pixart_alpha"], use_additional_conditions=micro_conditions)
    model = structured_tiny_teacher("pixart_alpha", config=config)
    (tmp_path / "transformer").mkdir()
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "PixArtAlphaPipeline"}))
    (tmp_path / "transformer" / "config.json").write_text(
        json.dumps(dict(model.config, _class_name=type(model).__name__), default=list))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(tmp_path / "transformer" / "diffusion_pytorch_model.safetensors"))
    info = inspect_teacher(str(tmp_path))
    assert (info.kind, info.family, info.pipeline_class) == ("pipeline", family, "PixArtAlphaPipeline")
