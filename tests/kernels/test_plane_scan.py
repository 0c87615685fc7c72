"""plane_scan (ConvS5's complex recurrence on real planes) against the complex loop, values and gradients."""

from __future__ import annotations

import pytest
import torch

from omniseq.kernels.linear_scan import linear_scan_reference
from omniseq.kernels.plane_scan import plane_scan, plane_scan_reference


def _inputs(dtype, batch=2, length=7, spatial=(3, 4), p=5, h0=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    radius = torch.rand(p, generator=gen, dtype=dtype) * 0.9 + 0.05
    angle = torch.rand(p, generator=gen, dtype=dtype) * 6.28
    a_re, a_im = radius * torch.cos(angle), radius * torch.sin(angle)
    b = torch.randn(batch, length, *spatial, 2 * p, generator=gen, dtype=dtype)
    state = torch.randn(batch, *spatial, 2 * p, generator=gen, dtype=dtype) if h0 else None
    return a_re, a_im, b, state


def test_reference_equals_the_generic_complex_loop():
    a_re, a_im, b, h0 = _inputs(torch.float64)
    p = a_re.shape[0]
    a = torch.complex(a_re, a_im).expand(*b.shape[:-1], p)
    x = torch.complex(b[..., :p], b[..., p:])
    expected = linear_scan_reference(a, x, h0=torch.complex(h0[..., :p], h0[..., p:]))
    got = plane_scan_reference(a_re, a_im, b, h0)
    torch.testing.assert_close(got, torch.cat([expected.real, expected.imag], -1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("length", [1, 2, 9])
def test_values_and_gradients_match_the_loop(dtype, tol, with_h0, length):
    a_re, a_im, b, h0 = _inputs(dtype, length=length, h0=with_h0, seed=length)
    leaves = [t.clone().requires_grad_() for t in (a_re, a_im, b) + ((h0,) if with_h0 else ())]
    refs = [t.detach().clone().requires_grad_() for t in leaves]
    fast = plane_scan(*leaves[:3], leaves[3] if with_h0 else None)
    slow = plane_scan_reference(*refs[:3], refs[3] if with_h0 else None)
    torch.testing.assert_close(fast, slow, rtol=tol, atol=tol)
    weight = torch.randn_like(fast)
    (fast * weight).sum().backward()
    (slow * weight).sum().backward()
    for got, want in zip(leaves, refs, strict=True):
        torch.testing.assert_close(got.grad, want.grad, rtol=tol * 10, atol=tol * 10)


def test_gradcheck_float64():
    a_re, a_im, b, h0 = _inputs(torch.float64, batch=1, length=4, spatial=(2,), p=2)
    inputs = tuple(t.requires_grad_() for t in (a_re, a_im, b, h0))
    assert torch.autograd.gradcheck(plane_scan, inputs)


def test_non_contiguous_channels_last_input_and_half_precision():
    a_re, a_im, b, _ = _inputs(torch.float32, spatial=(3, 4))
    # Conv output in channels-last memory, permuted to (N, H, W, 2P): contiguous, as ConvS5 passes it.
    frames = b.flatten(0, 1).permute(0, 3, 1, 2).contiguous().to(memory_format=torch.channels_last)
    planes = frames.permute(0, 2, 3, 1).unflatten(0, b.shape[:2])
    assert planes.is_contiguous()
    torch.testing.assert_close(plane_scan(a_re, a_im, planes), plane_scan_reference(a_re, a_im, b))
    # A strided view is made contiguous, not misread.
    strided = torch.cat([b, b], 2)[:, :, ::2]
    torch.testing.assert_close(plane_scan(a_re, a_im, strided), plane_scan_reference(a_re, a_im, strided.contiguous()))
    half = plane_scan(a_re, a_im, b.bfloat16())
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), plane_scan_reference(a_re, a_im, b.bfloat16().float()), rtol=2e-2, atol=2e-2)


def test_bad_shapes_name_the_problem():
    a_re, a_im, b, h0 = _inputs(torch.float32)
    with pytest.raises(ValueError, match="2P = 10"):
        plane_scan(a_re, a_im, b[..., :-1])
    with pytest.raises(ValueError, match="both be"):
        plane_scan(a_re, a_im[:-1], b)
    with pytest.raises(ValueError, match="h0 must be"):
        plane_scan(a_re, a_im, b, h0[:, :1])
