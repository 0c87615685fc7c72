"""plane_scan (one time-invariant decay per channel) against loops, values and gradients."""

from __future__ import annotations

import pytest
import torch

from omniseq.kernels.linear_scan import linear_scan_reference
from omniseq.kernels.plane_scan import plane_scan, plane_scan_reference


def _inputs(dtype, batch=2, length=7, spatial=(3, 4), p=5, h0=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    real = torch.float64 if dtype in (torch.float64, torch.complex128) else torch.float32
    radius = torch.rand(p, generator=gen, dtype=real) * 0.9 + 0.05
    if dtype.is_complex:
        a = torch.polar(radius, torch.rand(p, generator=gen, dtype=real) * 6.28)
    else:
        a = radius * torch.where(torch.rand(p, generator=gen) < 0.5, -1.0, 1.0).to(real)
    b = torch.randn(batch, length, *spatial, p, generator=gen, dtype=dtype)
    state = torch.randn(batch, *spatial, p, generator=gen, dtype=dtype) if h0 else None
    return a, b, state


@pytest.mark.parametrize("dtype", [torch.complex128, torch.float64])
def test_reference_equals_the_generic_loop(dtype):
    a, b, h0 = _inputs(dtype)
    expected = linear_scan_reference(a.expand_as(b), b, h0=h0)
    torch.testing.assert_close(plane_scan_reference(a, b, h0), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype, tol", [(torch.complex128, 1e-12), (torch.float64, 1e-12),
                                        (torch.complex64, 1e-5), (torch.float32, 1e-5)])
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("length", [1, 2, 9])
def test_values_and_gradients_match_the_loop(dtype, tol, with_h0, length):
    a, b, h0 = _inputs(dtype, length=length, h0=with_h0, seed=length)
    leaves = [t.detach().clone().requires_grad_() for t in (a, b) + ((h0,) if with_h0 else ())]
    refs = [t.detach().clone().requires_grad_() for t in leaves]
    fast = plane_scan(leaves[0], leaves[1], leaves[2] if with_h0 else None)
    slow = plane_scan_reference(refs[0], refs[1], refs[2] if with_h0 else None)
    torch.testing.assert_close(fast, slow, rtol=tol, atol=tol)
    weight = torch.randn_like(fast)
    (fast * weight).real.sum().backward()
    (slow * weight).real.sum().backward()
    for got, want in zip(leaves, refs, strict=True):
        torch.testing.assert_close(got.grad, want.grad, rtol=tol * 10, atol=tol * 10)


def test_gradcheck_complex128():
    a, b, h0 = _inputs(torch.complex128, batch=1, length=4, spatial=(2,), p=2)
    assert torch.autograd.gradcheck(plane_scan, tuple(t.requires_grad_() for t in (a, b, h0)))


def test_complex_views_of_a_channels_last_real_tensor_and_half_precision():
    a, b, _ = _inputs(torch.complex64, spatial=(3, 4))
    # As ConvS5 passes it: a real (N, 2P, H, W) channels-last tensor viewed as complex (N, H, W, P).
    real = torch.view_as_real(b.flatten(0, 1)).flatten(-2).permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last)
    view = torch.view_as_complex(real.permute(0, 2, 3, 1).unflatten(-1, (5, 2))).unflatten(0, b.shape[:2])
    assert view.data_ptr() == real.data_ptr()
    torch.testing.assert_close(plane_scan(a, view), plane_scan_reference(a, b))
    x = torch.randn(2, 6, 3, 5)
    decay = a.real.bfloat16()
    half = plane_scan(decay, x.bfloat16())  # scanned in fp32, returned in bf16
    assert half.dtype == torch.bfloat16
    expected = plane_scan_reference(decay.float(), x.bfloat16().float())
    torch.testing.assert_close(half.float(), expected, rtol=2e-2, atol=2e-2)


def test_bad_shapes_name_the_problem():
    a, b, h0 = _inputs(torch.complex64)
    with pytest.raises(ValueError, match="P = 5"):
        plane_scan(a, b[..., :-1])
    with pytest.raises(ValueError, match=r"a must be \(P,\)"):
        plane_scan(a[None], b)
    with pytest.raises(ValueError, match="h0 must be"):
        plane_scan(a, b, h0[:, :1])
