"""bidirectional_conv_silu: the compiled kernel and the grouped-conv form against the tap loop."""

from __future__ import annotations

import pytest
import torch

from omniseq.kernels.cpu import cpu_kernels_available
from omniseq.kernels.depthwise_conv import (
    bidirectional_conv_silu,
    bidirectional_conv_silu_reference,
)

NEEDS_COMPILED = pytest.mark.skipif(
    not cpu_kernels_available("bidirectional_conv"),
    reason="the compiled CPU conv did not build (no C compiler?)",
)
BACKENDS = ["torch", pytest.param("cpu", marks=NEEDS_COMPILED)]


def make_inputs(batch, length, dim, taps, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)
            for shape in ((batch, length, dim), (2, dim, taps), (2, dim))]  # fmt: skip


def value_and_grads(fn, inputs, weight, **options):
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = fn(*leaves, **options)
    (out * weight.to(out.dtype)).sum().backward()
    return out, [t.grad for t in leaves]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("length,taps", [(1, 4), (3, 4), (37, 4), (20, 1), (9, 2)])
def test_matches_reference_float64_with_gradients(backend, length, taps):
    inputs = make_inputs(2, length, 5, taps, seed=length + taps)
    weight = torch.randn(2, 2, length, 5, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    expected, expected_grads = value_and_grads(bidirectional_conv_silu_reference, inputs, weight)
    got, grads = value_and_grads(bidirectional_conv_silu, inputs, weight, backend=backend)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    for name, mine, theirs in zip(("x", "weight", "bias"), grads, expected_grads, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_matches_float64_reference_with_gradients(backend):
    inputs = make_inputs(3, 101, 16, 4, seed=1)
    weight = torch.randn(2, 3, 101, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    expected, expected_grads = value_and_grads(bidirectional_conv_silu_reference, inputs, weight)
    got, grads = value_and_grads(bidirectional_conv_silu, [t.float() for t in inputs], weight, backend=backend)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(mine.double(), theirs, rtol=1e-4, atol=1e-5 * theirs.abs().max().item())


@NEEDS_COMPILED
def test_compiled_reads_a_strided_view_and_splits_channels_over_threads():
    wide, weight, bias = make_inputs(2, 13, 14, 4, seed=3)
    x = wide[..., :7]  # a chunk of a wider projection: rows 14 apart, read without a copy
    weight, bias = weight[:, :7].contiguous(), bias[:, :7].contiguous()
    grad = torch.randn(2, 2, 13, 7, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    expected, expected_grads = value_and_grads(bidirectional_conv_silu_reference, [x, weight, bias], grad)
    previous = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        got, grads = value_and_grads(bidirectional_conv_silu, [x, weight, bias], grad, backend="cpu")
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    for mine, theirs in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)


def test_bad_shapes_raise():
    x, weight, bias = make_inputs(1, 5, 3, 4, seed=0)
    with pytest.raises(ValueError, match=r"weight must have shape \(2, D, K\)"):
        bidirectional_conv_silu(x, weight[:1], bias)
    with pytest.raises(ValueError, match=r"bias must have shape \(2, D\)"):
        bidirectional_conv_silu(x, weight, bias[0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_pre_activations_stay_finite_with_gradients(backend, dtype):
    # Pre-activations of -1e3 make exp(-x) overflow; the fast-math reciprocal once turned
    # 1 / (1 + inf) into NaN (seen as an all-NaN Mamba output at input magnitude 1e3).
    x, weight, bias = make_inputs(2, 33, 16, 4, seed=5)
    x = x * 1e3
    grad_weight = torch.randn(2, 2, 33, 16, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    expected, expected_grads = value_and_grads(bidirectional_conv_silu_reference, [x, weight, bias], grad_weight)
    got, grads = value_and_grads(bidirectional_conv_silu, [t.to(dtype) for t in (x, weight, bias)], grad_weight,
                                 backend=backend)
    assert torch.isfinite(got).all() and all(torch.isfinite(g).all() for g in grads)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol * expected.abs().max().item())
    for mine, theirs in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(mine.double(), theirs, rtol=tol * 10, atol=tol * 10 * theirs.abs().max().item())
