import pytest
import torch

from edit_core.ops import hybrid_joint_attention, naive_hybrid_joint_attention
from tests.util import rel_rmse


def _inputs(b=2, h=3, n_image=35, n_text=7, m=12, d=16, dtype=torch.float32):
    q, k, v = (torch.randn(b, h, n_text + n_image, d, dtype=dtype) for _ in range(3))
    lin_q = torch.randn(b, h, n_image, d).relu().to(dtype)
    lin_k = torch.randn(b, h, m, d).relu().to(dtype)
    lin_v = torch.randn(b, h, m, d, dtype=dtype)
    return q, k, v, lin_q, lin_k, lin_v


@pytest.mark.parametrize("text_first", [True, False], ids=["text-first", "image-first"])
@pytest.mark.parametrize("eta", ["approx", "exact"])
@pytest.mark.parametrize("image_rows_only", [False, True], ids=["all-rows", "image-rows-only"])
def test_fp32_matches_float64_reference(text_first, eta, image_rows_only):
    args = _inputs()
    kw = dict(num_text=7, text_first=text_first, eta=eta, image_rows_only=image_rows_only)
    out = hybrid_joint_attention(*args, backend="torch", **kw)
    ref = naive_hybrid_joint_attention(*args, **kw)
    assert out.shape == ref.shape
    assert rel_rmse(out, ref) <= 1e-5


def test_bf16_matches_reference():
    args = _inputs(n_image=77, n_text=13, m=20, d=64, dtype=torch.bfloat16)
    out = hybrid_joint_attention(*args, num_text=13, text_first=True)
    assert out.dtype == torch.bfloat16
    assert rel_rmse(out, naive_hybrid_joint_attention(*args, num_text=13, text_first=True)) <= 1e-2


def test_text_rows_are_exact_joint_softmax():
    q, k, v, *lin = _inputs()
    out = hybrid_joint_attention(q, k, v, *lin, num_text=7, text_first=True)
    exact = torch.nn.functional.scaled_dot_product_attention(q[:, :, :7], k, v)
    assert torch.allclose(out[:, :, :7], exact, atol=1e-6)


def test_token_order_only_permutes_rows():
    q, k, v, *lin = _inputs()
    text_first = hybrid_joint_attention(q, k, v, *lin, num_text=7, text_first=True)
    roll = lambda t: torch.cat([t[:, :, 7:], t[:, :, :7]], dim=2)  # noqa: E731
    image_first = hybrid_joint_attention(roll(q), roll(k), roll(v), *lin, num_text=7, text_first=False)
    assert torch.allclose(roll(text_first), image_first, atol=1e-6)


def test_approx_eta_uses_uncompressed_image_length():
    # with the linear branch constant and the softmax branch constant, the blend is N_I / (N_I + N_T)
    b, h, n_i, n_t, m, d = 1, 1, 20, 5, 5, 4
    q = torch.zeros(b, h, n_t + n_i, d); k = torch.zeros_like(q)
    v = torch.cat([torch.zeros(b, h, n_t, d), torch.zeros(b, h, n_i, d)], dim=2)  # text values 0
    lin_v = torch.ones(b, h, m, d)
    out = hybrid_joint_attention(q, k, v, torch.ones(b, h, n_i, d), torch.ones(b, h, m, d), lin_v, num_text=n_t,
                                 text_first=True, image_rows_only=True)
    assert torch.allclose(out, torch.full_like(out, n_i / (n_i + n_t)), atol=1e-6)


def test_no_text_means_pure_linear_attention():
    q, k, v, lin_q, lin_k, lin_v = _inputs(n_text=0)
    out = hybrid_joint_attention(q, k, v, lin_q, lin_k, lin_v, num_text=0, text_first=True)
    ref = naive_hybrid_joint_attention(q, k, v, lin_q, lin_k, lin_v, num_text=0, text_first=True)
    assert torch.isfinite(out).all() and rel_rmse(out, ref) <= 1e-5


def test_bad_arguments_are_clear():
    args = _inputs()
    with pytest.raises(ValueError, match="eta"):
        hybrid_joint_attention(*args, num_text=7, text_first=True, eta="fast")
    with pytest.raises(ValueError, match="image tokens"):
        hybrid_joint_attention(*args, num_text=8, text_first=True)
    with pytest.raises(ValueError, match="num_text"):
        hybrid_joint_attention(*args, num_text=-1, text_first=True)


@pytest.mark.parametrize("eta", ["approx", "exact"])
@pytest.mark.parametrize("text_first", [True, False], ids=["text-first", "image-first"])
def test_chunked_blend_matches_reference_and_is_differentiable(monkeypatch, eta, text_first):
    from edit_core.ops.hybrid_attention import torch_impl
    monkeypatch.setattr(torch_impl, "CHUNK_TOKENS", 8)
    args64 = [t.double().requires_grad_() for t in _inputs(n_image=35, n_text=7)]
    args32 = [t.detach().float().requires_grad_() for t in args64]
    kw = dict(num_text=7, text_first=text_first, eta=eta)
    out = hybrid_joint_attention(*args32, backend="torch", **kw)
    ref = naive_hybrid_joint_attention(*args64, **kw)
    assert rel_rmse(out, ref) <= 1e-5
    weights = torch.randn(ref.shape, dtype=torch.float64)
    (ref * weights).sum().backward()
    (out * weights.float()).sum().backward()
    for fast, slow in zip(args32, args64):
        assert rel_rmse(fast.grad, slow.grad) <= 1e-4


def test_forced_backend_reaches_the_linear_branch():
    """No fused hybrid exists for triton: forcing it runs the torch blend with triton's linear attention
    (here: Triton's CPU interpreter, which tests/conftest.py enables)."""
    args = _inputs(b=1, h=2, n_image=17, n_text=5, m=5, d=64)
    out = hybrid_joint_attention(*args, num_text=5, text_first=True, backend="triton")
    assert rel_rmse(out, naive_hybrid_joint_attention(*args, num_text=5, text_first=True)) <= 1e-4
    with pytest.raises(ValueError, match="unknown attention backend"):
        hybrid_joint_attention(*args, num_text=5, text_first=True, backend="cuda-magic")
