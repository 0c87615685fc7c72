"""Diagonal linear recurrence ``h_t = a_t * h_{t-1} + b_t`` (S4D, S5, ConvS5, LRU).

The fast PyTorch form is a *blocked* scan: the sequence is cut into blocks whose
working set stays in cache; inside a block a Hillis-Steele doubling scan runs in
``log2(block)`` vectorised passes, and the last state of one block is folded
into the first input of the next. Only products of the ``a_t`` themselves are
formed (never a quotient of cumulative products), so ``a`` may be zero,
negative, complex, or arbitrarily close to one at any length. The block size is
picked from the number of elements per step: tiny problems become one
Hillis-Steele scan, wide ones a plain step loop, which measured fastest on CPU.

Gradients come from a custom autograd function whose backward is the same scan
run the other way (the adjoint of a linear recurrence is a linear recurrence),
so memory is that of the inputs and the states, and double backward works.

fp16/bf16 inputs are scanned in fp32 (states never round to 8 mantissa bits) and
the states returned in the input dtype; autocast is kept out (:func:`own_precision`).
"""

from __future__ import annotations

import math

import torch

from omniseq.kernels._backend import own_precision, resolve_backend

__all__ = ["linear_scan", "linear_scan_reference"]

# Elements (block length x batch x features) one doubling block may touch; from
# a sweep on CPU over L in {1024, 4096} and widths 32..32768 (2^15..2^22 tried).
_BLOCK_ELEMENTS = 1 << 18
# Below this block length the doubling passes cost more than they save.
_MIN_DOUBLING_BLOCK = 8


def _block_size(length: int, width: int) -> int:
    size = 1
    while size < length and size * 2 * width <= _BLOCK_ELEMENTS:
        size *= 2
    return size


def _doubling_scan_(a: torch.Tensor, b: torch.Tensor, reverse: bool) -> torch.Tensor:
    """Hillis-Steele scan of one block along dim 1, zero initial state.

    ``a`` and ``b`` are scratch copies (B, C, F) that get overwritten; returns the states.
    """
    length = b.shape[1]
    b_next, a_next = torch.empty_like(b), torch.empty_like(a)
    shift = 1
    while shift < length:
        # Ping-pong buffers: an in-place update would read already-updated states.
        if reverse:
            torch.addcmul(b[:, :-shift], a[:, :-shift], b[:, shift:], out=b_next[:, :-shift])
            b_next[:, -shift:] = b[:, -shift:]
        else:
            torch.addcmul(b[:, shift:], a[:, shift:], b[:, :-shift], out=b_next[:, shift:])
            b_next[:, :shift] = b[:, :shift]
        b, b_next = b_next, b
        if shift * 2 < length:
            if reverse:
                torch.mul(a[:, :-shift], a[:, shift:], out=a_next[:, :-shift])
                a_next[:, -shift:] = a[:, -shift:]
            else:
                torch.mul(a[:, shift:], a[:, :-shift], out=a_next[:, shift:])
                a_next[:, :shift] = a[:, :shift]
            a, a_next = a_next, a
        shift *= 2
    return b


def _step_scan(
    a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None, reverse: bool, out: torch.Tensor,
    time_invariant: bool = False,
) -> torch.Tensor:
    """One fused multiply-add per step: fastest once a step holds thousands of elements.

    ``time_invariant``: ``a`` has no time axis and is the same decay at every step
    (ConvS5's plane scan), broadcast against each step of ``b``.
    """
    steps = range(b.shape[1] - 1, -1, -1) if reverse else range(b.shape[1])
    prev = h0
    for t in steps:
        if prev is None:
            out[:, t] = b[:, t]
        else:
            torch.addcmul(b[:, t], a if time_invariant else a[:, t], prev, out=out[:, t])
        prev = out[:, t]
    return out


def _blocked_scan(
    a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None, reverse: bool
) -> torch.Tensor:
    """Scan of (B, L, F) tensors without autograd; see the module docstring."""
    batch, length, width = b.shape
    out = torch.empty_like(b)
    if length == 0:
        return out
    block = _block_size(length, batch * width)
    if block < _MIN_DOUBLING_BLOCK:
        return _step_scan(a, b, h0, reverse, out)
    starts = list(range(0, length, block))
    carry = h0
    for start in reversed(starts) if reverse else starts:
        stop = min(start + block, length)
        a_blk, b_blk = a[:, start:stop], b[:, start:stop]
        edge = -1 if reverse else 0  # where the carried state enters the block
        b_blk = b_blk.clone()
        if carry is not None:
            b_blk[:, edge].addcmul_(a_blk[:, edge], carry)
        out[:, start:stop] = _doubling_scan_(a_blk.clone(), b_blk, reverse)
        carry = out[:, start if reverse else stop - 1]
    return out


def _shifted(a: torch.Tensor, reverse: bool) -> torch.Tensor:
    """``a`` moved one step against the scan direction, zero-filled: the adjoint's coefficients."""
    pad = torch.zeros_like(a[:, :1])
    return torch.cat([a[:, 1:], pad], 1) if not reverse else torch.cat([pad, a[:, :-1]], 1)


class _LinearScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, h0, reverse):  # type: ignore[override]
        h = _blocked_scan(a, b, h0, reverse)
        ctx.reverse = reverse
        ctx.save_for_backward(a, h, h0)
        return h

    @staticmethod
    def backward(ctx, grad_h):  # type: ignore[override]
        a, h, h0 = ctx.saved_tensors
        reverse = ctx.reverse
        # dL/dh_t = grad_h_t + conj(a_{t+1}) dL/dh_{t+1}: the same recurrence, reversed.
        grad_state = _LinearScanFn.apply(_shifted(a, reverse).conj(), grad_h, None, not reverse)
        grad_a = grad_h0 = None
        if ctx.needs_input_grad[0]:
            init = h0.unsqueeze(1) if h0 is not None else torch.zeros_like(h[:, :1])
            h_prev = torch.cat([h[:, 1:], init], 1) if reverse else torch.cat([init, h[:, :-1]], 1)
            grad_a = grad_state * h_prev.conj()
        if h0 is not None and ctx.needs_input_grad[2]:
            edge = -1 if reverse else 0
            grad_h0 = grad_state[:, edge] * a[:, edge].conj()
        return grad_a, grad_state, grad_h0, None


def _check_inputs(
    a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None, name: str
) -> tuple[torch.Size, tuple[int, ...]]:
    if b.dim() < 2:
        raise ValueError(f"{name}: b must have shape (B, L, *), got {tuple(b.shape)}")
    if a.dim() != b.dim():
        raise ValueError(
            f"{name}: a must have shape (B, L, *) with the rank of b {tuple(b.shape)}, "
            f"got {tuple(a.shape)}"
        )
    try:
        shape = torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        raise ValueError(
            f"{name}: a {tuple(a.shape)} and b {tuple(b.shape)} must broadcast to one "
            "shape (B, L, *)"
        ) from None
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(
            f"{name}: a and b must share (B, L), got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    state_shape = (shape[0], *shape[2:])
    if h0 is not None:
        if h0.dim() != len(state_shape) or any(
            s not in (1, e) for s, e in zip(h0.shape, state_shape, strict=True)
        ):
            raise ValueError(
                f"{name}: h0 must have shape (B, *) = {state_shape}, got {tuple(h0.shape)}"
            )
    return shape, state_shape


def _compute_dtype(*tensors: torch.Tensor | None) -> tuple[torch.dtype, torch.dtype]:
    """(dtype of the result, dtype the scan runs in): half precision accumulates in fp32."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    if not (dtype.is_floating_point or dtype.is_complex):
        raise ValueError(f"linear_scan: a and b must be floating or complex, got {dtype}")
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    return dtype, work


@own_precision
def linear_scan(
    a: torch.Tensor,
    b: torch.Tensor,
    h0: torch.Tensor | None = None,
    reverse: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """All states of ``h_t = a_t * h_{t-1} + b_t`` (``h_{t+1}`` when ``reverse``).

    Args:
        a: decays ``(B, L, *)``, real or complex; broadcasts against ``b`` over trailing dims.
        b: inputs ``(B, L, *)``.
        h0: state before the first step (after the last one when ``reverse``), ``(B, *)``;
            zeros when None.
        reverse: scan from the end of the sequence.
        backend: ``"auto" | "torch" | "triton"``.

    Returns:
        States ``(B, L, *)`` in the promoted dtype of ``a``, ``b`` and ``h0``.
    """
    backend = resolve_backend(backend, a, b, h0)
    shape, state_shape = _check_inputs(a, b, h0, "linear_scan")
    if backend == "triton":
        from omniseq.kernels.triton.linear_scan import linear_scan_triton

        return linear_scan_triton(a, b, h0=h0, reverse=reverse)
    dtype, work = _compute_dtype(a, b, h0)
    batch, length, width = shape[0], shape[1], math.prod(shape[2:])
    a3 = a.to(work).expand(shape).reshape(batch, length, width)
    b3 = b.to(work).expand(shape).reshape(batch, length, width)
    h03 = None if h0 is None else h0.to(work).expand(state_shape).reshape(batch, width)
    h = _LinearScanFn.apply(a3, b3, h03, reverse)
    return h.reshape(shape).to(dtype)


@own_precision
def linear_scan_reference(
    a: torch.Tensor,
    b: torch.Tensor,
    h0: torch.Tensor | None = None,
    reverse: bool = False,
) -> torch.Tensor:
    """Step-by-step loop form of :func:`linear_scan`; the test oracle."""
    shape, state_shape = _check_inputs(a, b, h0, "linear_scan_reference")
    dtype, _ = _compute_dtype(a, b, h0)
    a, b = a.to(dtype).expand(shape), b.to(dtype).expand(shape)
    state = torch.zeros(state_shape, dtype=dtype, device=b.device)
    if h0 is not None:
        state = state + h0.to(dtype)
    steps = range(shape[1] - 1, -1, -1) if reverse else range(shape[1])
    states: list[torch.Tensor] = [state] * shape[1]
    for t in steps:
        state = a[:, t] * state + b[:, t]
        states[t] = state
    if not states:
        return torch.zeros(shape, dtype=dtype, device=b.device)
    return torch.stack(states, 1)
