"""diffusers integration for the families beyond PixArt-Σ / SD3.5-M: PixArt-α (micro-conditions), SD3-Medium
(no qk-norm, no attn2) and SD3.5-Large (qk-norm, no attn2), on tiny models in their real layouts.

The float64 references are ``tests/integrations/test_diffusers.py``'s (naive ``edit_core.ops`` plus explicit
convolutions on the patched modules' own weights). The whole-model check swaps every converted attention's
processor for one that computes that reference, so the model's output is compared end to end.
"""

from __future__ import annotations

import re

import pytest
import torch

pytest.importorskip("diffusers")

from edit_core.adapter import Adapter, AdapterError, init_adapter_from_teacher  # noqa: E402
from edit_core.families import detect_from_config, family_names, get_family  # noqa: E402
from edit_core.integrations.diffusers import (ADAPTER_MODULE, PROCESSORS, apply_edit, forward_kwargs,  # noqa: E402
                                              is_edit_applied, remove_edit)
from tests.integrations.test_diffusers import (randomized, reference_joint_attention,  # noqa: E402
                                               reference_self_attention, with_finetuned)
from tests.test_families import TINY_CONFIGS, tiny_model  # noqa: E402
from tests.util import rel_rmse  # noqa: E402

FAMILIES = ("pixart_alpha", "sd3_medium", "sd35_large")
LATENT = (18, 26)  # a 9×13 token grid
TOLERANCE = 1e-5


def fresh(family: str, seed: int = 0):
    from edit_core import tiny

    return tiny.build_tiny(family, TINY_CONFIGS[family], seed=seed)


def adapter_for(model) -> Adapter:
    return init_adapter_from_teacher(model.state_dict(), num_heads=model.config.num_attention_heads)


def inputs_for(model, latent=LATENT, batch: int = 2, seed: int = 1) -> dict:
    """Forward kwargs with the family's conditioning (PixArt-α: resolution / aspect-ratio micro-conditions)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, model.config.in_channels, *latent, generator=g)
    if detect_from_config(dict(model.config, _class_name=type(model).__name__)).record.needs_pooled:
        cond = {"encoder_hidden_states": torch.randn(batch, 9, model.config.joint_attention_dim, generator=g),
                "pooled_projections": torch.randn(batch, model.config.pooled_projection_dim, generator=g)}
    else:
        cond = {"encoder_hidden_states": torch.randn(batch, 7, model.config.caption_channels, generator=g)}
    return forward_kwargs(model, x, torch.tensor([10.0, 700.0][:batch]), cond)


def run(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs)[0]


class ReferenceSelfProcessor:
    def __init__(self, grid):
        self.grid = grid

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *a, **k):
        assert encoder_hidden_states is None and attention_mask is None
        return reference_self_attention(attn, hidden_states, self.grid).to(hidden_states.dtype)


class ReferenceJointProcessor:
    def __init__(self, grid, eta):
        self.grid, self.eta = grid, eta

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *a, **k):
        image, text = reference_joint_attention(attn, hidden_states, encoder_hidden_states, self.grid, self.eta)
        return image.to(hidden_states.dtype), None if text is None else text.to(hidden_states.dtype)


def converted_attentions(model, family):
    slot = "attn1" if not get_family(family).joint else "attn"
    return [getattr(block, slot) for block in model.transformer_blocks]


# ---------------------------------------------------------------------------------------------- registry

def test_every_family_has_processors_for_its_slots():
    assert sorted(PROCESSORS) == sorted(family_names())
    for name, processors in PROCESSORS.items():
        assert "attn" in processors and set(processors) <= set(get_family(name).architecture.slots)


# ---------------------------------------------------------------------------------------------- float64 reference

@pytest.mark.parametrize("family", FAMILIES)
def test_patched_model_matches_float64_reference_end_to_end(family):
    model = fresh(family)
    adapter = with_finetuned(randomized(adapter_for(model)), model)
    inputs = inputs_for(model)
    teacher = run(model, inputs)
    apply_edit(model, adapter)
    out = run(model, inputs)
    attentions = converted_attentions(model, family)
    assert all(hasattr(a, ADAPTER_MODULE) for a in attentions)
    grid = (LATENT[0] // 2, LATENT[1] // 2)
    edit_processors = [a.processor for a in attentions]
    for attention in attentions:
        attention.set_processor(ReferenceJointProcessor(grid, adapter.config.eta) if get_family(family).joint
                                else ReferenceSelfProcessor(grid))
    expected = run(model, inputs)
    for attention, processor in zip(attentions, edit_processors):
        attention.set_processor(processor)
    assert torch.isfinite(out).all()
    assert out.shape == teacher.shape
    assert rel_rmse(out, expected) <= TOLERANCE
    assert rel_rmse(out, teacher) > 1e-3  # it is not the teacher


@pytest.mark.parametrize("family", ["sd3_medium", "sd35_large"])
def test_joint_attention_layers_match_float64_reference_with_exact_eta(family):
    """Every block's image and text rows (η exact; the end-to-end test covers "approx"); the last,
    context_pre_only, block gives no text rows."""
    eta = "exact"
    model = fresh(family)
    apply_edit(model, with_finetuned(randomized(adapter_for(model)), model), eta=eta)
    calls = []
    handles = [a.register_forward_hook(lambda m, args, kwargs, out: calls.append((m, args, kwargs, out)),
                                       with_kwargs=True) for a in converted_attentions(model, family)]
    run(model, inputs_for(model, (30, 14)))
    for h in handles:
        h.remove()
    assert len(calls) == TINY_CONFIGS[family]["num_layers"]
    with torch.no_grad():
        for attention, args, kwargs, (image_out, text_out) in calls:
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            image_ref, text_ref = reference_joint_attention(attention, hidden, kwargs["encoder_hidden_states"],
                                                            (15, 7), eta)
            assert rel_rmse(image_out, image_ref) <= TOLERANCE
            if attention.context_pre_only:
                assert text_out is None
            else:
                assert rel_rmse(text_out, text_ref) <= TOLERANCE


def test_sd3_medium_joint_attention_has_no_qk_norm():
    """The reference above skips absent norms; make sure the model really has none (and SD3.5-L has them)."""
    assert all(a.norm_q is None and a.norm_added_q is None for a in converted_attentions(fresh("sd3_medium"),
                                                                                         "sd3_medium"))
    assert all(a.norm_q is not None for a in converted_attentions(tiny_model("sd35_large"), "sd35_large"))


def test_pixart_alpha_micro_conditions_reach_the_patched_model():
    """Resolution / aspect ratio change the output of the converted PixArt-α (they feed adaLN)."""
    model = fresh("pixart_alpha")
    apply_edit(model, randomized(adapter_for(model)))
    inputs = inputs_for(model)
    other = dict(inputs, added_cond_kwargs={k: v * 2 for k, v in inputs["added_cond_kwargs"].items()})
    assert not torch.equal(run(model, inputs), run(model, other))


# ---------------------------------------------------------------------------------------------- remove_edit

@pytest.mark.parametrize("family", FAMILIES)
def test_remove_edit_restores_bit_identical_output(family):
    model = fresh(family)
    inputs = inputs_for(model)
    before = run(model, inputs)
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_edit(model, with_finetuned(randomized(adapter_for(model)), model))
    assert not torch.equal(run(model, inputs), before)
    remove_edit(model)
    assert not is_edit_applied(model)
    assert torch.equal(run(model, inputs), before)
    state_after = model.state_dict()
    assert all(torch.equal(state_after[k], v) for k, v in state_before.items())
    assert not any(ADAPTER_MODULE in name for name, _ in model.named_modules())


# ---------------------------------------------------------------------------------------------- mismatches

@pytest.mark.parametrize("adapter_family, model_family", [
    ("sd3_medium", "sd35_large"), ("sd35_large", "sd3_medium"), ("sd35_medium", "sd35_large"),
    ("sd35_large", "sd35_medium"), ("pixart_sigma", "pixart_alpha"), ("pixart_alpha", "pixart_sigma"),
    ("pixart_alpha", "sd3_medium")])
def test_adapter_for_another_family_is_rejected_naming_both(adapter_family, model_family):
    adapter = adapter_for(tiny_model(adapter_family))
    model = fresh(model_family)
    processors = {name: m.processor for name, m in model.named_modules() if hasattr(m, "processor")}
    titles = get_family(adapter_family).title, get_family(model_family).title
    with pytest.raises(AdapterError, match=r"it is for {}.*this model is {}".format(*map(re.escape, titles))):
        apply_edit(model, adapter)
    assert not is_edit_applied(model) and not model._forward_pre_hooks
    assert {name: m.processor for name, m in model.named_modules() if hasattr(m, "processor")} == processors


@pytest.mark.parametrize("family", FAMILIES)
def test_attn2_modes_on_a_family_without_attn2(family):
    """"all" needs no attn2 layers where the model has none, "off" is accepted; all three convert alike."""
    model = fresh(family)
    adapter = randomized(adapter_for(model))
    assert adapter.config.attn2_blocks == []
    inputs = inputs_for(model)
    outputs = []
    for mode in ("adapter", "all", "off"):
        apply_edit(model, adapter, attn2=mode)
        assert all(hasattr(a, ADAPTER_MODULE) for a in converted_attentions(model, family))
        outputs.append(run(model, inputs))
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])
