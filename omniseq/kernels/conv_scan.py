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


def _conv(inputs: torch.Tensor, kernel: torch.Tensor, padding: int, out_dtype: torch.dtype) -> torch.Tensor:
    """A convolution in the kernel's dtype (bf16 under autocast), channels-last ``out_dtype`` out."""
    y = F.conv2d(inputs.to(kernel.dtype), kernel, padding=padding)
    return y.to(dtype=out_dtype, memory_format=torch.channels_last)


def _conv_backward(grad: torch.Tensor, inputs: torch.Tensor, kernel: torch.Tensor, padding: int,
                   mask: list[bool]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Both gradients of :func:`_conv`, computed in the kernel's dtype, returned in ``grad``'s."""
    work, low = grad.dtype, kernel.dtype
    grad = grad.to(dtype=low, memory_format=torch.channels_last)
    grad_in, grad_kernel, _ = torch.ops.aten.convolution_backward(
        grad, inputs.to(low), kernel, None, [1, 1], [padding, padding], [1, 1], False, [0, 0], 1, [*mask, False])
    if grad_in is not None:  # the state gradients are scanned in place as complex views of it
        grad_in = grad_in.to(dtype=work, memory_format=torch.channels_last)
    return grad_in, None if grad_kernel is None else grad_kernel.to(work)


def _scan_(states: torch.Tensor, a: torch.Tensor, carry: torch.Tensor | None, first_step: int,
           tangent: torch.Tensor | None = None) -> None:
    """In place: ``states[i] += a * states[i-1]`` (``carry`` before the first); with ``tangent``
    also ``dh/da`` along the way (``tangent = a * tangent + h_{t-1}`` from global step 1 on)."""
    for i in range(states.shape[0]):
        prev = carry if i == 0 else states[i - 1]
        if prev is None:
            continue
        if tangent is not None and first_step + i >= 1:
            tangent.mul_(a).add_(prev)
        states[i].addcmul_(a, prev)


def _chunks(length: int, chunk: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk, length)) for start in range(0, length, chunk)]


class _ConvScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, b_kernel, a, c_kernel, h0, length, padding, last_only, chunk, recompute, conv_dtype):  # type: ignore[override]
        batch, work = u.shape[0] // length, u.dtype
        # The convolutions (and the input kept for backward) in conv_dtype, the scan in ``work``.
        u, b_kernel, c_kernel = u.to(conv_dtype), b_kernel.to(conv_dtype), c_kernel.to(conv_dtype)
        keep = not (last_only or recompute)  # the whole state sequence is kept for backward
        tangent = None  # dh_{L-1}/da, for last_only (where no state sequence is kept)
        if last_only and ctx.needs_input_grad[2]:
            tangent = _zero_state(u, a, batch) if h0 is None else h0.clone()
        carry, boundaries, ys, z = h0, [], [], None
        for start, stop in _chunks(length, length if keep else chunk):
            if recompute and not last_only:
                boundaries.append(_zero_state(u, a, batch) if carry is None else carry.clone())
            z = _conv(u[start * batch:stop * batch], b_kernel, padding, work)
            states = _complex_planes(z, stop - start)
            _scan_(states, a, carry, start, tangent)  # z becomes the states
            carry = states[-1]
            if not last_only:
                ys.append(_conv(z, c_kernel, padding, work))
        last = carry.clone()
        if last_only:
            read = z[-batch:].clone()  # the last frame's states; the sequence is freed
            ys.append(_conv(read, c_kernel, padding, work))
            ctx.save_for_backward(u, b_kernel, a, c_kernel, h0, read, tangent)
        elif keep:
            ctx.save_for_backward(u, b_kernel, a, c_kernel, h0, z, None)
        else:
            ctx.save_for_backward(u, b_kernel, a, c_kernel, h0, None, torch.stack(boundaries))
        y = ys[0] if len(ys) == 1 else torch.cat(ys).contiguous(memory_format=torch.channels_last)
        ctx.length, ctx.padding, ctx.last_only, ctx.chunk, ctx.work = length, padding, last_only, chunk, work
        ctx.set_materialize_grads(False)
        return y, last

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_last):  # type: ignore[override]
        if grad_y is None and grad_last is None:
            return (None,) * 11
        u, b_kernel, a, c_kernel, h0, read, extra = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grads = _Grads(u, b_kernel, a, c_kernel, ctx.padding, needs, ctx.work)
        if ctx.last_only:
            g = grads.readout(grad_y, read, 1)
            g = grad_last if g is None else (g[0] if grad_last is None else g[0] + grad_last)
            first = _last_only_backward(grads, g, extra, ctx.length, ctx.chunk)
        else:
            first = _sequence_backward(grads, grad_y, grad_last, read, extra, h0, ctx.length, ctx.chunk)
        grad_h0 = first * a.conj() if h0 is not None and needs[4] else None
        return grads.u, grads.b, grads.a, grads.c, grad_h0, None, None, None, None, None, None


def _zero_state(u: torch.Tensor, a: torch.Tensor, batch: int) -> torch.Tensor:
    return a.new_zeros(batch, *u.shape[2:], a.shape[0])


class _Grads:
    """Gradients of conv_scan's inputs, accumulated chunk by chunk (latest chunk first)."""

    def __init__(self, u, b_kernel, a, c_kernel, padding, needs, work):
        self.inputs, self.b_kernel, self.a_value, self.c_kernel, self.padding = u, b_kernel, a, c_kernel, padding
        self.needs, self.work = needs, work
        self.u = torch.empty_like(u, dtype=work, memory_format=torch.channels_last) if needs[0] else None
        self.b = self.c = None
        self.a = torch.zeros_like(a) if needs[2] else None

    def readout(self, grad_y, states_real, steps):
        """dL/dh (complex view) from the readout of ``steps`` frames of states, or None."""
        if grad_y is None:
            return None
        grad, grad_c = _conv_backward(grad_y, states_real, self.c_kernel, self.padding, [True, self.needs[3]])
        if grad_c is not None:
            self.c = grad_c if self.c is None else self.c + grad_c
        return _complex_planes(grad, steps)

    def conv_input(self, grad_states, rows):
        """Back through ``z = B (*) u`` for the frames ``rows`` (a slice)."""
        grad_real = torch.view_as_real(grad_states).flatten(-2).flatten(0, 1).permute(0, 3, 1, 2)
        grad_u, grad_b = _conv_backward(grad_real, self.inputs[rows], self.b_kernel, self.padding,
                                        [self.needs[0], self.needs[1]])
        if grad_u is not None:
            self.u[rows] = grad_u
        if grad_b is not None:
            self.b = grad_b if self.b is None else self.b + grad_b


def _sequence_backward(grads, grad_y, grad_last, states_real, boundaries, h0, length, chunk):
    """Reverse scan chunk by chunk (latest first), in place in each chunk's dL/dh; the
    states come from the kept sequence or are recomputed from the chunk's first carry.
    Returns dL/dh_0."""
    a, batch = grads.a_value, grads.inputs.shape[0] // length
    a_conj, carry_grad = a.conj(), None
    spans = _chunks(length, chunk)
    for k in range(len(spans) - 1, -1, -1):
        start, stop = spans[k]
        rows = slice(start * batch, stop * batch)
        if states_real is not None:
            z = states_real[rows]
            prev = h0 if start == 0 else _complex_planes(states_real[(start - 1) * batch:start * batch], 1)[0]
        else:
            prev = boundaries[k]
            z = _conv(grads.inputs[rows], grads.b_kernel, grads.padding, grads.work)
            _scan_(_complex_planes(z, stop - start), a, prev, start)
        grad = grads.readout(None if grad_y is None else grad_y[rows], z, stop - start)
        if grad is None:
            grad = torch.zeros_like(_complex_planes(z, stop - start))
        if grad_last is not None and stop == length:
            grad[-1] += grad_last
        if carry_grad is not None:
            grad[-1].addcmul_(a_conj, carry_grad)
        for t in range(grad.shape[0] - 1, 0, -1):  # dL/dh_{t-1} += conj(a) dL/dh_t
            grad[t - 1].addcmul_(a_conj, grad[t])
        if grads.a is not None:  # dL/da = sum_t conj(h_{t-1}) dL/dh_t
            states = _complex_planes(z, stop - start)
            if stop - start > 1:
                grads.a += _conj_dot(_rows(states[:-1]), _rows(grad[1:]))
            if prev is not None:
                grads.a += _conj_dot(_rows(prev), _rows(grad[0]))
        carry_grad = grad[0].clone()
        grads.conv_input(grad, rows)
    return carry_grad


def _last_only_backward(grads, g, tangent, length, chunk):
    """Only h_{L-1} was read: dL/dh_t = conj(a)^(L-1-t) g, dL/da = conj(dh_{L-1}/da) g.
    Returns dL/dh_0."""
    a, batch = grads.a_value, grads.inputs.shape[0] // length
    a_conj = a.conj()
    if grads.a is not None:
        grads.a += _conj_dot(_rows(tangent), _rows(g))
    carry_grad = None
    for start, stop in reversed(_chunks(length, chunk)):
        grad = torch.empty((stop - start, *g.shape), dtype=g.dtype, device=g.device)
        if carry_grad is None:
            grad[-1] = g
        else:
            torch.mul(carry_grad, a_conj, out=grad[-1])
        for t in range(grad.shape[0] - 1, 0, -1):
            torch.mul(grad[t], a_conj, out=grad[t - 1])
        carry_grad = grad[0].clone()
        grads.conv_input(grad, slice(start * batch, stop * batch))
    return carry_grad


def _check(u: torch.Tensor, b_kernel: torch.Tensor, a: torch.Tensor, c_kernel: torch.Tensor,
           h0: torch.Tensor | None, length: int, chunk: int | None) -> None:
    if chunk is not None and chunk <= 0:
        raise ValueError(f"conv_scan: chunk must be a positive number of time steps, got {chunk}")
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
    h0: torch.Tensor | None = None, last_only: bool = False, chunk: int | None = None, recompute: bool = False,
    conv_dtype: torch.dtype | None = None,
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
        chunk: time steps per chunk of the backward pass (and of the forward pass where no
            state sequence is kept): a smaller chunk holds smaller temporaries; default L/4.
        recompute: keep only each chunk's first state for backward and recompute the chunk's
            states there (one more B convolution per frame): far less memory, more time.
        conv_dtype: dtype of the two convolutions and of the input kept for backward. By
            default bf16 inside ``torch.autocast(dtype=torch.bfloat16)`` (mixed precision:
            about twice the convolutions' speed on CPUs with AVX512-BF16), else the working
            dtype. The scan, the states and all gradients returned stay in fp32 (fp64 for
            fp64 inputs): a long recurrence in bf16 would lose the decays' precision.

    Returns:
        ``y`` channels-last ``(L*B, U_out, H, W)`` (``(B, U_out, H, W)`` with ``last_only``) in
        ``u``'s dtype (half precision is computed in fp32), and the last state ``(B, H, W, P)``.
    """
    _check(u, b_kernel, a, c_kernel, h0, length, chunk)
    work = torch.float32 if u.dtype in (torch.float16, torch.bfloat16) else u.dtype
    cplx = torch.complex128 if work == torch.float64 else torch.complex64
    if conv_dtype is None:
        conv_dtype = _autocast_conv_dtype(u.device.type) if work == torch.float32 else work
    with torch.autocast(u.device.type, enabled=False):
        y, last = _ConvScanFn.apply(
            u.to(work).contiguous(memory_format=torch.channels_last), b_kernel.to(work), a.to(cplx),
            c_kernel.to(work), None if h0 is None else h0.to(cplx).contiguous(), length,
            b_kernel.shape[-1] // 2, last_only, chunk or -(-length // 4), recompute, conv_dtype)
    return y.to(u.dtype), last


def _autocast_conv_dtype(device_type: str) -> torch.dtype:
    """bf16 under bf16 autocast (fp16 too on a GPU; CPUs have no fast fp16 convolution)."""
    if torch.is_autocast_enabled(device_type):
        low = torch.get_autocast_dtype(device_type)
        if low == torch.bfloat16 or (low == torch.float16 and device_type == "cuda"):
            return low
    return torch.float32


def conv_scan_reference(
    u: torch.Tensor, b_kernel: torch.Tensor, a: torch.Tensor, c_kernel: torch.Tensor, length: int,
    h0: torch.Tensor | None = None, last_only: bool = False, chunk: int | None = None, recompute: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame-by-frame loop with complex states and complex kernels; the test oracle
    (``chunk`` and ``recompute`` change how :func:`conv_scan` computes, not what)."""
    _check(u, b_kernel, a, c_kernel, h0, length, chunk)
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
