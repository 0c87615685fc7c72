"""ConvS5's state space layer as one autograd op: input convolution, plane scan, readout.

For time-major frames ``u`` (frame ``t * B + b``), decays ``a (P,)`` and two real
convolution kernels whose state channels are interleaved (real, imaginary, real, ...):

    z_t = B (*) u_t,     h_t = a * h_{t-1} + z_t,     y_t = C (*) h_t

(``(*)`` a 2-D convolution; in channels-last memory the ``2P`` real channels of ``z`` *are*
the ``P`` complex states, viewed without a copy). Written as one ``autograd.Function``
because the generic composition costs memory and time that this layer does not need:

- the scan runs in place in the B convolution's output (no second ``(L, B, H, W, P)``
  buffer), and its backward runs in place in the gradient of the states;
- time-major frames make every step's slice contiguous, so a step is one fused
  multiply-add over ``B * H * W * P`` numbers, with no copies;
- with ``last_only`` (the model's last block, whose head reads one frame) only the last
  state is read out and no state sequence is kept for backward: ``dh_T/da`` is carried
  along the forward scan as one extra state, and the gradients of earlier states are
  ``conj(a)^k`` times the last one.

:func:`conv_scan_reference` (a loop over frames with complex tensors) is the test oracle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["conv_scan", "conv_scan_reference"]


def _complex_planes(real: torch.Tensor, length: int) -> torch.Tensor:
    """Channels-last real ``(L*B, 2P, H, W)`` -> complex view ``(L, B, H, W, P)``."""
    return torch.view_as_complex(real.permute(0, 2, 3, 1).unflatten(-1, (-1, 2))).unflatten(0, (length, -1))


def _rows(real: torch.Tensor) -> torch.Tensor:
    """Channels-last real ``(N, 2P, H, W)`` (or complex ``(..., P)``) -> ``(N*H*W, 2P)`` rows, a view."""
    if real.is_complex():
        return torch.view_as_real(real).flatten(-2).flatten(0, -2)
    return real.permute(0, 2, 3, 1).flatten(0, 2)


def _conj_dot(states: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """``sum_n conj(s[n, p]) g[n, p]`` for rows of interleaved (real, imaginary) channels.

    A matrix product per block of 16 complex channels, of which only the 2x2 blocks on the
    diagonal are kept: on this CPU several times faster than ``vecdot``'s elementwise
    product, conjugate copy and sum, and with no temporary of the rows' size.
    """
    parts = []
    for start in range(0, states.shape[1], 32):
        m = states[:, start:start + 32].T @ grads[:, start:start + 32]
        k = m.shape[0] // 2
        d = m.view(k, 2, k, 2).diagonal(dim1=0, dim2=2)  # d[i, j, c] = sum_n s[n, 2c+i] g[n, 2c+j]
        parts.append(torch.complex(d[0, 0] + d[1, 1], d[0, 1] - d[1, 0]))
    return torch.cat(parts)


def _conv_backward(grad: torch.Tensor, inputs: torch.Tensor, kernel: torch.Tensor, padding: int,
                   mask: list[bool]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    grad = grad.contiguous(memory_format=torch.channels_last)
    grad_in, grad_kernel, _ = torch.ops.aten.convolution_backward(
        grad, inputs, kernel, None, [1, 1], [padding, padding], [1, 1], False, [0, 0], 1, [*mask, False])
    if grad_in is not None:  # the state gradients are scanned in place as complex views of it
        grad_in = grad_in.contiguous(memory_format=torch.channels_last)
    return grad_in, grad_kernel


class _ConvScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, b_kernel, a, c_kernel, h0, length, padding, last_only):  # type: ignore[override]
        z = F.conv2d(u, b_kernel, padding=padding).contiguous(memory_format=torch.channels_last)
        states = _complex_planes(z, length)
        tangent = None  # dh_t/da, only for last_only (where the state sequence is not kept)
        if last_only and ctx.needs_input_grad[2]:
            tangent = torch.zeros_like(states[0]) if h0 is None else h0.clone()
        if h0 is not None:
            states[0].addcmul_(a, h0)
        for t in range(1, length):
            if tangent is not None:
                tangent.mul_(a).add_(states[t - 1])
            states[t].addcmul_(a, states[t - 1])  # in place: z becomes the states
        batch = states.shape[1]
        read = z[-batch:] if last_only else z
        y = F.conv2d(read, c_kernel, padding=padding)
        last = states[-1].clone()
        if last_only:
            read = read.clone()  # keep one frame, free the sequence
            ctx.save_for_backward(u, b_kernel, a, c_kernel, h0, read, tangent)
        else:
            ctx.save_for_backward(u, b_kernel, a, c_kernel, h0, z, None)
        ctx.length, ctx.padding, ctx.last_only = length, padding, last_only
        ctx.set_materialize_grads(False)
        return y, last

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_last):  # type: ignore[override]
        u, b_kernel, a, c_kernel, h0, read, tangent = ctx.saved_tensors
        length, padding, needs = ctx.length, ctx.padding, ctx.needs_input_grad
        grad_a = grad_c = grad_h0 = None
        grad_read = None
        if grad_y is not None:
            grad_read, grad_c = _conv_backward(grad_y, read, c_kernel, padding, [True, needs[3]])
        if ctx.last_only:
            grad_z, grad_a = _last_only_state_grads(a, grad_read, grad_last, tangent, length, u, needs[2])
        else:
            grad_z, grad_a = _state_grads(a, grad_read, grad_last, read, length, needs[2])
        states_grad = _complex_planes(grad_z, length)
        if h0 is not None and needs[4]:
            grad_h0 = states_grad[0] * a.conj()
        if grad_a is not None and h0 is not None and not ctx.last_only:  # last_only: in the tangent
            grad_a += _conj_dot(_rows(h0), _rows(states_grad[0]))
        grad_u, grad_b = _conv_backward(grad_z, u, b_kernel, padding, [needs[0], needs[1]])
        return grad_u, grad_b, grad_a, grad_c, grad_h0, None, None, None


def _state_grads(a, grad_read, grad_last, states_real, length, needs_a):
    """dL/dz for every frame (the reverse scan, in place in dL/dh) and the part of dL/da
    from ``h_{t-1}``, t >= 1 (the h0 term is added by the caller)."""
    if grad_read is None:
        grad_read = torch.zeros_like(states_real)
    grad = _complex_planes(grad_read, length)
    if grad_last is not None:
        grad[-1] += grad_last
    a_conj = a.conj()
    for t in range(length - 1, 0, -1):  # dL/dh_{t-1} += conj(a) dL/dh_t
        grad[t - 1].addcmul_(a_conj, grad[t])
    grad_a = None
    if needs_a:  # dL/da = sum over t >= 1 of conj(h_{t-1}) dL/dh_t
        states, grads = _rows(states_real), _rows(grad_read)
        step_rows = states.shape[0] // length
        grad_a = _conj_dot(states[: states.shape[0] - step_rows], grads[step_rows:])
    return grad_read, grad_a


def _last_only_state_grads(a, grad_read, grad_last, tangent, length, u, needs_a):
    """With only the last state read: dL/dz_t = conj(a)^(L-1-t) dL/dh_{L-1}; dL/da = conj(dh/da) dL/dh."""
    p = a.shape[0]
    grad_z = torch.empty((u.shape[0], 2 * p, *u.shape[2:]), dtype=u.dtype, device=u.device,
                         memory_format=torch.channels_last)
    grad = _complex_planes(grad_z, length)
    if grad_read is not None:
        grad[-1].copy_(_complex_planes(grad_read, 1)[0])
    else:
        grad[-1].zero_()
    if grad_last is not None:
        grad[-1] += grad_last
    grad_a = None
    if needs_a:
        grad_a = _conj_dot(_rows(tangent), _rows(grad[-1]))
    a_conj = a.conj()
    for t in range(length - 1, 0, -1):
        torch.mul(grad[t], a_conj, out=grad[t - 1])
    return grad_z, grad_a


def _check(u: torch.Tensor, b_kernel: torch.Tensor, a: torch.Tensor, c_kernel: torch.Tensor,
           h0: torch.Tensor | None, length: int) -> None:
    p = a.shape[0] if a.dim() == 1 else -1
    if a.dim() != 1 or not a.is_complex():
        raise ValueError(f"conv_scan: a must be complex (P,), got {tuple(a.shape)} {a.dtype}")
    if u.dim() != 4 or length <= 0 or u.shape[0] % length:
        raise ValueError(f"conv_scan: u must be (L*B, U, H, W) frames with L = {length}, got {tuple(u.shape)}")
    if b_kernel.dim() != 4 or b_kernel.shape[:2] != (2 * p, u.shape[1]):
        raise ValueError(f"conv_scan: b_kernel must be (2P, U, k, k) = ({2 * p}, {u.shape[1]}, k, k), "
                         f"got {tuple(b_kernel.shape)}")
    if c_kernel.dim() != 4 or c_kernel.shape[1] != 2 * p:
        raise ValueError(f"conv_scan: c_kernel must be (U_out, 2P, k, k) with 2P = {2 * p}, got {tuple(c_kernel.shape)}")
    state_shape = (u.shape[0] // length, *u.shape[2:], p)
    if h0 is not None and tuple(h0.shape) != state_shape:
        raise ValueError(f"conv_scan: h0 must be (B, H, W, P) = {state_shape}, got {tuple(h0.shape)}")


def conv_scan(
    u: torch.Tensor, b_kernel: torch.Tensor, a: torch.Tensor, c_kernel: torch.Tensor, length: int,
    h0: torch.Tensor | None = None, last_only: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Readouts ``C (*) h_t`` of ``h_t = a * h_{t-1} + B (*) u_t`` and the last state.

    Args:
        u: time-major frames ``(L*B, U, H, W)`` (frame ``t*B + b``), real.
        b_kernel: ``(2P, U, k, k)``, output channels interleaved (Re z_0, Im z_0, Re z_1, ...).
        a: complex decays ``(P,)``.
        c_kernel: ``(U_out, 2P, k, k)``, input channels interleaved the same way.
        length: L.
        h0: complex state before the first frame, ``(B, H, W, P)``; zeros when None.
        last_only: read out only the last frame.

    Returns:
        ``y`` channels-last ``(L*B, U_out, H, W)`` (``(B, U_out, H, W)`` with ``last_only``) in
        ``u``'s dtype (half precision is computed in fp32), and the last state ``(B, H, W, P)``.
    """
    _check(u, b_kernel, a, c_kernel, h0, length)
    work = torch.float32 if u.dtype in (torch.float16, torch.bfloat16) else u.dtype
    cplx = torch.complex128 if work == torch.float64 else torch.complex64
    with torch.autocast(u.device.type, enabled=False):
        y, last = _ConvScanFn.apply(
            u.to(work).contiguous(memory_format=torch.channels_last), b_kernel.to(work), a.to(cplx),
            c_kernel.to(work), None if h0 is None else h0.to(cplx).contiguous(), length,
            b_kernel.shape[-1] // 2, last_only)
    return y.to(u.dtype), last


def conv_scan_reference(
    u: torch.Tensor, b_kernel: torch.Tensor, a: torch.Tensor, c_kernel: torch.Tensor, length: int,
    h0: torch.Tensor | None = None, last_only: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame-by-frame loop with complex states and complex kernels; the test oracle."""
    _check(u, b_kernel, a, c_kernel, h0, length)
    pad = b_kernel.shape[-1] // 2
    b_complex = torch.complex(b_kernel[0::2], b_kernel[1::2])  # (P, U, k, k)
    frames = u.unflatten(0, (length, -1))
    state = None if h0 is None else h0.permute(0, 3, 1, 2)
    outputs = []
    for t in range(length):
        z = F.conv2d(frames[t].to(b_complex.dtype), b_complex, padding=pad)
        state = z if state is None else a[:, None, None] * state + z
        real = torch.view_as_real(state.permute(0, 2, 3, 1)).flatten(-2).permute(0, 3, 1, 2)
        outputs.append(F.conv2d(real, c_kernel, padding=pad))
    y = outputs[-1] if last_only else torch.cat(outputs)
    return y, state.permute(0, 2, 3, 1)
