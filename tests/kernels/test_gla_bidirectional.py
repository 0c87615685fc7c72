"""Both GLA directions in one chunked pass against the two token-by-token recurrences:
values (fp64, fp32, half), gradients, path selection, strided inputs and bad arguments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from omniseq.kernels import gla_bidirectional as bidirectional_module
from omniseq.kernels.gla_bidirectional import (
    bidirectional_gated_linear_attention,
    bidirectional_gated_linear_attention_reference,
)


def make_inputs(B, L, H, K, V, gate, seed, dtype=torch.float64):
    """q, k, v and forward/backward log gates; "mild" is ViG's logsigmoid / 16 parameterisation."""
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, L, H, K, generator=gen, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, L, H, V, generator=gen, dtype=torch.float64)
    raw = torch.randn(2, B, L, H, K, generator=gen, dtype=torch.float64)
    if gate == "mild":
        g = F.logsigmoid(3 * raw) / 16
    elif gate == "strong":  # cumulative sums beyond the fp32 narrow limit within a chunk
        g = F.logsigmoid(3 * raw)
    elif gate == "extreme":  # too wide to factor even in float64 (beyond one token): the exact path
        g = -200 * raw.abs()
    else:  # gates of exactly 0 (log gate -inf) here and there
        g = (F.logsigmoid(raw) / 16).masked_fill(raw > 1.5, float("-inf"))
    return tuple(t.to(dtype) for t in (q, k, v, g[0], g[1]))


@pytest.fixture
def fused_calls(monkeypatch):
    """Records whether each call took the one-pass form (True) or the exact two-call path (False)."""
    calls: list[bool] = []
    fused = bidirectional_module._fused

    def spy(*args):
        out = fused(*args)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(bidirectional_module, "_fused", spy)
    return calls


@pytest.mark.parametrize("gate", ["mild", "strong", "extreme", "zero_gates"])
@pytest.mark.parametrize(("L", "chunk_size"), [(1, 64), (17, 64), (64, 16), (100, 16), (130, 24)])
def test_equals_the_two_recurrences_float64(fused_calls, gate, L, chunk_size):
    q, k, v, g_f, g_b = make_inputs(2, L, 3, 5, 4, gate, seed=L)
    # float64 factors any gates within one token; a -inf gate always takes the exact path
    has_zero_gate = bool(torch.isinf(g_f).any() or torch.isinf(g_b).any())
    fused = not has_zero_gate and (gate in ("mild", "strong") or L == 1)
    with torch.no_grad():
        out = bidirectional_gated_linear_attention(q, k, v, g_f, g_b, chunk_size=chunk_size)
    expected = bidirectional_gated_linear_attention_reference(q, k, v, g_f, g_b)
    assert out.shape == v.shape and out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
    assert fused_calls == [fused]


def test_float32_and_strided_views_match_float64(fused_calls):
    """ViG passes q, k, v as views into one projection and the gates as halves of another."""
    torch.manual_seed(0)
    B, L, H, K, V = 2, 200, 3, 8, 16
    projected = torch.randn(B, L, H * (2 * K + V))
    q, k, v = (t.unflatten(-1, (H, -1)) for t in projected.split([H * K, H * K, H * V], dim=-1))
    gates = (F.logsigmoid(3 * torch.randn(B, L, 2 * H * K)) / 16).chunk(2, dim=-1)
    g_f, g_b = (g.unflatten(-1, (H, K)) for g in gates)
    assert not q.is_contiguous() and not g_b.is_contiguous()
    out = bidirectional_gated_linear_attention(q, k, v, g_f, g_b, scale=0.3)
    expected = bidirectional_gated_linear_attention_reference(*(t.double() for t in (q, k, v, g_f, g_b)), scale=0.3)
    torch.testing.assert_close(out.double(), expected, rtol=2e-5, atol=2e-5)
    assert fused_calls == [True]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_run_in_float32(dtype):
    q, k, v, g_f, g_b = make_inputs(1, 90, 2, 4, 4, "mild", seed=5, dtype=dtype)
    out = bidirectional_gated_linear_attention(q, k, v, g_f, g_b)
    assert out.dtype == dtype
    expected = bidirectional_gated_linear_attention_reference(*(t.double() for t in (q, k, v, g_f, g_b)))
    torch.testing.assert_close(out.double(), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("gate", ["mild", "extreme"])
def test_gradients_equal_the_recurrences(fused_calls, gate):
    inputs = make_inputs(2, 90, 2, 5, 3, gate, seed=13)

    def grads(fn):
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        out = fn(*leaves)
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=out.dtype)
        return torch.autograd.grad((out * weights).sum(), leaves)

    got = grads(lambda *t: bidirectional_gated_linear_attention(*t, chunk_size=32))
    want = grads(bidirectional_gated_linear_attention_reference)
    for name, a, b in zip(("q", "k", "v", "g_forward", "g_backward"), got, want, strict=True):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=name)
    assert fused_calls == [gate == "mild"]


def test_gradcheck():
    inputs = [t.requires_grad_(True) for t in make_inputs(1, 7, 1, 3, 2, "mild", seed=17)]
    assert torch.autograd.gradcheck(lambda *t: bidirectional_gated_linear_attention(*t, chunk_size=16), inputs)


def test_bad_shapes_and_chunk_size_are_refused():
    q, k, v, g_f, g_b = make_inputs(1, 8, 2, 4, 3, "mild", seed=0)
    with pytest.raises(ValueError, match="g must have shape"):
        bidirectional_gated_linear_attention(q, k, v, g_f, g_b[:, :4])
    with pytest.raises(ValueError, match="v must have shape"):
        bidirectional_gated_linear_attention(q, k, v[:, :4], g_f, g_b)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        bidirectional_gated_linear_attention(q, k, v, g_f, g_b, chunk_size=0)


def test_float32_gate_sums_beyond_the_narrow_limit_take_the_exact_path(fused_calls):
    """fp32 cumulative gates beyond -32 within a chunk would lose precision in the one-pass form."""
    q, k, v, g_f, g_b = make_inputs(1, 130, 2, 4, 3, "strong", seed=3, dtype=torch.float32)
    out = bidirectional_gated_linear_attention(q, k, v, g_f, g_b)
    expected = bidirectional_gated_linear_attention_reference(*(t.double() for t in (q, k, v, g_f, g_b)))
    torch.testing.assert_close(out.double(), expected, rtol=2e-5, atol=2e-5)
    assert fused_calls == [False]
