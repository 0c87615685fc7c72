"""Diagonal recurrence with one time-invariant decay per channel, as a standalone op.

``h_t = a * h_{t-1} + b_t`` with ``a`` of shape ``(P,)`` (real or complex), the same at
every step and every position, broadcast over the trailing channel dimension of
``b (B, L, ..., P)``. The generic :func:`omniseq.kernels.linear_scan` takes ``a`` of the
full state shape, so ConvS5 had to materialise it (and copy its inputs into complex
tensors). Here ``a`` stays ``(P,)``, each step is one fused multiply-add written in place
into a preallocated output, and the backward pass is the same recurrence run backwards
with ``conj(a)``, with ``dL/da`` reduced step by step by one ``vecdot`` (no temporary
larger than one step). It accepts complex *views* of a real convolution's channels-last
output (channels interleaved as real, imaginary pairs), so nothing is copied. ConvS5 itself
now uses :func:`omniseq.kernels.conv_scan`, which fuses this scan with its two convolutions.

:func:`plane_scan_reference` (a plain loop) is the test oracle.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from omniseq.kernels.linear_scan import _step_scan

__all__ = ["plane_scan", "plane_scan_reference"]


def _scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None, reverse: bool = False) -> torch.Tensor:
    return _step_scan(a, b, h0, reverse, torch.empty_like(b), time_invariant=True)


class _PlaneScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, h0):  # type: ignore[override]
        states = _scan(a, b, h0)
        ctx.save_for_backward(a, states, h0)
        return states

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_states):  # type: ignore[override]
        a, states, h0 = ctx.saved_tensors
        # dL/dh_t = g_t + conj(a) dL/dh_{t+1}: the same recurrence, backwards, with conj(a).
        grad_b = _scan(a.conj(), grad_states.contiguous(), None, reverse=True)
        grad_a = None
        if ctx.needs_input_grad[0]:
            p = a.shape[0]
            grad_a = torch.zeros_like(a)
            for t in range(states.shape[1]):  # dL/da = sum_t G_t conj(h_{t-1}), one step at a time
                prev = states[:, t - 1] if t > 0 else h0
                if prev is not None:
                    grad_a += torch.linalg.vecdot(prev.reshape(-1, p), grad_b[:, t].reshape(-1, p), dim=0)
        grad_h0 = grad_b[:, 0] * a.conj() if h0 is not None and ctx.needs_input_grad[2] else None
        return grad_a, grad_b, grad_h0


def _check(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None) -> None:
    if a.dim() != 1:
        raise ValueError(f"plane_scan: a must be (P,), got {tuple(a.shape)}")
    if b.dim() < 3 or b.shape[-1] != a.shape[0]:
        raise ValueError(f"plane_scan: b must be (B, L, ..., P) with P = {a.shape[0]}, got {tuple(b.shape)}")
    if h0 is not None and h0.shape != b[:, 0].shape:
        raise ValueError(f"plane_scan: h0 must be (B, ..., P) = {tuple(b[:, 0].shape)}, got {tuple(h0.shape)}")
    if not (b.dtype.is_floating_point or b.dtype.is_complex):
        raise ValueError(f"plane_scan: b must be floating point or complex, got {b.dtype}")


def plane_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """All states of ``h_t = a * h_{t-1} + b_t`` for one decay per channel.

    Args:
        a: decays ``(P,)``, real or complex, the same at every step and position.
        b: inputs ``(B, L, ..., P)``.
        h0: state before the first step, ``(B, ..., P)``; zeros when None.

    Returns:
        States ``(B, L, ..., P)`` in the promoted dtype of ``a``, ``b`` and ``h0``
        (half precision is scanned in fp32).
    """
    _check(a, b, h0)
    dtype = torch.promote_types(a.dtype, b.dtype) if h0 is None else torch.promote_types(
        torch.promote_types(a.dtype, b.dtype), h0.dtype)
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    with torch.autocast(b.device.type, enabled=False):
        states = _PlaneScanFn.apply(a.to(work), b.to(work).contiguous(),
                                    None if h0 is None else h0.to(work).contiguous())
    return states if dtype == work else states.to(dtype)


def plane_scan_reference(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """Step-by-step loop form of :func:`plane_scan`; the test oracle."""
    _check(a, b, h0)
    state = torch.zeros_like(b[:, 0] * a) if h0 is None else h0 * torch.ones_like(a)
    states = []
    for t in range(b.shape[1]):
        state = a * state + b[:, t]
        states.append(state)
    return torch.stack(states, 1)
