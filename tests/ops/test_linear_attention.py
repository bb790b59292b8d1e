import pytest
import torch

from edit_core.ops import backends, linear_attention, naive_linear_attention
from edit_core.ops.linear_attention import torch_impl
from tests.util import rel_rmse

SHAPES = [  # B, H, N, M, D, Dv
    (1, 1, 1, 1, 8, 8),
    (2, 3, 15, 4, 16, 16),
    (1, 2, 561, 153, 72, 72),   # a 33×17 grid compressed to 17×9
    (2, 2, 1000, 257, 64, 48),
]


def _inputs(b, h, n, m, d, dv, dtype=torch.float32):
    q = torch.randn(b, h, n, d).relu().to(dtype)
    k = torch.randn(b, h, m, d).relu().to(dtype)
    v = torch.randn(b, h, m, dv).to(dtype)
    return q, k, v


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fp32_matches_float64_reference(shape):
    q, k, v = _inputs(*shape)
    out = linear_attention(q, k, v, backend="torch")
    assert out.dtype == torch.float32 and out.shape == (*q.shape[:3], v.shape[-1])
    assert rel_rmse(out, naive_linear_attention(q, k, v)) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_matches_reference_and_keeps_dtype(dtype):
    q, k, v = _inputs(2, 2, 300, 77, 72, 72, dtype)
    out = linear_attention(q, k, v, backend="torch")
    assert out.dtype == dtype
    assert rel_rmse(out, naive_linear_attention(q, k, v)) <= 1e-2


def test_chunked_state_and_apply_equal_single_chunk(monkeypatch):
    q, k, v = _inputs(1, 2, 1001, 333, 16, 16)
    whole = linear_attention(q, k, v, backend="torch")
    monkeypatch.setattr(torch_impl, "CHUNK_TOKENS", 97)
    chunked = linear_attention(q, k, v, backend="torch")
    assert rel_rmse(chunked, whole) <= 1e-6


def test_bf16_state_does_not_overflow_at_many_tokens():
    # 65k keys of magnitude ~8: a bf16/fp16 running sum of kᵀv would overflow fp16 and lose bf16 precision
    n = 65536
    q = torch.full((1, 1, 4, 8), 8.0, dtype=torch.float16)
    k = torch.full((1, 1, n, 8), 8.0, dtype=torch.float16)
    v = torch.full((1, 1, n, 8), 3.0, dtype=torch.float16)
    out = linear_attention(q, k, v, backend="torch")
    assert torch.isfinite(out).all()
    assert torch.allclose(out.float(), torch.full((1, 1, 4, 8), 3.0), rtol=1e-3)


def test_gradients_match_float64_reference():
    q, k, v = (t.double().requires_grad_() for t in _inputs(1, 2, 37, 11, 8, 6))
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    weights = torch.randn(1, 2, 37, 6, dtype=torch.float64)
    (naive_linear_attention(q, k, v) * weights).sum().backward()
    (linear_attention(q32, k32, v32, backend="torch") * weights.float()).sum().backward()
    for fast, ref in ((q32, q), (k32, k), (v32, v)):
        assert rel_rmse(fast.grad, ref.grad) <= 1e-5


def test_zero_keys_give_zero_not_nan():
    q, k, v = _inputs(1, 1, 5, 3, 4, 4)
    out = linear_attention(q, torch.zeros_like(k), v, backend="torch")
    assert torch.isfinite(out).all() and out.abs().max() == 0


def test_every_output_row_is_written():
    # a NaN anywhere in the output would mean a chunk boundary was skipped
    q, k, v = _inputs(1, 2, 2 * torch_impl.CHUNK_TOKENS + 5, 9, 4, 4)
    assert torch.isfinite(linear_attention(q, k, v, backend="torch")).all()


def test_shape_errors_are_clear():
    q, k, v = _inputs(1, 2, 5, 3, 4, 4)
    with pytest.raises(ValueError, match="shape mismatch"):
        linear_attention(q, k[:, :1], v)
    with pytest.raises(ValueError, match="head dims differ"):
        linear_attention(q, k[..., :3], v)
    with pytest.raises(ValueError, match="4-D"):
        linear_attention(q[0], k[0], v[0])


def test_unknown_backend_is_rejected_with_choices():
    q, k, v = _inputs(1, 1, 3, 3, 4, 4)
    with pytest.raises(ValueError, match="auto, torch, triton"):
        linear_attention(q, k, v, backend="cuda-magic")


def test_auto_uses_torch_on_cpu():
    q, k, v = _inputs(1, 1, 3, 3, 4, 4)
    assert backends.resolve("linear_attention", "auto", q, k, v) is torch_impl.linear_attention_torch


@pytest.mark.slow
def test_memory_is_linear_at_8k_image_tokens():
    """262,144 query tokens (an 8K image at patch 2 · VAE 8) against 65,536 compressed keys: fp32 state,
    no N×M matrix. A quadratic implementation would need 262144·65536·4 B = 64 GiB per head."""
    b, h, n, m, d = 1, 16, 262_144, 65_536, 72  # PixArt-Σ heads
    q = torch.rand(b, h, n, d, dtype=torch.bfloat16)
    k = torch.rand(b, h, m, d, dtype=torch.bfloat16)
    v = torch.randn(b, h, m, d, dtype=torch.bfloat16)
    out = linear_attention(q, k, v, backend="torch")
    assert out.shape == (b, h, n, d) and out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    idx = torch.randint(0, n, (64,))
    ref = naive_linear_attention(q[:, :, idx], k, v)  # 64 rows of the exact answer
    assert rel_rmse(out[:, :, idx], ref) <= 1e-2


def test_auto_falls_back_to_torch_when_a_fast_backend_fails(monkeypatch, caplog):
    calls = []

    def broken(q, k, v, eps):
        calls.append(1)
        raise RuntimeError("kernel failed to compile")

    monkeypatch.setitem(backends._REGISTRY, "linear_attention", dict(backends._REGISTRY["linear_attention"]))
    monkeypatch.setattr(backends, "_AUTO_DISABLED", {})
    monkeypatch.setattr(backends, "_LAZY", {})
    backends.register_backend("linear_attention", "triton", broken, priority=99)
    q, k, v = _inputs(1, 1, 5, 3, 4, 4)
    out = linear_attention(q, k, v)
    assert rel_rmse(out, naive_linear_attention(q, k, v)) <= 1e-5
    assert "failed" in caplog.text
    linear_attention(q, k, v)
    assert calls == [1]  # disabled for auto after the first failure
    with pytest.raises(RuntimeError, match="compile"):
        linear_attention(q, k, v, backend="triton")  # forcing it still surfaces the error


def test_chunked_apply_is_differentiable(monkeypatch):
    monkeypatch.setattr(torch_impl, "CHUNK_TOKENS", 16)
    q, k, v = (t.double().requires_grad_() for t in _inputs(1, 2, 37, 11, 8, 6))
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    naive_linear_attention(q, k, v).sum().backward()
    linear_attention(q32, k32, v32, backend="torch").sum().backward()
    for fast, ref in ((q32, q), (k32, k), (v32, v)):
        assert rel_rmse(fast.grad, ref.grad) <= 1e-5


def test_importing_the_ops_does_not_import_triton():
    """Triton's import costs about a second of ComfyUI start-up: it is loaded only when forced or on CUDA."""
    import subprocess
    import sys
    script = "import sys, torch, edit_core.ops as ops; q = torch.rand(1, 1, 3, 4); ops.linear_attention(q, q, q); " \
             "print('triton' in sys.modules)"
    root = __file__.rsplit("/tests/", 1)[0]
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=root)
    assert result.stdout.strip() == "False"


def test_the_state_stays_fp32_under_autocast():
    """Autocast must not cast the fp32 state matmuls back to bf16 (issue 11: training fell back to a bf16 state)."""
    from edit_core.ops.linear_attention.torch_impl import linear_attention_state, linear_attention_torch

    g = torch.Generator().manual_seed(0)
    q, k = torch.rand(1, 2, 37, 16, generator=g), torch.rand(1, 2, 37, 16, generator=g)
    v = torch.randn(1, 2, 37, 16, generator=g) + 3.0  # an offset makes bf16 rounding of the state visible
    expected = naive_linear_attention(q.double(), k.double(), v.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        state, normaliser = linear_attention_state(k, v)
        out = linear_attention_torch(q, k, v)
    assert state.dtype == torch.float32 and normaliser.dtype == torch.float32
    assert out.dtype == torch.float32
    assert (out.double() - expected).abs().max() < 1e-5
