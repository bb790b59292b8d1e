"""diffusers integration: apply_edit / remove_edit on tiny PixArt-Σ and SD3.5-M-layout transformers.

References are float64 and built from ``edit_core.ops``' naive ops plus explicit convolutions on the
patched modules' own weights, so they share no code with the processors or ``modules.functional``.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("diffusers")

from diffusers import PixArtTransformer2DModel, SD3Transformer2DModel  # noqa: E402
from diffusers.models.attention_processor import AttnProcessor2_0, JointAttnProcessor2_0  # noqa: E402

from edit_core.adapter import Adapter, AdapterError, init_adapter_from_teacher  # noqa: E402
from edit_core.families import detect_teacher, teacher_attention_weights  # noqa: E402
from edit_core.integrations.diffusers import (ADAPTER_MODULE, apply_edit, edit_parameters,  # noqa: E402
                                              edit_state_dict, is_edit_applied, remove_edit)
from edit_core.ops import naive_hybrid_joint_attention, naive_linear_attention  # noqa: E402
from tests.util import rel_rmse  # noqa: E402

TOLERANCE = 1e-5


# ---------------------------------------------------------------------------------------------- models

def make_pixart(num_layers: int = 2, seed: int = 0) -> PixArtTransformer2DModel:
    torch.manual_seed(seed)
    return PixArtTransformer2DModel(
        sample_size=32, patch_size=2, in_channels=4, out_channels=8, num_layers=num_layers, attention_head_dim=16,
        num_attention_heads=4, cross_attention_dim=64, caption_channels=32, use_additional_conditions=False,
        norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6).eval()


def make_sd3(num_layers: int = 2, seed: int = 0) -> SD3Transformer2DModel:
    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=4, num_layers=num_layers, attention_head_dim=16,
        num_attention_heads=4, joint_attention_dim=48, caption_projection_dim=64, pooled_projection_dim=40,
        out_channels=4, pos_embed_max_size=48, dual_attention_layers=(0,), qk_norm="rms_norm").eval()


def pixart_adapter(model) -> Adapter:
    return init_adapter_from_teacher(model.state_dict(), num_heads=4)


def sd3_adapter(model) -> Adapter:
    return init_adapter_from_teacher(model.state_dict())


def pixart_inputs(latent=(18, 26), batch: int = 2, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"hidden_states": torch.randn(batch, 4, *latent, generator=g),
            "encoder_hidden_states": torch.randn(batch, 7, 32, generator=g),
            "timestep": torch.tensor([10, 700][:batch]),
            "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}


def sd3_inputs(latent=(18, 26), batch: int = 2, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"hidden_states": torch.randn(batch, 4, *latent, generator=g),
            "encoder_hidden_states": torch.randn(batch, 9, 48, generator=g),
            "pooled_projections": torch.randn(batch, 40, generator=g),
            "timestep": torch.tensor([10.0, 700.0][:batch])}


FAMILIES = {"pixart": (make_pixart, pixart_adapter, pixart_inputs),
            "sd3": (make_sd3, sd3_adapter, sd3_inputs)}


def run(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).sample


def randomized(adapter: Adapter, scale: float = 0.2, seed: int = 3) -> Adapter:
    """The same adapter with every tensor perturbed (makes ConvFusion's zero-initialised conv matter)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {k: v + scale * torch.randn(v.shape, generator=g) for k, v in adapter.tensors.items()}
    return Adapter(adapter.config, tensors, source="randomized")


def with_finetuned(adapter: Adapter, model, scale: float = 0.05, seed: int = 4) -> Adapter:
    """The adapter plus perturbed copies of every converted layer's teacher tensors (canonical names)."""
    g = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    spec = detect_teacher(state, num_heads=model.config.num_attention_heads)
    tensors = dict(adapter.tensors)
    for block, slot in adapter.config.layers():
        for name, value in teacher_attention_weights(state, spec, block, slot).items():
            tensors[f"blocks.{block}.{slot}.{name}"] = value + scale * torch.randn(value.shape, generator=g)
    return Adapter(adapter.config, tensors, source="finetuned")


@contextlib.contextmanager
def capture(module):
    """Record (kwargs with positional hidden_states folded in, output) of every call to ``module``."""
    calls = []

    def hook(mod, args, kwargs, output):
        inputs = dict(kwargs)
        if args:
            inputs["hidden_states"] = args[0]
        calls.append((inputs, output))

    handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


# ---------------------------------------------------------------------------------------------- float64 reference

def _linear(x, linear):
    return F.linear(x.double(), linear.weight.double(), None if linear.bias is None else linear.bias.double())


def _heads(x, heads):
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).transpose(1, 2)


def _merge(x):
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _rms(x, norm):
    if norm is None:
        return x
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight.double()


def _to_grid(x, grid):
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)


def _to_tokens(y):
    return y.flatten(2).transpose(1, 2)


def _conv_fusion(layer, x, grid):
    cf = layer.conv_fusion
    y = F.conv2d(_to_grid(x, grid), cf.conv_in.weight.double(), cf.conv_in.bias.double(), padding=1)
    y = F.group_norm(y, cf.norm.num_groups, cf.norm.weight.double(), cf.norm.bias.double(), cf.norm.eps)
    y = F.leaky_relu(y, cf.negative_slope)
    y = F.conv2d(y, cf.conv_out.weight.double(), cf.conv_out.bias.double())
    return x + _to_tokens(y)


def _compress(compressor, x, grid):
    conv = compressor.conv
    return _to_tokens(F.conv2d(_to_grid(x, grid), conv.weight.double(), conv.bias.double(), stride=2, padding=1,
                               groups=x.shape[-1]))


def reference_linear_branch(attn, x, grid):
    """Q^EDiT, K^EDiT, V^EDiT [B, H, ·, D] in float64 from the attention's weights and its edit_adapter."""
    layer, heads, x = getattr(attn, ADAPTER_MODULE), attn.heads, x.double()
    q = F.relu(_rms(_heads(_linear(_conv_fusion(layer, x, grid), attn.to_q), heads), attn.norm_q))
    k = F.relu(_rms(_heads(_compress(layer.key_compressor, _linear(x, attn.to_k), grid), heads), attn.norm_k))
    v = _heads(_compress(layer.value_compressor, _linear(x, attn.to_v), grid), heads)
    return q, k, v


def reference_self_attention(attn, x, grid):
    return _linear(_merge(naive_linear_attention(*reference_linear_branch(attn, x, grid))), attn.to_out[0])


def reference_joint_attention(attn, image, text, grid, eta):
    heads, num_image = attn.heads, image.shape[1]
    image, text = image.double(), text.double()
    q = torch.cat([_rms(_heads(_linear(image, attn.to_q), heads), attn.norm_q),
                   _rms(_heads(_linear(text, attn.add_q_proj), heads), attn.norm_added_q)], dim=2)
    k = torch.cat([_rms(_heads(_linear(image, attn.to_k), heads), attn.norm_k),
                   _rms(_heads(_linear(text, attn.add_k_proj), heads), attn.norm_added_k)], dim=2)
    v = torch.cat([_heads(_linear(image, attn.to_v), heads), _heads(_linear(text, attn.add_v_proj), heads)], dim=2)
    joint = naive_hybrid_joint_attention(q, k, v, *reference_linear_branch(attn, image, grid),
                                         num_text=text.shape[1], text_first=False, eta=eta)
    image_out = _linear(_merge(joint[:, :, :num_image]), attn.to_out[0])
    text_out = None if attn.to_add_out is None else _linear(_merge(joint[:, :, num_image:]), attn.to_add_out)
    return image_out, text_out


# ---------------------------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("latent", [(18, 26), (30, 14), (19, 27)])
@pytest.mark.parametrize("family", ["pixart", "sd3"])
def test_odd_token_grid_keeps_shape(family, latent):
    """18×26 → a 9×13 token grid; 19×27 → 9×13 too (diffusers' PatchEmbed drops the ragged edge)."""
    make, make_adapter, make_inputs = FAMILIES[family]
    model = make()
    apply_edit(model, randomized(make_adapter(model)))
    attention = model.transformer_blocks[0].attn1 if family == "pixart" else model.transformer_blocks[0].attn
    with capture(attention) as calls:
        out = run(model, make_inputs(latent))
    grid = (latent[0] // 2, latent[1] // 2)
    assert calls[0][0]["hidden_states"].shape[1] == grid[0] * grid[1]
    assert out.shape == (2, model.out_channels, 2 * grid[0], 2 * grid[1])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("family", ["pixart", "sd3"])
def test_bfloat16_model_runs_with_its_adapter_cast(family):
    make, make_adapter, make_inputs = FAMILIES[family]
    model = make()
    apply_edit(model, randomized(make_adapter(model)))
    model.to(torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in edit_parameters(model))
    inputs = {k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v
              for k, v in make_inputs().items()}
    out = run(model, inputs)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_grid_follows_each_call():
    model = make_sd3()
    apply_edit(model, randomized(sd3_adapter(model)))
    for latent in [(18, 26), (30, 14), (18, 26)]:
        assert run(model, sd3_inputs(latent)).shape[-2:] == latent


# ---------------------------------------------------------------------------------------------- remove_edit

@pytest.mark.parametrize("family", ["pixart", "sd3"])
def test_remove_edit_restores_bit_identical_output(family):
    make, make_adapter, make_inputs = FAMILIES[family]
    model = make()
    inputs = make_inputs()
    before = run(model, inputs)
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    processors_before = {name: m.processor for name, m in model.named_modules() if hasattr(m, "processor")}
    adapter = with_finetuned(randomized(make_adapter(model)), model)

    apply_edit(model, adapter)
    apply_edit(model, adapter)  # re-applying replaces the patch, it does not stack
    assert not torch.equal(run(model, inputs), before)
    remove_edit(model)

    assert not is_edit_applied(model)
    assert torch.equal(run(model, inputs), before)
    assert not any(ADAPTER_MODULE in name for name, _ in model.named_modules())
    assert not model._forward_pre_hooks
    assert {name: m.processor for name, m in model.named_modules() if hasattr(m, "processor")} == processors_before
    state_after = model.state_dict()
    assert state_after.keys() == state_before.keys()
    assert all(torch.equal(state_after[k], v) for k, v in state_before.items())


# ---------------------------------------------------------------------------------------------- exact parts

def test_sd3_text_rows_equal_teacher_at_init():
    model = make_sd3()
    apply_edit(model, sd3_adapter(model))
    attention = model.transformer_blocks[0].attn
    with capture(attention) as calls:
        run(model, sd3_inputs())
    inputs, (image_out, text_out) = calls[0]
    with torch.no_grad():
        teacher_image, teacher_text = JointAttnProcessor2_0()(attention, inputs["hidden_states"],
                                                              inputs["encoder_hidden_states"])
    assert rel_rmse(text_out, teacher_text) <= TOLERANCE
    assert rel_rmse(image_out, teacher_image) > 1e-3  # image↔image is linear attention now


def test_pixart_cross_attention_is_untouched():
    model = make_pixart()
    apply_edit(model, randomized(pixart_adapter(model)))
    cross = model.transformer_blocks[1].attn2
    assert isinstance(cross.processor, AttnProcessor2_0)
    assert not hasattr(cross, ADAPTER_MODULE)
    with capture(cross) as calls:
        run(model, pixart_inputs())
    inputs, out = calls[0]
    with torch.no_grad():
        teacher = AttnProcessor2_0()(cross, inputs["hidden_states"], inputs["encoder_hidden_states"],
                                     inputs.get("attention_mask"))
    assert torch.equal(out, teacher)


# ---------------------------------------------------------------------------------------------- float64 references

def test_pixart_self_attention_matches_float64_reference():
    model = make_pixart()
    apply_edit(model, with_finetuned(randomized(pixart_adapter(model)), model))
    attention = model.transformer_blocks[1].attn1
    with capture(attention) as calls:
        run(model, pixart_inputs((18, 26)))
    inputs, out = calls[0]
    with torch.no_grad():
        expected = reference_self_attention(attention, inputs["hidden_states"], (9, 13))
    assert rel_rmse(out, expected) <= TOLERANCE


@pytest.mark.parametrize("eta", ["approx", "exact"])
def test_sd3_joint_attention_matches_float64_reference(eta):
    model = make_sd3()
    apply_edit(model, with_finetuned(randomized(sd3_adapter(model)), model), eta=eta)
    with capture(model.transformer_blocks[0].attn) as first, capture(model.transformer_blocks[1].attn) as last:
        run(model, sd3_inputs((18, 26)))
    with torch.no_grad():
        for calls, block in ((first, 0), (last, 1)):
            inputs, (image_out, text_out) = calls[0]
            image_ref, text_ref = reference_joint_attention(model.transformer_blocks[block].attn,
                                                            inputs["hidden_states"], inputs["encoder_hidden_states"],
                                                            (9, 13), eta)
            assert rel_rmse(image_out, image_ref) <= TOLERANCE
            if block == 0:
                assert rel_rmse(text_out, text_ref) <= TOLERANCE
            else:  # context_pre_only: image rows only, the block discards the text slot
                assert text_out is None


def test_sd3_dual_attention_matches_float64_reference():
    model = make_sd3()
    apply_edit(model, with_finetuned(randomized(sd3_adapter(model)), model))
    attention = model.transformer_blocks[0].attn2
    with capture(attention) as calls:
        run(model, sd3_inputs((30, 14)))
    inputs, out = calls[0]
    with torch.no_grad():
        expected = reference_self_attention(attention, inputs["hidden_states"], (15, 7))
    assert rel_rmse(out, expected) <= TOLERANCE


def test_attn2_off_keeps_dual_attention_softmax():
    model = make_sd3()
    original = model.transformer_blocks[0].attn2.processor
    apply_edit(model, sd3_adapter(model), attn2="off")
    assert model.transformer_blocks[0].attn2.processor is original
    assert not hasattr(model.transformer_blocks[0].attn2, ADAPTER_MODULE)
    assert hasattr(model.transformer_blocks[0].attn, ADAPTER_MODULE)


# ---------------------------------------------------------------------------------------------- adapters

def test_adapter_for_other_family_is_rejected():
    pixart, sd3 = make_pixart(), make_sd3()
    with pytest.raises(AdapterError, match=r"SD3\.5-Medium.*PixArt-Sigma"):
        apply_edit(pixart, sd3_adapter(sd3))
    with pytest.raises(AdapterError, match=r"PixArt-Sigma.*SD3\.5-Medium"):
        apply_edit(sd3, pixart_adapter(pixart))
    assert not is_edit_applied(pixart) and not is_edit_applied(sd3)


def test_adapter_of_wrong_depth_is_rejected_and_changes_nothing():
    model = make_pixart(num_layers=2)
    processor = model.transformer_blocks[0].attn1.processor
    with pytest.raises(AdapterError, match="3 blocks, this model has 2"):
        apply_edit(model, pixart_adapter(make_pixart(num_layers=3)))
    assert model.transformer_blocks[0].attn1.processor is processor
    assert not model._forward_pre_hooks


def test_two_patched_transformers_are_independent():
    first, second = make_pixart(), make_pixart()
    adapter_a, adapter_b = randomized(pixart_adapter(first), seed=5), randomized(pixart_adapter(first), seed=6)
    inputs_small, inputs_large = pixart_inputs((18, 26)), pixart_inputs((30, 14))
    apply_edit(first, adapter_a)
    alone = run(first, inputs_small)
    apply_edit(second, adapter_b)
    other = run(second, inputs_large)  # records a different grid on the second model
    assert torch.equal(run(first, inputs_small), alone)
    assert not torch.equal(run(second, inputs_small), alone)
    assert torch.equal(run(second, inputs_large), other)
    assert not {id(p) for p in edit_parameters(first)} & {id(p) for p in edit_parameters(second)}


def test_finetuned_tensors_change_output_and_are_undone():
    model = make_sd3()
    inputs = sd3_inputs()
    base = randomized(sd3_adapter(model))
    finetuned = with_finetuned(base, model)
    originals = {k: v.clone() for k, v in model.state_dict().items()}
    apply_edit(model, base)
    without = run(model, inputs)
    apply_edit(model, finetuned)
    assert not torch.equal(run(model, inputs), without)
    attention = model.transformer_blocks[0].attn
    for canonical, path in (("to_q.weight", "to_q.weight"), ("to_out.weight", "to_out.0.weight"),
                            ("to_add_out.bias", "to_add_out.bias"), ("norm_added_q.weight", "norm_added_q.weight")):
        assert torch.equal(attention.get_parameter(path), finetuned.tensors[f"blocks.0.attn.{canonical}"])
    remove_edit(model)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in originals.items())


# ---------------------------------------------------------------------------------------------- modules, training

def test_attention_mask_on_converted_self_attention_is_rejected():
    model = make_pixart()
    apply_edit(model, pixart_adapter(model))
    inputs = pixart_inputs((18, 26))
    with pytest.raises(ValueError, match="attention_mask"):
        run(model, {**inputs, "attention_mask": torch.ones(2, 9 * 13)})


def test_adapter_layers_are_child_modules_that_train():
    model = make_sd3()
    adapter = randomized(sd3_adapter(model))
    apply_edit(model, adapter)
    params = edit_parameters(model)
    assert len(params) == 10 * len(adapter.config.layers())
    assert {id(p) for p in params} <= {id(p) for p in model.parameters()}
    assert all(torch.equal(v, adapter.tensors[k]) for k, v in edit_state_dict(model).items())
    model.double()
    assert all(p.dtype == torch.float64 for p in params)
    inputs = {k: v.double() if torch.is_tensor(v) else v for k, v in sd3_inputs((18, 26), batch=1).items()}
    model(**inputs).sample.square().mean().backward()
    assert all(p.grad is not None for p in params)


def test_unsupported_model_is_rejected():
    with pytest.raises(TypeError, match="PixArtTransformer2DModel and SD3Transformer2DModel"):
        apply_edit(torch.nn.Linear(2, 2), pixart_adapter(make_pixart()))


def test_adapter_without_attn2_layers_leaves_dual_attention_softmax():
    model = make_sd3()
    adapter = init_adapter_from_teacher(model.state_dict(), convert_attn2=False)
    with pytest.raises(AdapterError, match=r"attn2 'all'.*blocks \[0\]"):
        apply_edit(model, adapter, attn2="all")
    apply_edit(model, adapter)
    assert not hasattr(model.transformer_blocks[0].attn2, ADAPTER_MODULE)


def test_attention_called_outside_the_transformer_needs_a_grid():
    model = make_pixart()
    apply_edit(model, pixart_adapter(model))
    with pytest.raises(RuntimeError, match="token grid is unknown"):
        model.transformer_blocks[0].attn1(torch.randn(1, 6, 64))
