"""The compiled plane scan (ConvS5's recurrence in place in fp32/bf16 frames) against fp64 loops."""

from __future__ import annotations

import pytest
import torch

from omniseq.kernels.cpu import cpu_kernels_available

pytestmark = pytest.mark.skipif(not cpu_kernels_available("plane_scan"),
                                reason="the compiled plane scan does not build here (no C compiler?)")

STEPS, BATCH, P, H, W = 5, 3, 7, 37, 41  # 4551 rows: several row blocks, the last one partial


def _frames(dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    real = torch.randn(STEPS * BATCH, 2 * P, H, W, generator=gen).to(dtype)
    return real.contiguous(memory_format=torch.channels_last)


def _state(seed):
    return torch.randn(BATCH, H, W, P, generator=torch.Generator().manual_seed(seed), dtype=torch.complex64)


def _decay():
    gen = torch.Generator().manual_seed(9)
    return torch.polar(torch.rand(P, generator=gen) * 0.5 + 0.45, torch.rand(P, generator=gen) * 6.28)


def _as_complex(frames):
    """``(steps*B, 2P, H, W)`` frames -> complex128 ``(steps, B, H, W, P)``."""
    planes = frames.double().permute(0, 2, 3, 1).unflatten(-1, (P, 2)).unflatten(0, (STEPS, BATCH))
    return torch.view_as_complex(planes.contiguous())


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("with_carry", [False, True])
def test_forward_scan_matches_the_loop(dtype, tol, with_carry):
    from omniseq.kernels.cpu.plane_scan import plane_scan_forward_

    frames, a = _frames(dtype, 0), _decay()
    carry = _state(1) if with_carry else None
    tangent = _state(2)
    z, a64 = _as_complex(frames), a.to(torch.complex128)
    h = None if carry is None else carry.to(torch.complex128)
    want_tangent, states = tangent.to(torch.complex128), []
    for t in range(STEPS):  # first_step = 1: the tangent advances from the first step on
        if h is not None:
            want_tangent = a64 * want_tangent + h
        h = z[t] if h is None else a64 * h + z[t]
        states.append(h)
    last = plane_scan_forward_(frames, STEPS, a, carry, tangent, first_step=1)
    # The recurrence runs on unrounded fp32 states: the last state is fp32-accurate even for bf16
    # frames, and each frame holds its state rounded once to the frames' dtype.
    torch.testing.assert_close(last.to(torch.complex128), h, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tangent.to(torch.complex128), want_tangent, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_as_complex(frames), torch.stack(states), rtol=tol, atol=tol)
    if dtype == torch.bfloat16:
        rounded = torch.view_as_real(torch.stack(states).to(torch.complex64)).to(torch.bfloat16)
        got = frames.permute(0, 2, 3, 1).unflatten(-1, (P, 2)).unflatten(0, (STEPS, BATCH))
        assert (got.float() - rounded.float()).abs().max() <= 2 ** -7 * rounded.float().abs().max()


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("has_input, with_later, with_extra, with_prev",
                         [(True, True, True, True), (True, False, False, False), (False, False, True, False),
                          (False, True, False, True)])
def test_reverse_scan_and_decay_gradient_match_the_loop(dtype, tol, has_input, with_later, with_extra, with_prev):
    from omniseq.kernels.cpu.plane_scan import plane_scan_reverse_

    grads, states, a = _frames(dtype, 3), _frames(dtype, 4), _decay()
    later, extra, prev = (_state(s) if flag else None for s, flag in ((5, with_later), (6, with_extra), (7, with_prev)))
    inputs = _as_complex(grads) if has_input else torch.zeros(STEPS, BATCH, H, W, P, dtype=torch.complex128)
    h = _as_complex(states)
    g = None if later is None else later.to(torch.complex128)
    a_conj, want, grad_a = a.to(torch.complex128).conj(), [None] * STEPS, torch.zeros(P, dtype=torch.complex128)
    for t in range(STEPS - 1, -1, -1):
        value = inputs[t] + (extra.to(torch.complex128) if extra is not None and t == STEPS - 1 else 0)
        g = value if g is None else value + a_conj * g
        want[t] = g
        h_prev = h[t - 1] if t > 0 else (None if prev is None else prev.to(torch.complex128))
        if h_prev is not None:
            grad_a += (h_prev.conj() * g).sum((0, 1, 2))
    if not has_input:
        grads = torch.full_like(grads, float("nan"))  # never read
    first, got_a = plane_scan_reverse_(grads, STEPS, a, later, extra, has_input, states, prev)
    torch.testing.assert_close(first.to(torch.complex128), want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_as_complex(grads), torch.stack(want), rtol=tol, atol=tol)
    # dL/da uses the unrounded gradients: fp32 sums over one step of one block of rows, fp64
    # across steps and blocks (2e4 terms here, so fp32 rounding allows ~1e-5 relative).
    torch.testing.assert_close(got_a.to(torch.complex128), grad_a, rtol=1e-4, atol=1e-3)
    assert plane_scan_reverse_(_frames(dtype, 3), STEPS, a, later, extra)[1] is None  # no states: no dL/da


def test_rejects_frames_it_cannot_take():
    from omniseq.kernels.cpu.plane_scan import plane_scan_forward_

    a = _decay()
    with pytest.raises(ValueError, match="channels-last"):
        plane_scan_forward_(_frames(torch.float32, 0).contiguous(), STEPS, a, None)
    with pytest.raises(ValueError, match="channels-last"):
        plane_scan_forward_(_frames(torch.float64, 0), STEPS, a, None)
    with pytest.raises(ValueError, match="do not hold 4 steps"):
        plane_scan_forward_(_frames(torch.float32, 0), 4, a, None)
    with pytest.raises(TypeError, match="complex64"):
        plane_scan_forward_(_frames(torch.float32, 0), STEPS, a, _state(1).to(torch.complex128))
