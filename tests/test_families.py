"""The model-family registry: detection by evidence (ComfyUI fused-qkv keys, diffusers split keys, diffusers
configs), canonical teacher weights, registry invariants, error messages, and the rule that no code outside
``edit_core/families`` branches on a family's name.

The ComfyUI-layout state dicts are converted from tiny diffusers models by a hand-written table of ComfyUI's
own key names (below), not by the families' place tables, so detection is checked against an independent
description of the layout.
"""

from __future__ import annotations

import ast
import functools
import itertools
import os
import re

import pytest
import torch

pytest.importorskip("diffusers")

from edit_core import tiny  # noqa: E402
from edit_core.families import (ARCHITECTURES, FamilyError, detect_from_config, detect_teacher,  # noqa: E402
                                 family_names, get_family, list_families, teacher_attention_weights)
from edit_core.families.base import strip_prefix  # noqa: E402
from edit_core.variants import get_variant  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIXES = ("", "model.diffusion_model.")

# Tiny diffusers configs in each family's real layout. PixArt-α's micro-condition embedder splits the width
# in three, so its width is a multiple of 3 (48); it is not a multiple of 72 either, like every PixArt here.
TINY_CONFIGS = {
    "pixart_sigma": dict(tiny.PIXART_QUICK),
    "pixart_alpha": dict(tiny.PIXART_QUICK, attention_head_dim=24, num_attention_heads=2, cross_attention_dim=48,
                         use_additional_conditions=True),
    "sd35_medium": dict(tiny.SD35_TINY),
    "sd35_large": dict(tiny.SD35_TINY, num_layers=3, dual_attention_layers=()),
    "sd3_medium": dict(tiny.SD35_TINY, dual_attention_layers=(), qk_norm=None),
}
FAMILIES = tuple(TINY_CONFIGS)


@functools.lru_cache(maxsize=None)
def tiny_model(family: str):
    """A tiny diffusers transformer of ``family`` (cached: tests only read it)."""
    return tiny.build_tiny(family, TINY_CONFIGS[family], seed=0)


def diffusers_state(family: str) -> dict[str, torch.Tensor]:
    return dict(tiny_model(family).state_dict())


def class_config(family: str) -> dict:
    model = tiny_model(family)
    return dict(model.config, _class_name=type(model).__name__)


# ---------------------------------------------------------------------------------------------- ComfyUI layout

_B = r"transformer_blocks\.(?P<b>\d+)\."
_P = r"(?P<p>weight|bias)"
# (diffusers key regex, ComfyUI key template, fused-qkv third or None). ComfyUI's names: comfy/ldm/pixart
# (PixArt: blocks.N.attn.qkv / proj, cross_attn.q_linear / kv_linear, t_block, csize/ar embedders) and
# comfy/ldm/modules/diffusionmodules/mmdit.py (joint_blocks.N.{x_block,context_block}.attn.qkv / proj /
# ln_q / ln_k, x_block.attn2.*).
PIXART_TO_COMFY = [
    (_B + r"attn1\.to_q\." + _P, "blocks.{b}.attn.qkv.{p}", 0),
    (_B + r"attn1\.to_k\." + _P, "blocks.{b}.attn.qkv.{p}", 1),
    (_B + r"attn1\.to_v\." + _P, "blocks.{b}.attn.qkv.{p}", 2),
    (_B + r"attn1\.to_out\.0\." + _P, "blocks.{b}.attn.proj.{p}", None),
    (_B + r"attn2\.to_q\." + _P, "blocks.{b}.cross_attn.q_linear.{p}", None),
    (_B + r"attn2\.to_k\." + _P, "blocks.{b}.cross_attn.kv_linear.{p}", 0),
    (_B + r"attn2\.to_v\." + _P, "blocks.{b}.cross_attn.kv_linear.{p}", 1),
    (_B + r"attn2\.to_out\.0\." + _P, "blocks.{b}.cross_attn.proj.{p}", None),
    (_B + r"ff\.net\.0\.proj\." + _P, "blocks.{b}.mlp.fc1.{p}", None),
    (_B + r"ff\.net\.2\." + _P, "blocks.{b}.mlp.fc2.{p}", None),
    (_B + r"scale_shift_table", "blocks.{b}.scale_shift_table", None),
    (r"adaln_single\.linear\." + _P, "t_block.1.{p}", None),
    (r"adaln_single\.emb\.timestep_embedder\.linear_1\." + _P, "t_embedder.mlp.0.{p}", None),
    (r"adaln_single\.emb\.resolution_embedder\.linear_1\." + _P, "csize_embedder.mlp.0.{p}", None),
    (r"adaln_single\.emb\.aspect_ratio_embedder\.linear_1\." + _P, "ar_embedder.mlp.0.{p}", None),
    (r"pos_embed\.proj\." + _P, "x_embedder.proj.{p}", None),
    (r"proj_out\." + _P, "final_layer.linear.{p}", None),
]
MMDIT_TO_COMFY = [
    (_B + r"attn\.to_q\." + _P, "joint_blocks.{b}.x_block.attn.qkv.{p}", 0),
    (_B + r"attn\.to_k\." + _P, "joint_blocks.{b}.x_block.attn.qkv.{p}", 1),
    (_B + r"attn\.to_v\." + _P, "joint_blocks.{b}.x_block.attn.qkv.{p}", 2),
    (_B + r"attn\.to_out\.0\." + _P, "joint_blocks.{b}.x_block.attn.proj.{p}", None),
    (_B + r"attn\.norm_q\." + _P, "joint_blocks.{b}.x_block.attn.ln_q.{p}", None),
    (_B + r"attn\.norm_k\." + _P, "joint_blocks.{b}.x_block.attn.ln_k.{p}", None),
    (_B + r"attn\.add_q_proj\." + _P, "joint_blocks.{b}.context_block.attn.qkv.{p}", 0),
    (_B + r"attn\.add_k_proj\." + _P, "joint_blocks.{b}.context_block.attn.qkv.{p}", 1),
    (_B + r"attn\.add_v_proj\." + _P, "joint_blocks.{b}.context_block.attn.qkv.{p}", 2),
    (_B + r"attn\.to_add_out\." + _P, "joint_blocks.{b}.context_block.attn.proj.{p}", None),
    (_B + r"attn\.norm_added_q\." + _P, "joint_blocks.{b}.context_block.attn.ln_q.{p}", None),
    (_B + r"attn\.norm_added_k\." + _P, "joint_blocks.{b}.context_block.attn.ln_k.{p}", None),
    (_B + r"attn2\.to_q\." + _P, "joint_blocks.{b}.x_block.attn2.qkv.{p}", 0),
    (_B + r"attn2\.to_k\." + _P, "joint_blocks.{b}.x_block.attn2.qkv.{p}", 1),
    (_B + r"attn2\.to_v\." + _P, "joint_blocks.{b}.x_block.attn2.qkv.{p}", 2),
    (_B + r"attn2\.to_out\.0\." + _P, "joint_blocks.{b}.x_block.attn2.proj.{p}", None),
    (_B + r"attn2\.norm_q\." + _P, "joint_blocks.{b}.x_block.attn2.ln_q.{p}", None),
    (_B + r"attn2\.norm_k\." + _P, "joint_blocks.{b}.x_block.attn2.ln_k.{p}", None),
    (_B + r"norm1\.linear\." + _P, "joint_blocks.{b}.x_block.adaLN_modulation.1.{p}", None),
    (_B + r"norm1_context\.linear\." + _P, "joint_blocks.{b}.context_block.adaLN_modulation.1.{p}", None),
    (_B + r"ff\.net\.0\.proj\." + _P, "joint_blocks.{b}.x_block.mlp.fc1.{p}", None),
    (_B + r"ff\.net\.2\." + _P, "joint_blocks.{b}.x_block.mlp.fc2.{p}", None),
    (_B + r"ff_context\.net\.0\.proj\." + _P, "joint_blocks.{b}.context_block.mlp.fc1.{p}", None),
    (_B + r"ff_context\.net\.2\." + _P, "joint_blocks.{b}.context_block.mlp.fc2.{p}", None),
    (r"pos_embed\.proj\." + _P, "x_embedder.proj.{p}", None),
    (r"context_embedder\." + _P, "context_embedder.{p}", None),
    (r"time_text_embed\.timestep_embedder\.linear_1\." + _P, "t_embedder.mlp.0.{p}", None),
    (r"time_text_embed\.text_embedder\.linear_1\." + _P, "y_embedder.mlp.0.{p}", None),
    (r"proj_out\." + _P, "final_layer.linear.{p}", None),
]
TO_COMFY = {"pixart": PIXART_TO_COMFY, "mmdit": MMDIT_TO_COMFY}


def comfy_state(family: str) -> dict[str, torch.Tensor]:
    """The tiny model's weights under ComfyUI / original-checkpoint names (q/k/v fused into ``qkv``)."""
    rules = [(re.compile(rx + "$"), template, chunk) for rx, template, chunk in
             TO_COMFY[get_family(family).architecture.name]]
    out, fused = {}, {}
    for key, value in diffusers_state(family).items():
        for rx, template, chunk in rules:
            m = rx.match(key)
            if m:
                target = template.format(**m.groupdict())
                if chunk is None:
                    out[target] = value
                else:
                    fused.setdefault(target, {})[chunk] = value
                break
    for target, chunks in fused.items():
        assert sorted(chunks) == list(range(len(chunks))), target
        out[target] = torch.cat([chunks[i] for i in sorted(chunks)])
    return out


def state(family: str, layout: str, prefix: str = "") -> dict[str, torch.Tensor]:
    sd = comfy_state(family) if layout == "comfyui" else diffusers_state(family)
    return {prefix + k: v for k, v in sd.items()}


def expected_geometry(family: str) -> dict:
    """The geometry the tiny config was built with, read off the config itself."""
    c = TINY_CONFIGS[family]
    heads, head_dim = c["num_attention_heads"], c["attention_head_dim"]
    return {"family": family, "num_blocks": c["num_layers"], "hidden_size": heads * head_dim, "num_heads": heads,
            "head_dim": head_dim, "qk_norm": "rms" if c.get("qk_norm") else None,
            "attn2_blocks": sorted(c.get("dual_attention_layers") or ())}


def geometry(spec) -> dict:
    return {"family": spec.family, "num_blocks": spec.num_blocks, "hidden_size": spec.hidden_size,
            "num_heads": spec.num_heads, "head_dim": spec.head_dim, "qk_norm": spec.qk_norm,
            "attn2_blocks": list(spec.attn2_blocks)}


# ---------------------------------------------------------------------------------------------- detection

def test_every_registered_family_has_a_tiny_model_here():
    assert sorted(TINY_CONFIGS) == sorted(family_names())


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("layout", ["comfyui", "diffusers"])
@pytest.mark.parametrize("family", FAMILIES)
def test_family_and_geometry_are_detected_from_weights(family, layout, prefix):
    spec = detect_teacher(state(family, layout, prefix), num_heads=TINY_CONFIGS[family]["num_attention_heads"])
    assert geometry(spec) == expected_geometry(family)
    assert (spec.layout, spec.prefix) == (layout, prefix)


@pytest.mark.parametrize("layout", ["comfyui", "diffusers"])
@pytest.mark.parametrize("family", ["sd35_medium", "sd35_large"])
def test_qk_norm_weights_give_the_head_count(family, layout):
    """With qk-norm the norm's width is the head width: no num_heads needed, a different one is refused."""
    sd = state(family, layout)
    assert detect_teacher(sd).num_heads == TINY_CONFIGS[family]["num_attention_heads"]
    with pytest.raises(FamilyError, match=r"num_heads=2 disagrees .* \(4 heads of 16\)"):
        detect_teacher(sd, num_heads=2)


@pytest.mark.parametrize("family", FAMILIES)
def test_detection_reads_shapes_only(family):
    """Meta tensors (no data) are enough: detection looks at key names and shapes."""
    sd = {k: v.to("meta") for k, v in state(family, "comfyui", "model.diffusion_model.").items()}
    spec = detect_teacher(sd, num_heads=TINY_CONFIGS[family]["num_attention_heads"])
    assert geometry(spec) == expected_geometry(family)


def test_diffusers_weights_under_a_pipeline_prefix_are_detected():
    spec = detect_teacher({"transformer." + k: v for k, v in diffusers_state("sd3_medium").items()}, num_heads=4)
    assert (spec.family, spec.layout, spec.prefix) == ("sd3_medium", "diffusers", "transformer.")


@pytest.mark.parametrize("family", FAMILIES)
def test_config_detection_agrees_with_weight_detection(family):
    from_config = detect_from_config(class_config(family))
    from_weights = detect_teacher(diffusers_state(family), num_heads=TINY_CONFIGS[family]["num_attention_heads"])
    from_comfy = detect_teacher(comfy_state(family), num_heads=TINY_CONFIGS[family]["num_attention_heads"])
    assert geometry(from_config) == geometry(from_weights) == geometry(from_comfy) == expected_geometry(family)


@pytest.mark.parametrize("family", FAMILIES)
def test_probed_evidence_carries_every_match_key_alike(family):
    """Weights (both layouts) and config give the same values for the keys families are told apart by."""
    record = get_family(family)
    architecture = record.architecture
    keys = set().union(*(f.match for f in list_families() if f.architecture is architecture))
    evidence = [architecture.probe_config(class_config(family))]
    for layout in ("comfyui", "diffusers"):
        sd, _ = strip_prefix(state(family, layout))
        evidence.append(architecture.probe(sd, architecture.layout(layout)))
    for found in evidence:
        assert keys <= set(found)
        assert {k: found[k] for k in keys} == {k: evidence[0][k] for k in keys}
        assert record.matches(found)


@pytest.mark.parametrize("sample_size, family", [(128, "pixart_alpha"), (64, "pixart_sigma")])
def test_pixart_config_without_the_micro_condition_option_follows_diffusers_rule(sample_size, family):
    """Configs that predate ``use_additional_conditions``: diffusers turns it on for sample_size 128."""
    config = {k: v for k, v in class_config("pixart_sigma").items() if k != "use_additional_conditions"}
    assert detect_from_config(dict(config, sample_size=sample_size)).family == family


# ---------------------------------------------------------------------------------------------- teacher weights

def canonical_names(family: str, block: int, slot: str) -> set[str]:
    """The canonical tensors one converted layer has in the tiny model (independent of the place tables)."""
    c, record = TINY_CONFIGS[family], get_family(family)
    names = ["to_q", "to_k", "to_v", "to_out"]
    norms = ["norm_q", "norm_k"] if c.get("qk_norm") else []
    if record.joint and slot == "attn":
        names += ["add_q_proj", "add_k_proj", "add_v_proj"]
        if block < c["num_layers"] - 1:  # the last block is context_pre_only: no text output projection
            names.append("to_add_out")
        norms += ["norm_added_q", "norm_added_k"] if c.get("qk_norm") else []
    return {f"{n}.{p}" for n in names for p in ("weight", "bias")} | {f"{n}.weight" for n in norms}


def converted_layers(family: str) -> list[tuple[int, str]]:
    c = TINY_CONFIGS[family]
    return [(b, "attn") for b in range(c["num_layers"])] + [(b, "attn2") for b in c.get("dual_attention_layers", ())]


def module_tensor(model, family: str, block: int, slot: str, canonical: str) -> torch.Tensor:
    """A canonical tensor read straight off the diffusers module."""
    attention = getattr(model.transformer_blocks[block], ("attn1" if not get_family(family).joint else slot))
    name, part = canonical.split(".")
    module = attention.to_out[0] if name == "to_out" else getattr(attention, name)
    return getattr(module, part)


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_and_split_layouts_give_the_same_canonical_tensors(family):
    heads = TINY_CONFIGS[family]["num_attention_heads"]
    comfy, split = state(family, "comfyui", "model.diffusion_model."), state(family, "diffusers")
    spec_c, spec_d = detect_teacher(comfy, num_heads=heads), detect_teacher(split, num_heads=heads)
    model = tiny_model(family)
    for block, slot in converted_layers(family):
        fused = teacher_attention_weights(comfy, spec_c, block, slot)
        plain = teacher_attention_weights(split, spec_d, block, slot)
        assert fused.keys() == plain.keys() == canonical_names(family, block, slot), (block, slot)
        for name in fused:
            assert torch.equal(fused[name], plain[name]), (block, slot, name)
            assert torch.equal(plain[name], module_tensor(model, family, block, slot, name)), (block, slot, name)


def test_mmdit_text_stream_comes_from_the_context_block():
    """The fused context-block qkv splits into add_q/k/v_proj (not the image stream's to_q/k/v)."""
    sd = comfy_state("sd35_large")
    spec = detect_teacher(sd)
    weights = teacher_attention_weights(sd, spec, 1)
    qkv = sd["joint_blocks.1.context_block.attn.qkv.weight"]
    for i, name in enumerate(("add_q_proj", "add_k_proj", "add_v_proj")):
        assert torch.equal(weights[f"{name}.weight"], qkv.chunk(3)[i])
    assert torch.equal(weights["norm_added_q.weight"], sd["joint_blocks.1.context_block.attn.ln_q.weight"])
    assert not torch.equal(weights["to_q.weight"], weights["add_q_proj.weight"])


def test_a_model_without_attn2_has_no_attn2_weights():
    sd = comfy_state("sd3_medium")
    assert teacher_attention_weights(sd, detect_teacher(sd, num_heads=4), 0, "attn2") == {}


# ---------------------------------------------------------------------------------------------- registry

def test_each_family_has_one_spelling():
    names = family_names()
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", n) for n in names)
    spellings = names + [a for f in list_families() for a in f.aliases]
    assert len(set(spellings)) == len(spellings), "an alias repeats a name or another alias"


@pytest.mark.parametrize("alias, name", [("pixart", "pixart_sigma"), ("sd35", "sd35_medium"), ("sd3", "sd3_medium"),
                                         ("pixart-alpha", "pixart_alpha"), ("sd3.5-large", "sd35_large")])
def test_aliases_resolve(alias, name):
    assert get_family(alias).name == name


def test_every_alias_and_name_resolves_to_its_family():
    for family in list_families():
        assert get_family(family.name) is family
        assert all(get_family(alias) is family for alias in family.aliases)


def test_adapters_are_checked_against_a_family_alias(tmp_path):
    from edit_core.adapter import AdapterError, init_adapter_from_teacher, load_adapter, save_adapter

    path = str(tmp_path / "sd35m.safetensors")
    save_adapter(init_adapter_from_teacher(state("sd35_medium", "comfyui")), path)
    assert load_adapter(path, expect_family="sd35").config.family == "sd35_medium"
    with pytest.raises(AdapterError, match=r"it is for SD3\.5-Medium .*, not SD3\.5-Large"):
        load_adapter(path, expect_family="sd35l")


def test_unknown_family_name_lists_the_known_ones():
    with pytest.raises(KeyError) as info:
        get_family("flux")
    assert "flux" in str(info.value)
    assert all(name in str(info.value) for name in family_names())


@pytest.mark.parametrize("family", FAMILIES)
def test_default_variant_converts_the_family(family):
    record = get_family(family)
    assert get_variant(record.default_variant).converts(record)


@pytest.mark.parametrize("family", FAMILIES)
def test_reference_config_is_detected_as_the_family_with_its_geometry(family):
    record = get_family(family)
    spec = detect_from_config(dict(record.reference_config, _class_name=record.architecture.diffusers_class))
    ref = record.reference
    assert (spec.family, spec.num_blocks, spec.hidden_size, spec.num_heads, spec.attn2_blocks) == \
        (family, ref.num_blocks, ref.hidden_size, ref.num_heads, list(ref.attn2_blocks))
    assert record.text_width_key in record.reference_config


@pytest.mark.parametrize("family", FAMILIES)
def test_record_facts_agree_with_each_other(family):
    record = get_family(family)
    assert (record.prediction, record.schedule["kind"]) in {("epsilon", "ddpm"), ("flow", "flow")}
    assert record.pipelines and record.conditioning[0] == "encoder_hidden_states"
    assert record.sampling_shift == 1.0 or record.prediction == "flow"


@pytest.mark.parametrize("pipeline, families", [
    ("PixArtSigmaPipeline", ["pixart_sigma"]),
    ("PixArtAlphaPipeline", ["pixart_sigma", "pixart_alpha"]),  # PixArt-α 512 has no micro-conditions: reads as Σ
    ("StableDiffusion3Pipeline", ["sd35_medium", "sd35_large", "sd3_medium"]),
    ("FluxPipeline", [])])
def test_pipeline_classes_hold_the_families_detection_can_give(pipeline, families):
    from edit_core.families import family_for_pipeline

    assert [f.name for f in family_for_pipeline(pipeline)] == families


def test_no_evidence_satisfies_two_families():
    """Every combination of the values the families are told apart by (plus values none of them asks for)
    matches at most one family of an architecture; each family's own match matches only it."""
    for architecture in ARCHITECTURES:
        families = [f for f in list_families() if f.architecture is architecture]
        assert families, architecture.name
        keys = sorted(set().union(*(f.match for f in families)))
        values = {k: sorted({f.match[k] for f in families if k in f.match} | {None, "other"}, key=repr)
                  for k in keys}
        for combo in itertools.product(*(values[k] for k in keys)):
            evidence = dict(zip(keys, combo))
            assert len([f for f in families if f.matches(evidence)]) <= 1, evidence
        for family in families:
            assert [f for f in families if f.matches(family.match)] == [family]


def test_mmdit_families_are_told_apart_at_any_depth():
    """SD3.5-Large is qk-norm without attn2, whatever its depth; SD3-Medium has no qk-norm."""
    for layers in (1, 4):
        config = dict(class_config("sd35_large"), num_layers=layers)
        assert detect_from_config(config).family == "sd35_large"
        assert detect_from_config(dict(config, qk_norm=None)).family == "sd3_medium"


# ---------------------------------------------------------------------------------------------- schedules

@pytest.mark.parametrize("family", FAMILIES)
def test_training_schedule_is_the_one_the_record_says(family):
    from edit_core.distill.schedules import DDPMSchedule, FlowSchedule, schedule_for

    record = get_family(family)
    schedule = schedule_for(family)
    expected = {"pixart": DDPMSchedule, "mmdit": FlowSchedule}[record.architecture.name]
    assert type(schedule) is expected
    assert type(schedule) is {"ddpm": DDPMSchedule, "flow": FlowSchedule}[record.schedule["kind"]]
    if expected is DDPMSchedule:
        assert all(getattr(schedule, k) == v for k, v in record.schedule.items() if k != "kind")


def test_schedule_accepts_aliases():
    from edit_core.distill.schedules import DDPMSchedule, schedule_for

    assert isinstance(schedule_for("pixart"), DDPMSchedule)


# ---------------------------------------------------------------------------------------------- errors

def test_pixart_width_off_72_without_num_heads_is_a_clear_error():
    sd = state("pixart_alpha", "diffusers")  # width 48
    with pytest.raises(FamilyError, match=r"PixArt-Alpha model with hidden size 48 \(not a multiple of 72\): "
                                          r"pass num_heads"):
        detect_teacher(sd)
    assert detect_teacher(sd, num_heads=2).head_dim == 24


@pytest.mark.parametrize("actual, asked", [("sd3_medium", "sd35_large"), ("pixart_alpha", "pixart"),
                                           ("sd35_medium", "pixart_sigma")])
def test_a_family_argument_that_disagrees_names_both(actual, asked):
    heads = TINY_CONFIGS[actual]["num_attention_heads"]
    titles = (re.escape(get_family(actual).title), re.escape(get_family(asked).title))
    with pytest.raises(FamilyError, match=r"{}.*not {}".format(*titles)):
        detect_teacher(state(actual, "comfyui"), family=asked, num_heads=heads)
    with pytest.raises(FamilyError, match=r"{}.*not {}".format(*titles)):
        detect_from_config(class_config(actual), family=asked)


def test_a_family_argument_that_agrees_is_accepted_by_alias():
    assert detect_teacher(state("sd35_medium", "diffusers"), family="sd35").family == "sd35_medium"


def test_unknown_weights_are_a_clear_error():
    with pytest.raises(FamilyError, match="not a model this pack converts") as info:
        detect_teacher({"double_blocks.0.img_attn.qkv.weight": torch.zeros(9, 3)})
    assert all(f.title in str(info.value) for f in list_families())


def test_unknown_diffusers_class_is_a_clear_error():
    with pytest.raises(FamilyError, match="FluxTransformer2DModel.*PixArtTransformer2DModel, SD3Transformer2DModel"):
        detect_from_config({"_class_name": "FluxTransformer2DModel", "num_layers": 19})


def test_mmdit_with_attn2_but_no_qk_norm_matches_no_family():
    sd = {k: v for k, v in state("sd35_medium", "comfyui").items() if ".ln_" not in k}
    with pytest.raises(FamilyError, match=r"a mmdit model \(.*attn2_blocks=\[0\]\) that matches no known family") \
            as info:
        detect_teacher(sd, num_heads=4)
    assert all(f.title in str(info.value) for f in list_families())


def test_a_config_missing_a_field_is_a_clear_error():
    config = {k: v for k, v in class_config("sd3_medium").items() if k != "num_layers"}
    with pytest.raises(FamilyError, match="SD3Transformer2DModel config lacks .*num_layers"):
        detect_from_config(config)


# ---------------------------------------------------------------------------------------------- no name branching

_SCANNED = ("edit_core", "nodes")
_ALLOWED = (os.path.join("edit_core", "families") + os.sep,)


def _family_words() -> tuple[str, ...]:
    words = {"pixart", "sd3", "sd35", "sd3.5", "mmdit"}
    for family in list_families():
        words |= {family.name, *family.aliases, family.architecture.name}
    return tuple(sorted(words))


def _is_family_literal(node, words) -> bool:
    return (isinstance(node, ast.Constant) and isinstance(node.value, str)
            and node.value.lower().startswith(words))


def _names_family(node) -> bool:
    """``family``, ``spec.family``, ``x["family"]``, ``family.name``, …"""
    if isinstance(node, ast.Name):
        return node.id.lower().endswith("family")
    if isinstance(node, ast.Attribute):
        return node.attr.lower().endswith("family") or (node.attr == "name" and _names_family(node.value))
    if isinstance(node, ast.Subscript):
        key = node.slice
        return isinstance(key, ast.Constant) and key.value == "family"
    return False


def _literals(node):
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return list(node.elts)
    return [node]


def name_comparisons(source: str, words) -> list[tuple[int, str]]:
    """(line, code) of every comparison of a family name string: ``== "pixart…"``, ``"sd3…" in x``,
    ``x in ("pixart_sigma", …)``, ``.startswith("sd3…")``, ``case "pixart…":``, and ``family == <any string>``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        hit = False
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            literals = [lit for operand in operands for lit in _literals(operand)]
            hit = any(_is_family_literal(lit, words) for lit in literals)
            hit |= any(_names_family(a) and isinstance(b, ast.Constant) and isinstance(b.value, str)
                       for a, b in itertools.permutations(operands, 2))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("startswith", "endswith"):
                hit = any(_is_family_literal(lit, words) for arg in node.args for lit in _literals(arg))
        elif isinstance(node, ast.MatchValue):
            hit = _is_family_literal(node.value, words)
        if hit:
            found.append((node.lineno, ast.get_source_segment(source, node) or ""))
    return found


def test_the_scanner_finds_name_comparisons():
    words = _family_words()
    offenders = """
if family == "pixart_sigma": pass
if spec.family != "sd35_medium": pass
if name.startswith("pixart"): pass
if x in ("pixart_sigma", "pixart_alpha"): pass
if "sd3" in model_name: pass
if config["family"] == "flux": pass
if record.family.name == "anything": pass
match family:
    case "sd3_medium": pass
"""
    assert len(name_comparisons(offenders, words)) == 8
    clean = """
register_host("pixart_sigma", PIXART_HOST)
SETTINGS = {"pixart_sigma": 1}
if family.joint and spec.family == other.family: pass
if get_family(name) is record: pass
"""
    assert name_comparisons(clean, words) == []


def test_no_code_outside_the_families_compares_family_names():
    words = _family_words()
    offenders = []
    for top in _SCANNED:
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for file in sorted(files):
                path = os.path.join(folder, file)
                rel = os.path.relpath(path, ROOT)
                if not file.endswith(".py") or rel.startswith(_ALLOWED):
                    continue
                with open(path, encoding="utf-8") as f:
                    source = f.read()
                offenders += [f"{rel}:{line}: {code}" for line, code in name_comparisons(source, words)]
    assert not offenders, "family names compared outside edit_core/families:\n" + "\n".join(offenders)
