"""The paper's baselines (``edit_core.modules.baselines``) against float64 references written here from the
formulas (paper-spec §5) with torch.nn.functional only, on odd, non-square token grids, with random
(non-init) layer weights so every tensor matters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edit_core.adapter import init_adapter_from_teacher
from edit_core.modules.functional import Projections
from edit_core.variants import get_variant, list_variants
from tests.reference import heads_of, rms, to_grid
from tests.util import rel_rmse

H, W, C, HEADS = 5, 7, 32, 2
LINEAR_TOL = 1e-6  # the linear-attention state is fp32 by design, whatever the input dtype


def _dense_linear(a, b, v, eps=1e-6):
    """softmax-free normalised linear attention with explicit weights a_ij = φ(q_i)·φ(k_j)."""
    weights = a @ b.transpose(-1, -2)
    return (weights @ v) / (weights.sum(-1, keepdim=True) + eps)


def _softmax(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) @ v


def _merge(y):
    b, h, n, d = y.shape
    return y.permute(0, 2, 1, 3).reshape(b, n, h * d)


def _randomised(layer, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return layer.double()


def _projections(seed=2, qk_norm=False):
    g = torch.Generator().manual_seed(seed)
    w = {n: torch.randn(C, C, generator=g, dtype=torch.float64) / C ** 0.5 for n in ("q", "k", "v")}
    b = {n: torch.randn(C, generator=g, dtype=torch.float64) * 0.1 for n in ("q", "k", "v")}
    gamma = {n: 1 + 0.1 * torch.randn(C // HEADS, generator=g, dtype=torch.float64) for n in ("q", "k")}
    proj = Projections(lambda x: F.linear(x, w["q"], b["q"]), lambda x: F.linear(x, w["k"], b["k"]),
                       lambda x: F.linear(x, w["v"], b["v"]))
    if qk_norm:
        proj.norm_query = lambda t: rms(t, gamma["q"])
        proj.norm_key = lambda t: rms(t, gamma["k"])
    return proj, w, b, gamma


def _x(seed=3, n=H * W):
    return torch.randn(2, n, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _qkv(x, w, b, gamma, qk_norm, xq=None, xk=None):
    q = heads_of(F.linear(x if xq is None else xq, w["q"], b["q"]), HEADS)
    k = heads_of(F.linear(x if xk is None else xk, w["k"], b["k"]), HEADS)
    v = heads_of(F.linear(x, w["v"], b["v"]), HEADS)
    if qk_norm:
        q, k = rms(q, gamma["q"]), rms(k, gamma["k"])
    return q, k, v


def _state(layer):
    return {k: v.detach().double() for k, v in layer.state_dict().items()}


@pytest.mark.parametrize("qk_norm", [False, True])
def test_sana_is_relu_linear_attention_on_the_teachers_projections(qk_norm):
    variant = get_variant("sana")
    proj, w, b, gamma = _projections(qk_norm=qk_norm)
    x = _x()
    q, k, v = _qkv(x, w, b, gamma, qk_norm)
    expected = _merge(_dense_linear(F.relu(q), F.relu(k), v))
    got = variant.self_attention(variant.build_layer(C), x, (H, W), proj, HEADS, backend="torch")
    assert rel_rmse(got, expected) < LINEAR_TOL
    assert list(variant.build_layer(C).state_dict()) == []


def test_linfusion_maps_q_and_k_and_uses_elu_plus_one():
    variant = get_variant("linfusion")
    layer = _randomised(variant.build_layer(C))
    p = _state(layer)
    proj, w, b, gamma = _projections()
    x = _x()

    def mapping(prefix):
        y = F.linear(x, p[f"{prefix}.fc_in.weight"], p[f"{prefix}.fc_in.bias"])
        y = F.layer_norm(y, (C,), p[f"{prefix}.norm.weight"], p[f"{prefix}.norm.bias"], eps=1e-5)
        return x + F.linear(F.leaky_relu(y, 0.01), p[f"{prefix}.fc_out.weight"], p[f"{prefix}.fc_out.bias"])

    q, k, v = _qkv(x, w, b, gamma, False, xq=mapping("query_map"), xk=mapping("key_map"))
    expected = _merge(_dense_linear(F.elu(q) + 1, F.elu(k) + 1, v))
    got = variant.self_attention(layer, x, (H, W), proj, HEADS, backend="torch")
    assert rel_rmse(got, expected) < LINEAR_TOL


def test_linfusion_init_is_the_identity_mapping():
    layer = get_variant("linfusion").build_layer(C)
    layer.initialize(torch.Generator().manual_seed(0))
    x = torch.randn(2, 9, C)
    assert torch.equal(layer.mapped("query", x), x) and torch.equal(layer.mapped("key", x), x)


def _compress3(x, weight, bias):
    y = F.conv2d(to_grid(x, H, W), weight, bias, stride=2, padding=1, groups=C)
    return y.flatten(2).transpose(1, 2)


def test_edit_without_convfusion_uses_plain_queries_and_compressed_keys():
    variant = get_variant("edit_no_convfusion")
    layer = _randomised(variant.build_layer(C))
    assert not any(k.startswith("conv_fusion") for k in layer.state_dict())
    p = _state(layer)
    proj, w, b, gamma = _projections()
    x = _x()
    q = heads_of(F.linear(x, w["q"], b["q"]), HEADS)
    k = heads_of(_compress3(F.linear(x, w["k"], b["k"]), p["key_compressor.conv.weight"],
                            p["key_compressor.conv.bias"]), HEADS)
    v = heads_of(_compress3(F.linear(x, w["v"], b["v"]), p["value_compressor.conv.weight"],
                            p["value_compressor.conv.bias"]), HEADS)
    expected = _merge(_dense_linear(F.relu(q), F.relu(k), v))
    got = variant.self_attention(layer, x, (H, W), proj, HEADS, backend="torch")
    assert rel_rmse(got, expected) < LINEAR_TOL


def _kv_compress_reference(t, p):
    """LN(DWConv_{2×2,s2}(t)) with the odd last row/column repeated, [B, N, C] → [B, M, C]."""
    grid = to_grid(t, H, W)
    grid = torch.cat([grid, grid[:, :, -1:]], dim=2)  # H = 5 → 6: repeat the last row
    grid = torch.cat([grid, grid[:, :, :, -1:]], dim=3)  # W = 7 → 8
    y = F.conv2d(grid, p["conv.weight"], p["conv.bias"], stride=2, groups=C).flatten(2).transpose(1, 2)
    return F.layer_norm(y, (C,), p["norm.weight"], p["norm.bias"], eps=1e-6)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_learned_kv_compression_self_attention(qk_norm):
    variant = get_variant("kv_compress")
    layer = _randomised(variant.build_layer(C))
    p = _state(layer)
    proj, w, b, gamma = _projections(qk_norm=qk_norm)
    x = _x()
    q = heads_of(F.linear(x, w["q"], b["q"]), HEADS)
    k = heads_of(_kv_compress_reference(F.linear(x, w["k"], b["k"]), p), HEADS)
    v = heads_of(_kv_compress_reference(F.linear(x, w["v"], b["v"]), p), HEADS)
    if qk_norm:
        q, k = rms(q, gamma["q"]), rms(k, gamma["k"])
    assert k.shape[2] == 3 * 4
    expected = _merge(_softmax(q, k, v))
    got = variant.self_attention(layer, x, (H, W), proj, HEADS, backend="torch")
    assert rel_rmse(got, expected) < 1e-10


def test_learned_kv_compression_init_is_the_training_free_pooling_before_its_layernorm():
    layer = get_variant("kv_compress").build_layer(C)
    layer.initialize()
    x = torch.randn(1, H * W, C)
    layer.norm = torch.nn.Identity()
    pooled = F.avg_pool2d(to_grid(x, H, W), 2, ceil_mode=True).flatten(2).transpose(1, 2)
    assert rel_rmse(layer.compress(x, (H, W)), pooled) < 1e-6


def _text_setup(qk_norm):
    image_proj, wi, bi, gi = _projections(seed=2, qk_norm=qk_norm)
    text_proj, wt, bt, gt = _projections(seed=5, qk_norm=qk_norm)
    return image_proj, text_proj, (wi, bi, gi), (wt, bt, gt), _x(3), _x(4, n=6)


@pytest.mark.parametrize("image_rows_only", [False, True])
def test_mm_linear_is_one_linear_attention_over_all_tokens(image_rows_only):
    variant = get_variant("mm_linear")
    image_proj, text_proj, pi, pt, image, text = _text_setup(True)
    qi, ki, vi = _qkv(image, *pi, True)
    qt, kt, vt = _qkv(text, *pt, True)
    q, k, v = torch.cat([qt, qi], 2), torch.cat([kt, ki], 2), torch.cat([vt, vi], 2)
    expected = _dense_linear(F.relu(q), F.relu(k), v)
    got_image, got_text = variant.joint_attention(variant.build_layer(C), image, text, (H, W), image_proj, text_proj,
                                                  HEADS, image_rows_only=image_rows_only, backend="torch")
    assert rel_rmse(got_image, _merge(expected[:, :, 6:])) < LINEAR_TOL
    if image_rows_only:
        assert got_text is None
    else:
        assert rel_rmse(got_text, _merge(expected[:, :, :6])) < LINEAR_TOL


def test_learned_kv_compression_joint_keeps_text_exact():
    variant = get_variant("kv_compress")
    layer = _randomised(variant.build_layer(C))
    p = _state(layer)
    image_proj, text_proj, (wi, bi, gi), pt, image, text = _text_setup(True)
    qi = rms(heads_of(F.linear(image, wi["q"], bi["q"]), HEADS), gi["q"])
    ki = rms(heads_of(_kv_compress_reference(F.linear(image, wi["k"], bi["k"]), p), HEADS), gi["k"])
    vi = heads_of(_kv_compress_reference(F.linear(image, wi["v"], bi["v"]), p), HEADS)
    qt, kt, vt = _qkv(text, *pt, True)
    k, v = torch.cat([kt, ki], 2), torch.cat([vt, vi], 2)
    got_image, got_text = variant.joint_attention(layer, image, text, (H, W), image_proj, text_proj, HEADS)
    assert rel_rmse(got_image, _merge(_softmax(qi, k, v))) < 1e-10
    assert rel_rmse(got_text, _merge(_softmax(qt, k, v))) < 1e-10


def test_every_variant_converts_what_it_claims():
    from edit_core.families import get_family

    pixart, sd35 = get_family("pixart_sigma"), get_family("sd35_medium")
    assert {v for v in list_variants() if get_variant(v).converts(pixart)} >= {
        "edit", "sana", "linfusion", "edit_no_convfusion", "kv_compress", "kv_pool"}
    assert {v for v in list_variants() if get_variant(v).converts(sd35)} >= {"mm_edit", "mm_linear", "kv_compress",
                                                                            "kv_pool"}
    assert not get_variant("sana").converts(sd35) and not get_variant("mm_linear").converts(pixart)


def test_a_training_free_variant_makes_no_adapter():
    from edit_core.tiny import build_tiny_pixart

    with pytest.raises(ValueError, match="training-free"):
        init_adapter_from_teacher(build_tiny_pixart().state_dict(), num_heads=4, variant="kv_pool")
