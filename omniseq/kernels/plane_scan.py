"""Complex diagonal recurrence with time-invariant decays, on real planes.

``h_t = a * h_{t-1} + b_t`` with ``a`` complex, one value per state channel ``p`` and
the same at every step, is ConvS5's state update. Stored as complex tensors it costs a
``torch.complex`` copy of the inputs, a ``real``/``imag`` split and a ``cat`` of the
states for the readout convolution, and ``a`` broadcast to the full state shape for the
generic :func:`omniseq.kernels.linear_scan`. Here the state is kept as it comes out of,
and goes into, a real convolution: the last dimension holds ``2P`` values, the ``P``
real parts and then the ``P`` imaginary parts, and ``a`` stays ``(P,)``. The scan writes
each step in place into one preallocated output; the backward pass is the same
recurrence run backwards with ``conj(a)``, and reduces ``dL/da`` step by step, so no
temporary larger than one step exists.

:func:`plane_scan_reference` (a loop over complex tensors) is the test oracle.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

__all__ = ["plane_scan", "plane_scan_reference"]


def _step_(out: torch.Tensor, b: torch.Tensor, prev: torch.Tensor, a_re: torch.Tensor, a_im: torch.Tensor,
           scratch: torch.Tensor) -> None:
    """``out = a * prev + b`` on planes (``..., 2P``): four fused multiply-adds, no allocation."""
    p = a_re.shape[0]
    out_re, out_im, prev_re, prev_im = out[..., :p], out[..., p:], prev[..., :p], prev[..., p:]
    torch.addcmul(b[..., :p], a_re, prev_re, out=out_re)
    torch.mul(a_im, prev_im, out=scratch)
    out_re.sub_(scratch)
    torch.addcmul(b[..., p:], a_re, prev_im, out=out_im)
    out_im.addcmul_(a_im, prev_re)


def _scan(a_re: torch.Tensor, a_im: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None,
          reverse: bool = False) -> torch.Tensor:
    out = torch.empty_like(b)
    scratch = torch.empty_like(b[:, 0, ..., : a_re.shape[0]])
    steps = range(b.shape[1] - 1, -1, -1) if reverse else range(b.shape[1])
    prev = h0
    for t in steps:
        if prev is None:
            out[:, t] = b[:, t]
        else:
            _step_(out[:, t], b[:, t], prev, a_re, a_im, scratch)
        prev = out[:, t]
    return out


def _decay_grad(grad: torch.Tensor, prev: torch.Tensor, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum(G * conj(h_prev))`` over all but the channel dimension, as (real, imaginary)."""
    dims = tuple(range(grad.dim() - 1))
    g_re, g_im, h_re, h_im = grad[..., :p], grad[..., p:], prev[..., :p], prev[..., p:]
    return ((g_re * h_re + g_im * h_im).sum(dims), (g_im * h_re - g_re * h_im).sum(dims))


class _PlaneScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a_re, a_im, b, h0):  # type: ignore[override]
        states = _scan(a_re, a_im, b, h0)
        ctx.save_for_backward(a_re, a_im, states, h0)
        return states

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_states):  # type: ignore[override]
        a_re, a_im, states, h0 = ctx.saved_tensors
        p, length = a_re.shape[0], states.shape[1]
        # dL/dh_t = g_t + conj(a) dL/dh_{t+1}: the same recurrence, backwards, with conj(a).
        grad_b = _scan(a_re, -a_im, grad_states.contiguous(), None, reverse=True)
        grad_re, grad_im = torch.zeros_like(a_re), torch.zeros_like(a_im)
        for t in range(length):
            prev = states[:, t - 1] if t > 0 else h0
            if prev is not None:
                d_re, d_im = _decay_grad(grad_b[:, t], prev, p)
                grad_re += d_re
                grad_im += d_im
        grad_h0 = None
        if h0 is not None and ctx.needs_input_grad[3]:
            grad_h0 = torch.empty_like(h0)
            _step_(grad_h0, torch.zeros_like(h0), grad_b[:, 0], a_re, -a_im, torch.empty_like(h0[..., :p]))
        return grad_re, grad_im, grad_b, grad_h0


def _check(a_re: torch.Tensor, a_im: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None) -> None:
    if a_re.dim() != 1 or a_re.shape != a_im.shape:
        raise ValueError(f"plane_scan: a_re and a_im must both be (P,), got {tuple(a_re.shape)} and {tuple(a_im.shape)}")
    p = a_re.shape[0]
    if b.dim() < 3 or b.shape[-1] != 2 * p:
        raise ValueError(f"plane_scan: b must be (B, L, ..., 2P) with 2P = {2 * p}, got {tuple(b.shape)}")
    if h0 is not None and h0.shape != b[:, 0].shape:
        raise ValueError(f"plane_scan: h0 must be (B, ..., 2P) = {tuple(b[:, 0].shape)}, got {tuple(h0.shape)}")
    if not b.dtype.is_floating_point:
        raise ValueError(f"plane_scan: b must be real floating point, got {b.dtype}")


def plane_scan(a_re: torch.Tensor, a_im: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """All states of ``h_t = a * h_{t-1} + b_t`` for complex ``a = a_re + i a_im`` (one per channel).

    Args:
        a_re, a_im: real and imaginary parts of the decays, ``(P,)``.
        b: inputs ``(B, L, ..., 2P)``: real parts in ``[..., :P]``, imaginary parts in ``[..., P:]``.
        h0: state before the first step, ``(B, ..., 2P)``; zeros when None.

    Returns:
        States ``(B, L, ..., 2P)``, same layout and dtype as ``b`` (half precision runs in fp32).
    """
    _check(a_re, a_im, b, h0)
    dtype = b.dtype
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    with torch.autocast(b.device.type, enabled=False):
        states = _PlaneScanFn.apply(a_re.to(work), a_im.to(work), b.to(work).contiguous(),
                                    None if h0 is None else h0.to(work).contiguous())
    return states.to(dtype)


def plane_scan_reference(a_re: torch.Tensor, a_im: torch.Tensor, b: torch.Tensor,
                         h0: torch.Tensor | None = None) -> torch.Tensor:
    """Step-by-step loop over complex tensors: the oracle of :func:`plane_scan`."""
    _check(a_re, a_im, b, h0)
    p = a_re.shape[0]
    a = torch.complex(a_re, a_im)
    x = torch.complex(b[..., :p], b[..., p:])
    state = torch.zeros_like(x[:, 0]) if h0 is None else torch.complex(h0[..., :p], h0[..., p:])
    states = []
    for t in range(x.shape[1]):
        state = a * state + x[:, t]
        states.append(state)
    out = torch.stack(states, 1)
    return torch.cat([out.real, out.imag], -1)
