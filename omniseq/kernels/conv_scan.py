"""ConvS5's state space layer as one autograd op: input convolution, plane scan, readout.

For time-major frames ``u`` (frame ``t * B + b``), decays ``a (P,)`` and two real
convolution kernels whose state channels are interleaved (real, imaginary, real, ...):

    z_t = B (*) u_t,     h_t = a * h_{t-1} + z_t,     y_t = C (*) h_t

(``(*)`` a 2-D convolution; in channels-last memory the ``2P`` real channels of ``z`` *are*
the ``P`` complex states, viewed without a copy). Written as one ``autograd.Function``
because the generic composition costs memory and time that this layer does not need:

- the scan runs in place in the B convolution's output (no second ``(L, B, H, W, P)``
  buffer), and its backward runs in place in the gradient of the states; with bf16
  convolutions those stay bf16 and each frame is lifted to fp32 for its scan step;
- time-major frames make every step's slice contiguous, so a step is one fused
  multiply-add over ``B * H * W * P`` numbers, with no copies;
- with ``last_only`` (the model's last block, whose head reads one frame) only the last
  state is read out and no state sequence is kept for backward: ``dh_T/da`` is carried
  along the forward scan as one extra state, and the gradients of earlier states are
  ``conj(a)^k`` times the last one.

On the CPU the scans (forward, reverse and ``dL/da``) run in a compiled kernel
(:mod:`omniseq.kernels.cpu.plane_scan`) that carries a block of rows through every step
with its state in cache, so each frame is read and written once in its storage dtype; the
PyTorch scans below remain the path elsewhere and with ``backend="torch"``.

:func:`conv_scan_reference` (a loop over frames with complex tensors) is the test oracle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from omniseq.kernels._backend import resolve_backend
from omniseq.kernels.cpu.plane_scan import plane_scan_forward_, plane_scan_reverse_

__all__ = ["GroupNormArgs", "conv_scan", "conv_scan_reference"]

# (weight, bias, groups, eps) of a GroupNorm that conv_scan applies to its input first.
GroupNormArgs = tuple[torch.Tensor | None, torch.Tensor | None, int, float]


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
    work = torch.promote_types(states.dtype, torch.float32)
    for start in range(0, states.shape[1], 32):
        m = (states[:, start:start + 32].T @ grads[:, start:start + 32]).to(work)
        k = m.shape[0] // 2
        d = m.view(k, 2, k, 2).diagonal(dim1=0, dim2=2)  # d[i, j, c] = sum_n s[n, 2c+i] g[n, 2c+j]
        parts.append(torch.complex(d[0, 0] + d[1, 1], d[0, 1] - d[1, 0]))
    return torch.cat(parts)


def _conv(inputs: torch.Tensor, kernel: torch.Tensor, padding: int, out_dtype: torch.dtype) -> torch.Tensor:
    """A convolution in the kernel's dtype (bf16 under autocast), channels-last ``out_dtype`` out."""
    y = F.conv2d(inputs.to(kernel.dtype), kernel, padding=padding)
    return y.to(dtype=out_dtype, memory_format=torch.channels_last)


def _conv_backward(grad: torch.Tensor, inputs: torch.Tensor, kernel: torch.Tensor, padding: int,
                   mask: list[bool], work: torch.dtype, grad_in_dtype: torch.dtype,
                   ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Both gradients of :func:`_conv`, computed in the kernel's dtype: the input's gradient
    channels-last in ``grad_in_dtype``, the kernel's in ``work``."""
    low = kernel.dtype
    grad = grad.to(dtype=low, memory_format=torch.channels_last)
    grad_in, grad_kernel, _ = torch.ops.aten.convolution_backward(
        grad, inputs.to(low), kernel, None, [1, 1], [padding, padding], [1, 1], False, [0, 0], 1, [*mask, False])
    if grad_in is not None:  # the state gradients are scanned in place in it
        grad_in = grad_in.to(dtype=grad_in_dtype, memory_format=torch.channels_last)
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


def _frames(real: torch.Tensor, steps: int) -> torch.Tensor:
    """Channels-last real ``(steps*B, 2P, H, W)`` -> ``(steps, B, H, W, 2P)``, a view."""
    return real.permute(0, 2, 3, 1).unflatten(0, (steps, -1))


def _as_states(frame: torch.Tensor) -> torch.Tensor:
    """A working-precision real frame ``(B, H, W, 2P)`` viewed as complex ``(B, H, W, P)``."""
    return torch.view_as_complex(frame.unflatten(-1, (-1, 2)))


def _scan_low_(z: torch.Tensor, steps: int, a: torch.Tensor, carry: torch.Tensor | None, first_step: int,
               tangent: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`_scan_` for a convolution output ``z`` in low precision (bf16): each frame is
    lifted into a working-precision buffer, advanced there, and written back rounded, so
    ``z`` becomes the rounded states (what the readout convolution reads) while the
    recurrence itself never runs in bf16. One frame at a time: no full-size fp32 copy.
    Returns the last state in working precision."""
    frames, work = _frames(z, steps), a.real.dtype
    buffers = torch.empty((2, *frames.shape[1:]), dtype=work, device=z.device)
    prev = carry
    for i in range(steps):
        current = buffers[i % 2]
        current.copy_(frames[i])
        h = _as_states(current)
        if prev is not None:
            if tangent is not None and first_step + i >= 1:
                tangent.mul_(a).add_(prev)
            h.addcmul_(a, prev)
        frames[i].copy_(current)
        prev = h
    return prev.clone()


def _reverse_scan_low_(grad: torch.Tensor, steps: int, a_conj: torch.Tensor, later: torch.Tensor | None,
                       extra: torch.Tensor | None) -> torch.Tensor:
    """In place on low-precision channels-last ``dL/dh`` readouts ``(steps*B, 2P, H, W)``:
    ``g_t += conj(a) g_{t+1}`` (``later`` after the last frame; ``extra`` added to the last
    frame) in working precision, each frame written back rounded for the input convolution's
    backward. Returns ``g_0`` unrounded."""
    frames, work = _frames(grad, steps), a_conj.real.dtype
    buffers = torch.empty((2, *frames.shape[1:]), dtype=work, device=grad.device)
    g = later
    for t in range(steps - 1, -1, -1):
        current = buffers[t % 2]
        current.copy_(frames[t])
        h = _as_states(current)
        if extra is not None and t == steps - 1:
            h += extra
        if g is not None:
            h.addcmul_(a_conj, g)
        frames[t].copy_(current)
        g = h
    return g.clone()


def _chunks(length: int, chunk: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk, length)) for start in range(0, length, chunk)]


class _ConvScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b_kernel, a, c_kernel, d, h0, norm_weight, norm_bias, length, padding, last_only,  # type: ignore[override]
                chunk, recompute, conv_dtype, compiled, norm_groups, norm_eps):
        # With a norm, x is normalised here and kept instead of its normalisation, which
        # backward recomputes (one elementwise pass) rather than keeping both.
        ctx.norm = (norm_groups, norm_eps) if norm_groups else None
        u, stats = (x, ()) if ctx.norm is None else _group_norm(x, norm_weight, norm_bias, *ctx.norm)
        batch, in_dtype = u.shape[0] // length, u.dtype
        work = torch.float32 if in_dtype in (torch.float16, torch.bfloat16) else in_dtype
        # The readout comes out in the input's dtype when the convolutions run in it (bf16 frames
        # under autocast): no fp32 round trip of the output.
        out_dtype = in_dtype if in_dtype == conv_dtype else work
        # The convolutions (and the input kept for backward) in conv_dtype, the scan in ``work``.
        u, b_kernel, c_kernel = u.to(conv_dtype), b_kernel.to(conv_dtype), c_kernel.to(conv_dtype)
        keep = not (last_only or recompute)  # the whole state sequence is kept for backward
        tangent = None  # dh_{L-1}/da, for last_only (where no state sequence is kept)
        if last_only and ctx.needs_input_grad[2]:
            tangent = _zero_state(u, a, batch) if h0 is None else h0.clone()
        low = conv_dtype != work  # the states kept and read out in conv_dtype, scanned in work
        carry, boundaries, ys, z = h0, [], [], None
        for start, stop in _chunks(length, length if keep else chunk):
            if recompute and not last_only:
                boundaries.append(_zero_state(u, a, batch) if carry is None else carry.clone())
            z = _conv(u[start * batch:stop * batch], b_kernel, padding, conv_dtype if low else work)
            carry = _scan_states_(z, stop - start, a, carry, start, tangent, low, compiled)  # z becomes the states
            if not last_only:
                ys.append(_conv(z, c_kernel, padding, out_dtype))
        last = carry.clone()
        if last_only:
            read = z[-batch:].clone()  # the last frame's states; the sequence is freed
            ys.append(_conv(read, c_kernel, padding, out_dtype))
            states, extra = read, tangent
        else:
            states, extra = (z, None) if keep else (None, torch.stack(boundaries))
        y = ys[0] if len(ys) == 1 else torch.cat(ys).contiguous(memory_format=torch.channels_last)
        if d is not None:  # + D u, in place (the input kept for backward serves its gradient too);
            # D in y's dtype: a mixed-dtype addcmul_ would copy y to fp32 and back
            y.addcmul_(d.to(y.dtype)[:, None, None], u[-batch:] if last_only else u)
        kept = u if ctx.norm is None else x
        ctx.save_for_backward(kept, b_kernel, a, c_kernel, d, h0, states, extra, norm_weight, norm_bias, *stats)
        ctx.length, ctx.padding, ctx.last_only, ctx.chunk, ctx.work = length, padding, last_only, chunk, work
        ctx.low, ctx.compiled, ctx.in_dtype = low, compiled, in_dtype
        ctx.set_materialize_grads(False)
        return y, last

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_last):  # type: ignore[override]
        if grad_y is None and grad_last is None:
            return (None,) * 17
        kept, b_kernel, a, c_kernel, d, h0, read, extra, norm_weight, norm_bias, *stats = ctx.saved_tensors
        needs = ctx.needs_input_grad
        u = kept
        if ctx.norm is not None:  # the normalised input again, bit for bit
            u = _group_norm(kept, norm_weight, norm_bias, *ctx.norm)[0]
            needs = (any(needs[i] for i in (0, 6, 7)), *needs[1:])
        grads = _Grads(u.to(b_kernel.dtype), b_kernel, a, c_kernel, ctx.padding, needs, ctx.work, ctx.low,
                       ctx.compiled, ctx.in_dtype)
        u = grads.inputs
        if ctx.last_only:
            g = grads.readout(grad_y, read, 1)
            g = grad_last if g is None else (g[0] if grad_last is None else g[0] + grad_last)
            first = _last_only_backward(grads, g, extra, ctx.length, ctx.chunk)
        else:
            backward = _sequence_backward_compiled if ctx.compiled else (
                _sequence_backward_low if ctx.low else _sequence_backward)
            first = backward(grads, grad_y, grad_last, read, extra, h0, ctx.length, ctx.chunk)
        grad_h0 = first * a.conj() if h0 is not None and needs[5] else None
        grad_d = None if d is None else grads.skip(grad_y, d, u[-(u.shape[0] // ctx.length):] if ctx.last_only else u)
        grad_x, grad_norm_weight, grad_norm_bias = grads.u, None, None
        u = grads.inputs = None  # (the recomputed normalisation: freed before the norm's backward)
        if ctx.norm is not None and grads.u is not None:
            grad_x, grad_norm_weight, grad_norm_bias = _group_norm_backward(
                grads.u, kept, norm_weight, *stats, ctx.norm[0], ctx.needs_input_grad)
        return (grad_x, grads.b, grads.a, grads.c, grad_d, grad_h0, grad_norm_weight, grad_norm_bias,
                *(None,) * 9)


def _group_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, groups: int,
                eps: float) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """``F.group_norm`` (as ``nn.GroupNorm`` runs it, channels-last kept) and its mean and 1/std."""
    out, mean, rstd = torch.native_group_norm(x, weight, bias, x.shape[0], x.shape[1], x[0, 0].numel(), groups, eps)
    return out, (mean, rstd)


def _group_norm_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, mean: torch.Tensor,
                         rstd: torch.Tensor, groups: int, needs: tuple[bool, ...]):
    return torch.ops.aten.native_group_norm_backward(
        grad.contiguous(memory_format=torch.channels_last), x, mean, rstd, weight, x.shape[0], x.shape[1],
        x[0, 0].numel(), groups, [needs[0], needs[6] and weight is not None, needs[7]])


def _scan_states_(z: torch.Tensor, steps: int, a: torch.Tensor, carry: torch.Tensor | None, first_step: int,
                  tangent: torch.Tensor | None, low: bool, compiled: bool) -> torch.Tensor:
    """The B convolution's output ``z`` becomes the states, in place; returns the last state."""
    if compiled:
        return plane_scan_forward_(z, steps, a, carry, tangent, first_step)
    if low:
        return _scan_low_(z, steps, a, carry, first_step, tangent)
    states = _complex_planes(z, steps)
    _scan_(states, a, carry, first_step, tangent)
    return states[-1]


def _zero_state(u: torch.Tensor, a: torch.Tensor, batch: int) -> torch.Tensor:
    return a.new_zeros(batch, *u.shape[2:], a.shape[0])


class _Grads:
    """Gradients of conv_scan's inputs, accumulated chunk by chunk (latest chunk first)."""

    def __init__(self, u, b_kernel, a, c_kernel, padding, needs, work, low, compiled, in_dtype):
        self.inputs, self.b_kernel, self.a_value, self.c_kernel, self.padding = u, b_kernel, a, c_kernel, padding
        self.needs, self.work, self.low, self.compiled = needs, work, low, compiled
        self.states_dtype = b_kernel.dtype if low else work  # of the states kept and their gradients
        self.u = torch.empty_like(u, dtype=in_dtype, memory_format=torch.channels_last) if needs[0] else None
        self.b = self.c = None
        self.a = torch.zeros_like(a) if needs[2] else None

    def readout(self, grad_y, states_real, steps, as_states=True):
        """dL/dh from the readout of ``steps`` frames of states, or None: a complex view in
        working precision, or (``as_states=False``, low precision) the channels-last real
        gradient in the convolutions' dtype."""
        if grad_y is None:
            return None
        grad, grad_c = _conv_backward(grad_y, states_real, self.c_kernel, self.padding, [True, self.needs[3]],
                                      self.work, self.work if as_states else self.c_kernel.dtype)
        if grad_c is not None:
            self.c = grad_c if self.c is None else self.c + grad_c
        return _complex_planes(grad, steps) if as_states else grad

    def skip(self, grad_y, d, inputs):
        """Back through ``+ D u`` for the frames ``inputs`` (the last ones of u): adds to u's
        gradient and returns D's (or None)."""
        if grad_y is None:
            return torch.zeros_like(d) if self.needs[4] else None
        if self.u is not None:
            self.u[-inputs.shape[0]:].addcmul_(grad_y.to(self.u.dtype), d.to(self.u.dtype)[:, None, None])
        if not self.needs[4]:
            return None
        # sum over frames and cells of grad * u per channel: the diagonal of a U x U product
        # (no temporary of the frames' size)
        rows = _rows(grad_y)
        return (rows.T @ _rows(inputs).to(rows.dtype)).diagonal().to(d.dtype)

    def conv_input(self, grad_states, rows):
        """Back through ``z = B (*) u`` for the frames ``rows`` (a slice); ``grad_states`` is
        complex or already the channels-last real layout."""
        grad_real = grad_states
        if grad_states.is_complex():
            grad_real = torch.view_as_real(grad_states).flatten(-2).flatten(0, 1).permute(0, 3, 1, 2)
        grad_u, grad_b = _conv_backward(grad_real, self.inputs[rows], self.b_kernel, self.padding,
                                        [self.needs[0], self.needs[1]], self.work,
                                        self.work if self.u is None else self.u.dtype)
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


def _chunk_states(grads, states, boundaries, h0, k, start, steps, batch, scan_):
    """Chunk ``k``'s states (frames ``start*batch`` on) in the convolutions' storage dtype, kept or
    recomputed from the chunk's first carry with ``scan_(z, steps, a, carry, first_step)``, and
    the state before the chunk."""
    rows = slice(start * batch, (start + steps) * batch)
    if states is not None:
        prev = h0 if start == 0 else _complex_planes(states[rows.start - batch:rows.start].to(grads.work), 1)[0]
        return states[rows], prev
    z = _conv(grads.inputs[rows], grads.b_kernel, grads.padding, grads.states_dtype)
    scan_(z, steps, grads.a_value, boundaries[k], start)
    return z, boundaries[k]


def _sequence_backward_low(grads, grad_y, grad_last, states_low, boundaries, h0, length, chunk):
    """:func:`_sequence_backward` with the states and their gradients kept in the
    convolutions' low precision and every scan step in working precision (see
    :func:`_reverse_scan_low_`). Returns dL/dh_0."""
    a, batch = grads.a_value, grads.inputs.shape[0] // length
    a_conj, carry_grad = a.conj(), None
    spans = _chunks(length, chunk)
    for k in range(len(spans) - 1, -1, -1):
        start, stop = spans[k]
        steps, rows = stop - start, slice(start * batch, stop * batch)
        z, prev = _chunk_states(grads, states_low, boundaries, h0, k, start, steps, batch, _scan_low_)
        grad = grads.readout(None if grad_y is None else grad_y[rows], z, steps, as_states=False)
        if grad is None:
            grad = torch.zeros_like(z)
        first = _reverse_scan_low_(grad, steps, a_conj, carry_grad, grad_last if stop == length else None)
        if grads.a is not None:  # dL/da = sum_t conj(h_{t-1}) dL/dh_t
            if steps > 1:
                grads.a += _conj_dot(_rows(z[:-batch]), _rows(grad[batch:]))
            if prev is not None:
                grads.a += _conj_dot(_rows(prev), _rows(first))
        carry_grad = first
        grads.conv_input(grad, rows)
        del grad, z  # freed before the next chunk allocates: one chunk's buffers at the peak, not two
    return carry_grad


def _sequence_backward_compiled(grads, grad_y, grad_last, states, boundaries, h0, length, chunk):
    """:func:`_sequence_backward` (fp32 states) or :func:`_sequence_backward_low` (bf16) with
    the reverse scan and ``dL/da`` in one pass of the compiled kernel per chunk, in place in
    the readout's channels-last gradient. Returns dL/dh_0."""
    a, batch = grads.a_value, grads.inputs.shape[0] // length
    carry_grad = None
    spans = _chunks(length, chunk)
    for k in range(len(spans) - 1, -1, -1):
        start, stop = spans[k]
        steps, rows = stop - start, slice(start * batch, stop * batch)
        z, prev = _chunk_states(grads, states, boundaries, h0, k, start, steps, batch,
                                lambda z, n, a, carry, first: plane_scan_forward_(z, n, a, carry, first_step=first))
        grad = grads.readout(None if grad_y is None else grad_y[rows], z, steps, as_states=False)
        has_input = grad is not None
        if grad is None:
            grad = torch.empty_like(z)
        carry_grad, grad_a = plane_scan_reverse_(
            grad, steps, a, carry_grad, grad_last if stop == length else None, has_input,
            z if grads.a is not None else None, prev)
        if grad_a is not None:
            grads.a += grad_a
        grads.conv_input(grad, rows)
        del grad, z  # freed before the next chunk allocates: one chunk's buffers at the peak, not two
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
        if grads.compiled:  # g_t = conj(a) g_{t+1} from g_{L-1} = g, straight into the frames
            grad = torch.empty(((stop - start) * batch, 2 * a.shape[0], *grads.inputs.shape[2:]),
                               dtype=grads.states_dtype, memory_format=torch.channels_last)
            carry_grad, _ = plane_scan_reverse_(grad, stop - start, a, carry_grad,
                                                g if carry_grad is None else None, has_input=False)
            grads.conv_input(grad, slice(start * batch, stop * batch))
            del grad  # freed before the next chunk allocates: one chunk's buffer at the peak, not two
            continue
        last = g if carry_grad is None else carry_grad * a_conj
        grad, carry_grad = _decayed(last, a_conj, stop - start, grads.b_kernel.dtype if grads.low else None)
        grads.conv_input(grad, slice(start * batch, stop * batch))
    return carry_grad


def _decayed(last: torch.Tensor, a_conj: torch.Tensor, steps: int, low: torch.dtype | None,
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """``g_t = conj(a)^(steps-1-t) last`` for ``steps`` frames, and ``g_0``: complex frames, or
    with ``low`` channels-last real frames in that dtype, computed one frame at a time."""
    if low is None:
        grad = torch.empty((steps, *last.shape), dtype=last.dtype, device=last.device)
        grad[-1] = last
        for t in range(steps - 1, 0, -1):
            torch.mul(grad[t], a_conj, out=grad[t - 1])
        return grad, grad[0].clone()
    batch, height, width, p = last.shape
    grad = torch.empty((steps * batch, 2 * p, height, width), dtype=low, device=last.device,
                       memory_format=torch.channels_last)
    frames, current = _frames(grad, steps), last
    for t in range(steps - 1, -1, -1):
        frames[t].copy_(torch.view_as_real(current).flatten(-2))
        if t:
            current = current * a_conj
    return grad, current


def _check(u: torch.Tensor, b_kernel: torch.Tensor, a: torch.Tensor, c_kernel: torch.Tensor,
           h0: torch.Tensor | None, length: int, chunk: int | None, d: torch.Tensor | None = None,
           norm: GroupNormArgs | None = None) -> None:
    if norm is not None:
        weight, bias, groups, _ = norm
        if groups <= 0 or u.dim() != 4 or u.shape[1] % groups or any(
                t is not None and t.shape != (u.shape[1],) for t in (weight, bias)):
            raise ValueError(f"conv_scan: norm must be (weight, bias, groups, eps) of a GroupNorm over the "
                             f"{u.shape[1] if u.dim() == 4 else '?'} input channels (groups dividing them, "
                             f"weight and bias of that size or None), got groups {groups}")
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
    if d is not None and (d.shape != (u.shape[1],) or c_kernel.shape[0] != u.shape[1]):
        raise ValueError(f"conv_scan: d must be ({u.shape[1]},), one skip weight per input channel, with as many "
                         f"output channels; got d {tuple(d.shape)} and {c_kernel.shape[0]} output channels")
    state_shape = (u.shape[0] // length, *u.shape[2:], p)
    if h0 is not None and tuple(h0.shape) != state_shape:
        raise ValueError(f"conv_scan: h0 must be (B, H, W, P) = {state_shape}, got {tuple(h0.shape)}")


def conv_scan(
    u: torch.Tensor, b_kernel: torch.Tensor, a: torch.Tensor, c_kernel: torch.Tensor, length: int,
    h0: torch.Tensor | None = None, last_only: bool = False, chunk: int | None = None, recompute: bool = False,
    conv_dtype: torch.dtype | None = None, backend: str = "auto", d: torch.Tensor | None = None,
    norm: GroupNormArgs | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Readouts ``C (*) h_t (+ D u_t)`` of ``h_t = a * h_{t-1} + B (*) u_t`` and the last state.

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
            dtype. Every scan step (forward and backward) and all gradients returned stay in
            fp32 (fp64 for fp64 inputs): a long recurrence in bf16 would lose the decays'
            precision. The states kept for backward, and their gradients between the two
            convolutions, are stored rounded to ``conv_dtype``, which is what the convolutions
            read anyway: half the memory of fp32 states and no full-size casts.
        backend: ``"auto"`` runs the scans (forward and backward) in the compiled CPU kernel
            (:mod:`omniseq.kernels.cpu.plane_scan`) for fp32 work on the CPU when it builds,
            else in PyTorch; ``"torch"`` forces the PyTorch scans (see
            :func:`omniseq.kernels.resolve_backend`).
        d: ``(U,)`` per-channel skip weights (needs ``U_out == U``): ``+ D u_t`` is added in
            place to each readout, and its backward reads the input kept anyway (rounded to
            ``conv_dtype``), so the skip keeps no tensor of its own.
        norm: ``(weight, bias, groups, eps)`` of a GroupNorm applied to ``u`` first (u and D's
            skip are then the normalised frames): the op keeps ``u`` itself for backward and
            recomputes its normalisation there, instead of keeping both.

    Returns:
        ``y`` channels-last ``(L*B, U_out, H, W)`` (``(B, U_out, H, W)`` with ``last_only``) in
        ``u``'s dtype (half precision is computed in fp32 unless the convolutions run in it),
        and the last state ``(B, H, W, P)``.
    """
    _check(u, b_kernel, a, c_kernel, h0, length, chunk, d, norm)
    norm_weight, norm_bias, groups, eps = norm if norm is not None else (None, None, 0, 0.0)
    work = torch.float32 if u.dtype in (torch.float16, torch.bfloat16) else u.dtype
    cplx = torch.complex128 if work == torch.float64 else torch.complex64
    if conv_dtype is None:
        conv_dtype = _autocast_conv_dtype(u.device.type) if work == torch.float32 else work
    with torch.autocast(u.device.type, enabled=False):
        y, last = _ConvScanFn.apply(
            u.contiguous(memory_format=torch.channels_last), b_kernel.to(work), a.to(cplx), c_kernel.to(work),
            None if d is None else d.to(work), None if h0 is None else h0.to(cplx).contiguous(), norm_weight,
            norm_bias, length, b_kernel.shape[-1] // 2, last_only, chunk or -(-length // 4), recompute, conv_dtype,
            work == torch.float32 and resolve_backend(backend, u, cpu_kernel="plane_scan") == "cpu", groups, eps)
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
    d: torch.Tensor | None = None, norm: GroupNormArgs | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame-by-frame loop with complex states and complex kernels; the test oracle
    (``chunk`` and ``recompute`` change how :func:`conv_scan` computes, not what)."""
    _check(u, b_kernel, a, c_kernel, h0, length, chunk, d, norm)
    if norm is not None:
        u = F.group_norm(u, norm[2], norm[0], norm[1], norm[3])
    pad = b_kernel.shape[-1] // 2
    b_complex = torch.complex(b_kernel[0::2], b_kernel[1::2])  # (P, U, k, k)
    frames = u.unflatten(0, (length, -1))
    state = None if h0 is None else h0.permute(0, 3, 1, 2)
    outputs = []
    for t in range(length):
        z = F.conv2d(frames[t].to(b_complex.dtype), b_complex, padding=pad)
        state = z if state is None else a[:, None, None] * state + z
        real = torch.view_as_real(state.permute(0, 2, 3, 1)).flatten(-2).permute(0, 3, 1, 2)
        y_t = F.conv2d(real, c_kernel, padding=pad)
        outputs.append(y_t if d is None else y_t + d[:, None, None] * frames[t])
    y = outputs[-1] if last_only else torch.cat(outputs)
    return y, state.permute(0, 2, 3, 1)
