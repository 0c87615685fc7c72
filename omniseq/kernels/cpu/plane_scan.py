"""ctypes wrappers of ``plane_scan.c``: ConvS5's complex diagonal recurrence, in place in a
channels-last convolution output stored in fp32 or bf16, with an fp32 recurrence.

Both functions take the real channels-last frames ``(steps*B, 2P, H, W)`` whose channels
interleave the real and imaginary parts of the ``P`` complex states. They run on the calling
thread: right after a convolution torch's OpenMP workers are still spinning, and splitting the
rows over Python threads made the scans slower on two threads (forward 79-87 ms against 64-71
ms per grid step), as they competed with the spinning workers for the cores. The PyTorch path in :mod:`omniseq.kernels.conv_scan`
computes the same and is their test oracle.
"""

from __future__ import annotations

import ctypes

import torch

from omniseq.kernels.cpu._build import load_cpu_library
from omniseq.kernels.cpu.selective_scan import _pointer, _run

__all__ = ["plane_scan_forward_", "plane_scan_reverse_", "supports"]

_SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16"}


def supports(frames: torch.Tensor) -> bool:
    """Whether the kernels take these frames: CPU, fp32 or bf16, channels-last contiguous."""
    return (frames.device.type == "cpu" and frames.dtype in _SUFFIX and frames.dim() == 4
            and frames.is_contiguous(memory_format=torch.channels_last))


def _kernel(name: str, dtype: torch.dtype):
    function = getattr(load_cpu_library("plane_scan"), f"{name}_{_SUFFIX[dtype]}")
    function.restype = ctypes.c_int64
    return function


def _real(state: torch.Tensor | None) -> torch.Tensor | None:
    """A complex64 ``(B, H, W, P)`` state as its contiguous fp32 (re, im) storage."""
    if state is None:
        return None
    if state.dtype != torch.complex64:
        raise TypeError(f"plane_scan: states must be complex64, got {state.dtype}")
    return torch.view_as_real(state.contiguous())


def _geometry(frames: torch.Tensor, steps: int, a: torch.Tensor) -> tuple[int, int, tuple[int, ...]]:
    if not supports(frames):
        raise ValueError("plane_scan: frames must be CPU fp32/bf16 channels-last (steps*B, 2P, H, W), got "
                         f"{tuple(frames.shape)} {frames.dtype} on {frames.device}")
    n, width, height, breadth = frames.shape
    if width != 2 * a.shape[0] or n % steps:
        raise ValueError(f"plane_scan: frames {tuple(frames.shape)} do not hold {steps} steps of {a.shape[0]} "
                         "complex channels")
    batch = n // steps
    return batch * height * breadth, a.shape[0], (batch, height, breadth, a.shape[0])


def _head(steps: int, rows: int, p: int, lo: int, hi: int) -> list[ctypes.c_int64]:
    return [ctypes.c_int64(v) for v in (steps, rows, p, lo, hi)]


def plane_scan_forward_(frames: torch.Tensor, steps: int, a: torch.Tensor, carry: torch.Tensor | None,
                        tangent: torch.Tensor | None = None, first_step: int = 0) -> torch.Tensor:
    """In place: frame ``t`` becomes ``h_t = a h_{t-1} + frame_t`` (``carry`` = h_{-1}, zero
    when None), rounded to the frames' dtype; ``tangent`` (if given) advances as ``dh/da``
    from global step 1 on. Returns the last state, complex64 ``(B, H, W, P)``, unrounded."""
    rows, p, shape = _geometry(frames, steps, a)
    last = torch.empty(shape, dtype=torch.complex64)
    a_real, carry_real, tangent_real = _real(a), _real(carry), _real(tangent)
    if tangent is not None and not tangent.is_contiguous():
        raise ValueError("plane_scan: tangent must be contiguous (it is updated in place)")
    kernel = _kernel("plane_scan_fwd", frames.dtype)
    _run([lambda: kernel(*_head(steps, rows, p, 0, rows), _pointer(frames), _pointer(a_real), _pointer(carry_real),
                         _pointer(torch.view_as_real(last)), _pointer(tangent_real), ctypes.c_int64(first_step))],
         "plane_scan")
    return last


def plane_scan_reverse_(grads: torch.Tensor, steps: int, a: torch.Tensor, later: torch.Tensor | None,
                        extra: torch.Tensor | None = None, has_input: bool = True,
                        states: torch.Tensor | None = None, prev: torch.Tensor | None = None,
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """In place: frame ``t`` becomes ``g_t = frame_t + conj(a) g_{t+1}`` (``later`` = g_steps;
    ``extra`` added at the last step; frames read as zeros when not ``has_input``), rounded.
    Returns ``g_0`` unrounded and, given ``states`` (the same layout, ``h_t`` per frame),
    ``dL/da = sum_t conj(h_{t-1}) g_t`` with ``prev`` as h_{-1} (none when None)."""
    rows, p, shape = _geometry(grads, steps, a)
    if states is not None and (states.shape != grads.shape or states.dtype != grads.dtype or not supports(states)):
        raise ValueError("plane_scan: states must match the gradient frames' shape, dtype and layout")
    first = torch.empty(shape, dtype=torch.complex64)
    grad_a = torch.zeros(2 * p, dtype=torch.float64) if states is not None else None
    a_real, later_real, extra_real, prev_real = _real(a), _real(later), _real(extra), _real(prev)
    kernel = _kernel("plane_scan_bwd", grads.dtype)
    _run([lambda: kernel(*_head(steps, rows, p, 0, rows), _pointer(grads), ctypes.c_int64(int(has_input)),
                         _pointer(a_real), _pointer(later_real), _pointer(extra_real),
                         _pointer(torch.view_as_real(first)), _pointer(states), _pointer(prev_real),
                         _pointer(grad_a))], "plane_scan")
    if grad_a is None:
        return first, None
    return first, torch.view_as_complex(grad_a.float().view(p, 2).contiguous())
