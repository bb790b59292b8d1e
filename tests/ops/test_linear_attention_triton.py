"""The Triton linear-attention kernels, run on CPU in Triton's interpreter (conftest sets TRITON_INTERPRET=1).

Shapes stay tiny and tiles big (128 tokens on CPU): the interpreter costs milliseconds per program×iteration.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from edit_core.ops import backends, linear_attention, naive_linear_attention
from edit_core.ops.linear_attention import torch_impl
from tests.util import rel_rmse

triton_impl = pytest.importorskip("edit_core.ops.linear_attention.triton_impl")
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 before triton is imported (tests/conftest.py sets it)",
                allow_module_level=True)

TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 1e-2, torch.float16: 1e-2}


@pytest.fixture(autouse=True)
def _poison_buffers(monkeypatch):
    """Every buffer a kernel writes starts as NaN, so an element a kernel skips shows up as NaN."""
    monkeypatch.setattr(triton_impl, "POISON_BUFFERS", True)


def _raw_inputs(n, m, d, dv, dtype=torch.float32, b=1, h=2):
    """Unmapped projections: q and k have negative entries the kernels must ReLU away."""
    return (torch.randn(b, h, n, d).to(dtype), torch.randn(b, h, m, d).to(dtype),
            torch.randn(b, h, m, dv).to(dtype))


def _reference(q, k, v, eps=1e-6):
    return naive_linear_attention(q.relu(), k.relu(), v, eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("dim", [64, 72])
@pytest.mark.parametrize("tokens", [1, 17, 1000])
def test_forward_matches_float64_reference(tokens, dim, dtype):
    q, k, v = _raw_inputs(tokens, tokens // 4 + 1, dim, dim, dtype)
    out = linear_attention(q, k, v, backend="triton")
    assert out.shape == (1, 2, tokens, dim) and out.dtype == dtype
    assert torch.isfinite(out).all()
    assert rel_rmse(out, _reference(q, k, v)) <= TOLERANCE[dtype]


@pytest.mark.parametrize("dim, dim_v", [(40, 24), (128, 128), (8, 100)])
def test_any_head_dim_up_to_128_is_masked_correctly(dim, dim_v):
    q, k, v = _raw_inputs(33, 20, dim, dim_v)
    out = linear_attention(q, k, v, backend="triton")
    assert out.shape == (1, 2, 33, dim_v) and torch.isfinite(out).all()
    assert rel_rmse(out, _reference(q, k, v)) <= 1e-3


def test_fused_relu_is_identity_on_feature_mapped_inputs():
    q, k, v = _raw_inputs(17, 9, 72, 72)
    raw = linear_attention(q, k, v, backend="triton")
    mapped = linear_attention(q.relu(), k.relu(), v, backend="triton")
    assert torch.equal(raw, mapped)
    assert rel_rmse(mapped, linear_attention(q.relu(), k.relu(), v, backend="torch")) <= 1e-5


def test_state_matches_torch_and_is_independent_of_the_chunking():
    k, v = torch.randn(2, 2, 1000, 72).relu(), torch.randn(2, 2, 1000, 72)
    state, normaliser = triton_impl.linear_attention_state_triton(k, v, block_m=128, tokens_per_program=128)
    whole_state, whole_normaliser = triton_impl.linear_attention_state_triton(k, v, block_m=128,
                                                                              tokens_per_program=1024)
    ref_state, ref_normaliser = torch_impl.linear_attention_state(k.double(), v.double())
    assert state.dtype == torch.float32 and state.shape == (2, 2, 72, 72) and normaliser.shape == (2, 2, 72)
    assert rel_rmse(state, ref_state) <= 1e-6 and rel_rmse(normaliser, ref_normaliser) <= 1e-6
    assert rel_rmse(state, whole_state) <= 1e-6 and rel_rmse(normaliser, whole_normaliser) <= 1e-6


def test_forward_and_backward_are_bitwise_reproducible():
    q, k, v = (t.requires_grad_() for t in _raw_inputs(300, 300, 64, 64))
    grad = torch.randn(1, 2, 300, 64)
    runs = []
    for _ in range(2):
        out = linear_attention(q, k, v, backend="triton")
        runs.append((out, *torch.autograd.grad(out, (q, k, v), grad)))
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_strided_head_views_need_no_copy():
    # [B, N, H, D] projections viewed as [B, H, N, D], as attention processors produce them
    q, k, v = (t.transpose(1, 2) for t in (torch.randn(1, 40, 2, 72), torch.randn(1, 12, 2, 72).relu(),
                                           torch.randn(1, 12, 2, 72)))
    assert not q.is_contiguous()
    out = linear_attention(q, k, v, backend="triton")
    assert torch.equal(out, linear_attention(q.contiguous(), k.contiguous(), v.contiguous(), backend="triton"))


@pytest.mark.parametrize("tokens", [17, 1000])
def test_backward_matches_float64_autograd(tokens):
    q, k, v = _raw_inputs(tokens, tokens // 4 + 1, 72, 72)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    weights = torch.randn(1, 2, tokens, 72, dtype=torch.float64)
    (linear_attention(q, k, v, backend="triton") * weights.float()).sum().backward()
    (_reference(q64, k64, v64) * weights).sum().backward()
    for fast, ref in ((q, q64), (k, k64), (v, v64)):
        assert fast.grad.dtype == torch.float32 and torch.isfinite(fast.grad).all()
        assert rel_rmse(fast.grad, ref.grad) <= 1e-3


def test_bf16_backward_keeps_dtype_and_matches_reference():
    q, k, v = (t.requires_grad_() for t in _raw_inputs(200, 51, 64, 64, torch.bfloat16))
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    weights = torch.randn(1, 2, 200, 64, dtype=torch.float64)
    (linear_attention(q, k, v, backend="triton").double() * weights).sum().backward()
    (_reference(q64, k64, v64) * weights).sum().backward()
    for fast, ref in ((q, q64), (k, k64), (v, v64)):
        assert fast.grad.dtype == torch.bfloat16
        assert rel_rmse(fast.grad, ref.grad) <= 1e-2


def test_gradient_is_zero_where_the_raw_input_is_negative():
    q, k, v = (t.requires_grad_() for t in _raw_inputs(17, 9, 64, 64))
    linear_attention(q, k, v, backend="triton").sum().backward()
    assert (q.grad[q < 0] == 0).all() and (k.grad[k < 0] == 0).all()
    assert (q.grad[q > 0] != 0).any() and (k.grad[k > 0] != 0).any()


def test_no_keys_give_zeros_and_zero_gradients():
    q, k, v = (t.requires_grad_() for t in _raw_inputs(5, 0, 64, 64))
    out = linear_attention(q, k, v, backend="triton")
    assert out.shape == (1, 2, 5, 64) and out.abs().max() == 0
    out.sum().backward()
    assert q.grad.abs().max() == 0


# ------------------------------------------------------------------------------------------ selection

def test_auto_picks_torch_on_cpu_even_under_the_interpreter():
    q, k, v = _raw_inputs(3, 3, 8, 8)
    assert backends.resolve("linear_attention", "auto", q.relu(), k.relu(), v) is torch_impl.linear_attention_torch
    assert backends.resolve("linear_attention", "triton", q, k, v) is triton_impl.linear_attention_triton


def test_forcing_triton_on_cpu_without_the_interpreter_says_it_needs_cuda(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    q, k, v = _raw_inputs(3, 3, 8, 8)
    assert "needs CUDA tensors" in triton_impl.triton_supports(q, k, v)
    with pytest.raises(RuntimeError, match="triton backend needs CUDA tensors .*backend='torch'"):
        linear_attention(q, k, v, backend="triton")


@pytest.mark.parametrize("change, reason", [
    (lambda q, k, v: (q.double(), k.double(), v.double()), "not supported"),
    (lambda q, k, v: (q, k, v.half()), "dtypes differ"),
    (lambda q, k, v: (q, k, torch.randn(1, 2, 3, 129)), "exceed 128"),
])
def test_unsupported_inputs_give_a_reason_and_fall_back_under_auto(change, reason):
    q, k, v = change(*_raw_inputs(3, 3, 8, 8))
    assert reason in triton_impl.triton_supports(q, k, v)
    with pytest.raises(RuntimeError, match=reason):
        linear_attention(q, k, v, backend="triton")
    assert backends.resolve("linear_attention", "auto", q, k, v) is torch_impl.linear_attention_torch


def test_torch_compile_graph_breaks_around_the_kernels():
    from torch._dynamo.testing import CompileCounter

    def attend(q, k, v):
        return linear_attention(q * 2, k, v, backend="triton") + 1

    q, k, v = _raw_inputs(17, 9, 16, 16)
    counter = CompileCounter()
    compiled = torch.compile(attend, backend=counter, fullgraph=False)
    torch._dynamo.reset()
    try:
        assert torch.equal(compiled(q, k, v), attend(q, k, v))
    finally:
        torch._dynamo.reset()
    assert counter.frame_count == 2  # the graphs before and after the kernels; the launch is one graph break


def test_importing_edit_core_survives_a_missing_or_broken_triton(tmp_path):
    (tmp_path / "triton").mkdir()
    (tmp_path / "triton" / "__init__.py").write_text('raise RuntimeError("libcuda.so not found")\n')
    script = textwrap.dedent(f"""
        import sys
        import torch
        sys.modules["triton"] = None  # not installed
        from edit_core.ops import linear_attention
        q = torch.rand(1, 1, 2, 4)
        try:
            linear_attention(q, q, q, backend="triton")
        except RuntimeError as exc:
            print("MISSING:", exc)
        for name in [m for m in sys.modules if m.startswith("edit_core") or m == "triton"]:
            del sys.modules[name]
        sys.path.insert(0, {str(tmp_path)!r})  # a triton whose import raises
        from edit_core.ops import linear_attention
        print("AUTO:", linear_attention(q, q, q).shape)
        try:
            linear_attention(q, q, q, backend="triton")
        except RuntimeError as exc:
            print("BROKEN:", exc)
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert result.returncode == 0, result.stderr
    assert "MISSING: attention backend 'triton' is unavailable: install triton (pip install triton)" in result.stdout
    assert "AUTO: torch.Size([1, 1, 2, 4])" in result.stdout
    assert "BROKEN: attention backend 'triton' is unavailable: triton failed to import" in result.stdout
    assert "libcuda.so not found" in result.stdout
