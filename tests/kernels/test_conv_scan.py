"""conv_scan (ConvS5's B convolution, in-place plane scan and C readout as one op) against a loop."""

from __future__ import annotations

import pytest
import torch

from omniseq.kernels.conv_scan import conv_scan, conv_scan_reference


def _inputs(dtype=torch.float64, length=5, batch=2, u_dim=3, p=4, out_dim=2, size=(4, 5), k=3, h0=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cplx = torch.complex128 if dtype == torch.float64 else torch.complex64
    u = torch.randn(length * batch, u_dim, *size, generator=gen, dtype=dtype)
    b_kernel = torch.randn(2 * p, u_dim, k, k, generator=gen, dtype=dtype) / k
    radius = torch.rand(p, generator=gen, dtype=dtype) * 0.9 + 0.05
    a = torch.polar(radius, torch.rand(p, generator=gen, dtype=dtype) * 6.28).to(cplx)
    c_kernel = torch.randn(out_dim, 2 * p, k, k, generator=gen, dtype=dtype) / k
    state = torch.randn(batch, *size, p, generator=gen, dtype=cplx) if h0 else None
    return u, b_kernel, a, c_kernel, state


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("last_only", [False, True])
@pytest.mark.parametrize("length", [1, 2, 7])
@pytest.mark.parametrize("chunk, recompute", [(None, False), (1, False), (3, False), (1, True), (3, True)])
def test_values_and_gradients_match_the_loop(dtype, tol, with_h0, last_only, length, chunk, recompute):
    inputs = _inputs(dtype, length=length, h0=with_h0, seed=length)
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    refs = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    y, last = conv_scan(*leaves[:4], length, leaves[4], last_only=last_only, chunk=chunk, recompute=recompute)
    y_ref, last_ref = conv_scan_reference(*refs[:4], length, refs[4], last_only=last_only)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(last, last_ref, rtol=tol, atol=tol)
    gen = torch.Generator().manual_seed(1)
    weight_y = torch.randn(y.shape, generator=gen, dtype=dtype)
    weight_last = torch.randn(last.shape, generator=gen, dtype=last.dtype)
    ((y * weight_y).sum() + (last * weight_last).real.sum()).backward()
    ((y_ref * weight_y).sum() + (last_ref * weight_last).real.sum()).backward()
    for got, want in zip(leaves, refs, strict=True):
        if got is not None:  # (with one frame and no h0 the loop never touches a: no gradient)
            expected = torch.zeros_like(want) if want.grad is None else want.grad
            torch.testing.assert_close(got.grad, expected, rtol=tol * 10, atol=tol * 10)


@pytest.mark.parametrize("last_only", [False, True])
@pytest.mark.parametrize("recompute", [False, True])
def test_gradients_from_one_output_only(last_only, recompute):
    """Only y, or only the last state, reaches the loss (the other gradient is None)."""
    for pick in (0, 1):
        inputs = _inputs(length=4, seed=3)
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        refs = [t.detach().clone().requires_grad_() for t in inputs]
        out = conv_scan(*leaves[:4], 4, leaves[4], last_only=last_only, chunk=3, recompute=recompute)[pick]
        ref = conv_scan_reference(*refs[:4], 4, refs[4], last_only=last_only)[pick]
        (out.abs().square().sum()).backward()
        (ref.abs().square().sum()).backward()
        for got, want in zip(leaves, refs, strict=True):
            torch.testing.assert_close(got.grad, want.grad, rtol=1e-9, atol=1e-10)


def test_gradcheck():
    u, b_kernel, a, c_kernel, h0 = _inputs(length=3, batch=1, u_dim=2, p=2, out_dim=1, size=(2, 3))
    for last_only, recompute in ((False, False), (True, False), (False, True)):
        assert torch.autograd.gradcheck(
            lambda *t, last_only=last_only, recompute=recompute: conv_scan(
                *t[:4], 3, t[4], last_only=last_only, chunk=2, recompute=recompute),
            tuple(t.detach().clone().requires_grad_() for t in (u, b_kernel, a, c_kernel, h0)))


def test_half_precision_is_computed_in_fp32_and_the_inputs_are_not_modified():
    u, b_kernel, a, c_kernel, h0 = _inputs(torch.float32, length=4)
    kept = u.clone()
    y, _ = conv_scan(u.bfloat16(), b_kernel, a, c_kernel, 4, h0)
    y_ref, _ = conv_scan_reference(u.bfloat16().float(), b_kernel, a, c_kernel, 4, h0)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref, rtol=1e-2, atol=1e-2)
    conv_scan(u, b_kernel, a, c_kernel, 4, h0)
    torch.testing.assert_close(u, kept, rtol=0, atol=0)


def test_bad_shapes_raise_clear_errors():
    u, b_kernel, a, c_kernel, h0 = _inputs(length=3)
    with pytest.raises(ValueError, match=r"u must be \(L\*B, U, H, W\) frames with L = 4"):
        conv_scan(u, b_kernel, a, c_kernel, 4)
    with pytest.raises(ValueError, match="a must be complex"):
        conv_scan(u, b_kernel, a.real, c_kernel, 3)
    with pytest.raises(ValueError, match=r"b_kernel must be \(2P, U, k, k\)"):
        conv_scan(u, b_kernel[:-1], a, c_kernel, 3)
    with pytest.raises(ValueError, match=r"c_kernel must be \(U_out, 2P, k, k\)"):
        conv_scan(u, b_kernel, a, c_kernel[:, :-1], 3)
    with pytest.raises(ValueError, match=r"h0 must be \(B, H, W, P\)"):
        conv_scan(u, b_kernel, a, c_kernel, 3, h0[..., :-1])
    with pytest.raises(ValueError, match="chunk must be a positive number of time steps, got 0"):
        conv_scan(u, b_kernel, a, c_kernel, 3, chunk=0)
