import pytest
import torch

from edit_core.modules import (ConvFusion, EDiTLayerAdapter, EDiTSelfAttention, MMEDiTJointAttention,
                               SpatialCompressor, compressed_grid)
from tests import reference as ref
from tests.util import rel_rmse

GRIDS = [(1, 1), (3, 5), (7, 7), (33, 17), (64, 64)]
WIDTHS = [(64, 4), (144, 2)]  # (channels, heads): head dims 16 and 72


def _perturb(module: torch.nn.Module, scale=0.05, seed=1):
    """Trained-looking weights: an initialised adapter has a zero conv_out, which would hide bugs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return module


def _layer(channels, dtype=torch.float32):
    layer = EDiTLayerAdapter(channels)
    layer.initialize(torch.Generator().manual_seed(0))
    return _perturb(layer).to(dtype)


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
def test_conv_fusion_matches_reference(grid):
    h, w = grid
    module = _perturb(ConvFusion(64, reduction=4))
    x = torch.randn(2, h * w, 64)
    expected = ref.conv_fusion(x.double(), module.state_dict(), h, w, groups=16)
    assert rel_rmse(module(x, grid), expected) <= 1e-5


def test_conv_fusion_starts_as_identity():
    module = ConvFusion(64)
    module.initialize(torch.Generator().manual_seed(0))
    x = torch.randn(1, 15, 64)
    assert torch.equal(module(x, (3, 5)), x)


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
def test_spatial_compressor_grid_and_values(grid):
    h, w = grid
    module = _perturb(SpatialCompressor(32))
    x = torch.randn(2, h * w, 32)
    y, out_grid = module(x, grid)
    assert out_grid == compressed_grid(grid) == ((h + 1) // 2, (w + 1) // 2)
    assert y.shape == (2, out_grid[0] * out_grid[1], 32)
    expected = ref.compress(x.double(), module.conv.weight, module.conv.bias, h, w)
    assert rel_rmse(y, expected) <= 1e-5


def test_spatial_compressor_blur_init_keeps_a_constant():
    module = SpatialCompressor(8)
    module.initialize()
    y, _ = module(torch.full((1, 36, 8), 3.0), (6, 6))
    interior = y.view(1, 3, 3, 8)[:, 1:, 1:]  # away from the zero padding
    assert torch.allclose(interior, torch.full_like(interior, 3.0))


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
@pytest.mark.parametrize("width", WIDTHS, ids=lambda w: f"C{w[0]}H{w[1]}")
def test_edit_self_attention_matches_reference(grid, width):
    channels, heads = width
    h, w = grid
    attn = _perturb(EDiTSelfAttention(channels, heads), seed=2)
    x = torch.randn(2, h * w, channels)
    out = torch.full((2, h * w, channels), float("nan"))
    out.copy_(attn(x, grid))
    sd = attn.state_dict()
    teacher = {k: v for k, v in sd.items() if not k.startswith("edit.")}
    layer = {k[len("edit."):]: v for k, v in sd.items() if k.startswith("edit.")}
    expected = ref.edit_self_attention(x, layer, teacher, h, w, heads, groups=attn.edit.conv_fusion.norm.num_groups)
    assert torch.isfinite(out).all()
    assert rel_rmse(out, expected) <= 1e-5


def test_edit_self_attention_bf16_matches_reference():
    attn = _perturb(EDiTSelfAttention(144, 2), seed=3).to(torch.bfloat16)
    x = torch.randn(1, 33 * 17, 144, dtype=torch.bfloat16)
    out = attn(x, (33, 17))
    assert out.dtype == torch.bfloat16
    sd = attn.state_dict()
    teacher = {k: v for k, v in sd.items() if not k.startswith("edit.")}
    layer = {k[len("edit."):]: v for k, v in sd.items() if k.startswith("edit.")}
    expected = ref.edit_self_attention(x, layer, teacher, 33, 17, 2, groups=attn.edit.conv_fusion.norm.num_groups)
    assert rel_rmse(out, expected) <= 1e-2


def test_edit_self_attention_with_rms_qk_norm_matches_reference():
    attn = _perturb(EDiTSelfAttention(64, 4, qk_norm="rms"), seed=4)
    x = torch.randn(2, 7 * 9, 64)
    sd = attn.state_dict()
    teacher = {k: v for k, v in sd.items() if not k.startswith("edit.")}
    layer = {k[len("edit."):]: v for k, v in sd.items() if k.startswith("edit.")}
    expected = ref.edit_self_attention(x, layer, teacher, 7, 9, 4, groups=16, norm_q=sd["norm_q.weight"],
                                       norm_k=sd["norm_k.weight"])
    assert rel_rmse(attn(x, (7, 9)), expected) <= 1e-5


@pytest.mark.parametrize("grid", [(1, 1), (3, 5), (33, 17)], ids=lambda g: f"{g[0]}x{g[1]}")
@pytest.mark.parametrize("eta", ["approx", "exact"])
@pytest.mark.parametrize("pre_only", [False, True], ids=["joint", "last-block"])
def test_mm_edit_joint_attention_matches_reference(grid, eta, pre_only):
    h, w = grid
    attn = _perturb(MMEDiTJointAttention(64, 4, eta=eta, context_pre_only=pre_only), seed=5)
    image, text = torch.randn(2, h * w, 64), torch.randn(2, 11, 64)
    out_image, out_text = attn(image, text, grid)
    sd = attn.state_dict()
    teacher = {k: v for k, v in sd.items() if not k.startswith("edit.")}
    layer = {k[len("edit."):]: v for k, v in sd.items() if k.startswith("edit.")}
    exp_image, exp_text = ref.mm_edit_joint(image, text, layer, teacher, h, w, 4, groups=16, eta=eta,
                                            image_rows_only=pre_only)
    assert rel_rmse(out_image, exp_image) <= 1e-5
    if pre_only:
        assert out_text is None
    else:
        assert rel_rmse(out_text, exp_text) <= 1e-5


def test_init_adapter_gives_plain_relu_linear_attention_on_teacher_weights():
    """At step 0 (zero conv_out) the query path is exactly ReLU(W_q x)."""
    attn = EDiTSelfAttention(64, 4)
    attn.edit.initialize(torch.Generator().manual_seed(0))
    x = torch.randn(1, 25, 64)
    q_plain = torch.relu(attn.to_q(x))
    q_fused = torch.relu(attn.to_q(attn.edit.conv_fusion(x, (5, 5))))
    assert torch.equal(q_plain, q_fused)


def test_grid_mismatch_is_a_clear_error():
    attn = EDiTSelfAttention(64, 4)
    with pytest.raises(ValueError, match="does not match 15 tokens"):
        attn(torch.randn(1, 15, 64), (4, 4))


def test_bad_widths_are_rejected():
    with pytest.raises(ValueError, match="divisible by the reduction"):
        ConvFusion(66, reduction=4)
    with pytest.raises(ValueError, match="heads"):
        EDiTSelfAttention(64, 5)


def test_operations_namespace_is_used():
    calls = []

    class Ops:
        class Linear(torch.nn.Linear):
            def __init__(self, *a, **k):
                calls.append("Linear"); super().__init__(*a, **k)

        class Conv2d(torch.nn.Conv2d):
            def __init__(self, *a, **k):
                calls.append("Conv2d"); super().__init__(*a, **k)

        GroupNorm = torch.nn.GroupNorm

    EDiTSelfAttention(64, 4, operations=Ops, dtype=torch.float64)
    assert calls.count("Linear") == 4 and calls.count("Conv2d") == 4


def test_mm_edit_joint_attention_never_builds_a_joint_sized_tensor():
    """Text and image rows come from the two streams directly: no tensor as large as the [text; image]
    concatenation of q, k, v or of the joint output exists at any point (what drove the peak at 65k tokens)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    n_image, n_text, width = 20 * 24, 11, 64
    attn = _perturb(MMEDiTJointAttention(width, 4), seed=5)
    image, text = torch.randn(1, n_image, width), torch.randn(1, n_text, width)
    largest = []

    class Sizes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in (out if isinstance(out, (tuple, list)) else (out,)):
                if isinstance(t, torch.Tensor):
                    largest.append((t.numel(), str(func)))
            return out

    with torch.no_grad(), Sizes():
        attn(image, text, (20, 24))
    numel, func = max(largest)
    assert numel < (n_image + n_text) * width, f"{func} made a joint-sized tensor"


@pytest.mark.parametrize("eta", ["approx", "exact"])
def test_hybrid_streams_match_the_joint_form_and_reference(eta):
    from edit_core.ops import hybrid_joint_attention_streams, naive_hybrid_joint_attention

    g = torch.Generator().manual_seed(3)
    b, h, n_t, n_i, m, d = 2, 3, 7, 35, 12, 16
    q, k, v = (torch.randn(b, h, n_t + n_i, d, generator=g, dtype=torch.float64) for _ in range(3))
    lin = (torch.randn(b, h, n_i, d, generator=g, dtype=torch.float64).relu(),
           torch.randn(b, h, m, d, generator=g, dtype=torch.float64).relu(),
           torch.randn(b, h, m, d, generator=g, dtype=torch.float64))
    image_rows, text_rows = hybrid_joint_attention_streams(q[:, :, :n_t], k[:, :, :n_t], v[:, :, :n_t],
                                                           q[:, :, n_t:], k[:, :, n_t:], v[:, :, n_t:], *lin, eta=eta)
    expected = naive_hybrid_joint_attention(q, k, v, *lin, num_text=n_t, text_first=True, eta=eta)
    assert rel_rmse(text_rows, expected[:, :, :n_t]) <= 1e-12
    assert rel_rmse(image_rows, expected[:, :, n_t:]) <= 1e-6  # the blend runs in fp32 by design
