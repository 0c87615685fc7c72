"""selective_scan_bidirectional (both directions in one grouped compiled call) against the step loop."""

from __future__ import annotations

import importlib

import pytest
import torch

from omniseq.kernels.cpu import cpu_kernels_available
from omniseq.kernels.selective_scan import (
    selective_scan_bidirectional,
    selective_scan_bidirectional_reference,
)

NEEDS_COMPILED = pytest.mark.skipif(
    not cpu_kernels_available("selective_scan"),
    reason="the compiled CPU selective scan did not build (no C compiler?)",
)
FAST_BACKENDS = ["torch", pytest.param("cpu", marks=NEEDS_COMPILED)]


def make_inputs(batch, length, dim, nstate, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(dtype)

    return dict(
        u=randn(2, batch, length, dim),
        delta=randn(2, batch, length, dim, scale=0.5),
        # Different spectra per direction, so a direction that read the other's A shows.
        A=torch.stack([-(0.1 + 2 * torch.rand(dim, nstate, generator=gen, dtype=torch.float64)),
                       -(1.0 + 5 * torch.rand(dim, nstate, generator=gen, dtype=torch.float64))]).to(dtype),
        B=randn(2, batch, length, nstate),
        C=randn(2, batch, length, nstate),
        D=randn(2, dim),
        delta_bias=randn(2, dim, scale=0.5),
    )


def grads_of(fn, inputs, weight, **options):
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    y = fn(**leaves, **options)
    (y * weight.to(y.dtype)).sum().backward()
    return y, {k: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("nstate", [3, 4, 8, 16])  # the compiled kernel specialises 4, 8, 16
@pytest.mark.parametrize("softplus", [True, False])
@pytest.mark.parametrize("dim", [5, 37])  # the kernel's 16-channel blocks, and leftover channels
def test_matches_reference_float64_with_gradients(backend, nstate, softplus, dim):
    inputs = make_inputs(3, 37, dim, nstate, seed=nstate)
    if not softplus:
        inputs["delta"] = inputs["delta"].abs()
        inputs["delta_bias"] = inputs["delta_bias"].abs()
    weight = torch.randn(2, 3, 37, dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y_ref, g_ref = grads_of(selective_scan_bidirectional_reference, inputs, weight, delta_softplus=softplus)
    y, g = grads_of(selective_scan_bidirectional, inputs, weight, delta_softplus=softplus, backend=backend)
    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-11)
    for key in inputs:
        torch.testing.assert_close(g[key], g_ref[key], rtol=1e-8, atol=1e-10, msg=key)


@NEEDS_COMPILED
def test_float32_matches_float64_reference_with_gradients():
    inputs = make_inputs(2, 150, 22, 16, seed=3)
    weight = torch.randn(2, 2, 150, 22, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y_ref, g_ref = grads_of(selective_scan_bidirectional_reference, inputs, weight, delta_softplus=True)
    single = {k: v.float() for k, v in inputs.items()}
    y, g = grads_of(selective_scan_bidirectional, single, weight, delta_softplus=True, backend="cpu")
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)
    for key in inputs:
        scale = g_ref[key].abs().max().item()
        torch.testing.assert_close(g[key].double(), g_ref[key], rtol=1e-4, atol=1e-5 * scale, msg=key)


@NEEDS_COMPILED
def test_threads_split_channels_of_both_directions():
    inputs = make_inputs(2, 21, 41, 4, seed=5)
    weight = torch.randn(2, 2, 21, 41, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    previous, results = torch.get_num_threads(), []
    for threads in (1, 2):  # 2 uneven slices of blocks and leftovers; dA and dD owned per slice
        torch.set_num_threads(threads)
        try:
            results.append(grads_of(selective_scan_bidirectional, inputs, weight, delta_softplus=True, backend="cpu"))
        finally:
            torch.set_num_threads(previous)
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-12, atol=1e-12)
    for key in inputs:
        torch.testing.assert_close(results[1][1][key], results[0][1][key], rtol=1e-12, atol=1e-12)


@NEEDS_COMPILED
def test_grouped_softplus_matches_torch_with_gradients():
    softplus_with_bias_cpu = importlib.import_module("omniseq.kernels.cpu.selective_scan").softplus_with_bias_cpu
    gen = torch.Generator().manual_seed(4)
    # Both sides of PyTorch's threshold (identity above 20) and deep underflow.
    x = torch.linspace(-60, 60, 2 * 3 * 41, dtype=torch.float64).reshape(2, 3, 41).requires_grad_()
    bias = torch.randn(2, 41, generator=gen, dtype=torch.float64).requires_grad_()
    grad = torch.randn(2, 3, 41, generator=gen, dtype=torch.float64)
    got = softplus_with_bias_cpu(x, bias)
    got_grads = torch.autograd.grad(got, (x, bias), grad)
    expected = torch.nn.functional.softplus(x + bias[:, None])
    expected_grads = torch.autograd.grad(expected, (x, bias), grad)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-300)
    for mine, theirs in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-15)


def test_bad_direction_axis_raises():
    inputs = make_inputs(1, 4, 2, 3, seed=0)
    with pytest.raises(ValueError, match=r"u must have shape \(2, B, L, D\)"):
        selective_scan_bidirectional(**{**inputs, "u": inputs["u"][0]})
    with pytest.raises(ValueError, match="A needs a leading direction axis of 2"):
        selective_scan_bidirectional(**{**inputs, "A": inputs["A"][:1]})
