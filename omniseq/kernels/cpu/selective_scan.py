"""Autograd wrapper of the fused C selective scan (``selective_scan.c``).

The C kernel covers the recurrence, the ``C``-readout and the ``D`` skip,
``y_t = sum_n C_t[n] h_t[n] + D u_t`` with ``h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t``;
the softplus and ``silu(z)`` gate stay in PyTorch around it, where autograd
differentiates them. Grouped calls scan several parameter sets (e.g. both
directions of a bidirectional mixer, stacked on the batch axis) in one call, each
group forward or in reverse by index.
Backward recomputes the states (only the inputs are saved, as in the CUDA kernel
of Mamba), so memory is that of the inputs at any length.

Channels are split into one slice per torch thread and the slices run in a thread
pool: ctypes releases the GIL, and each slice owns its channels of every output
except dB/dC, which sum over channels and so get one buffer per slice (and per
lane of the kernel's 8-channel blocks).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.autograd.function import once_differentiable

from omniseq.kernels.cpu._build import load_cpu_library

__all__ = ["selective_scan_cpu_core", "softplus_with_bias_cpu"]

_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
# Channels per vector block of the kernel (selective_scan_body.h).
_LANES = 16


def _kernel(name: str, dtype: torch.dtype):
    """The C function ``<name>_<f32|f64>``; each returns an int64 status (0 = ok)."""
    function = getattr(load_cpu_library("selective_scan"), f"{name}_{_SUFFIX[dtype]}")
    function.restype = ctypes.c_int64
    return function


def _pointer(tensor: torch.Tensor | None, offset: int = 0) -> ctypes.c_void_p | None:
    if tensor is None:
        return None
    return ctypes.c_void_p(tensor.data_ptr() + offset * tensor.element_size())


def _slices(dim: int) -> list[tuple[int, int]]:
    parts = max(1, min(torch.get_num_threads(), dim))
    bounds = [round(i * dim / parts) for i in range(parts + 1)]
    return [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True) if hi > lo]


def _run(jobs: list, name: str = "selective_scan") -> None:
    if len(jobs) == 1:
        status = [jobs[0]()]
    else:
        with ThreadPoolExecutor(len(jobs)) as pool:
            status = list(pool.map(lambda job: job(), jobs))
    if any(code == -1 for code in status):
        raise MemoryError(f"{name} (compiled CPU kernel): could not allocate scratch memory")
    if any(code != 0 for code in status):
        raise ValueError(f"{name} (compiled CPU kernel): the batch is not a multiple of the groups")


def _sizes(u: torch.Tensor, A: torch.Tensor) -> list[ctypes.c_int64]:
    batch, length, dim = u.shape
    return [ctypes.c_int64(v) for v in (batch, length, dim, A.shape[-1])]


def _group_args(A: torch.Tensor, reverse: tuple[bool, ...]) -> list[ctypes.c_int64]:
    mask = sum(1 << g for g, flag in enumerate(reverse) if flag)
    return [ctypes.c_int64(A.shape[0]), ctypes.c_int64(mask)]


class _SelectiveScanCPU(torch.autograd.Function):
    """Grouped scan: ``A (G, D, N)``, ``D_skip (G, D)`` or None, ``reverse`` a G-tuple of flags."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C, D_skip, h0, reverse):  # type: ignore[override]
        u, dt, A, B, C = (t.contiguous() for t in (u, dt, A, B, C))
        h0 = None if h0 is None else h0.contiguous()
        D_skip = None if D_skip is None else D_skip.contiguous()
        kernel = _kernel("selective_scan_fwd", u.dtype)
        y = torch.empty_like(u)
        h_last = u.new_empty(u.shape[0], u.shape[2], A.shape[-1])
        head, groups = _sizes(u, A), _group_args(A, reverse)
        jobs = [
            lambda lo=lo, hi=hi: kernel(
                *head, ctypes.c_int64(lo), ctypes.c_int64(hi), *groups,
                *map(_pointer, (u, dt, A, B, C, D_skip, h0, y, h_last)),
            )  # fmt: skip
            for lo, hi in _slices(u.shape[2])
        ]
        _run(jobs)
        ctx.reverse = reverse
        ctx.save_for_backward(u, dt, A, B, C, D_skip, h0)
        return y, h_last

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_last):  # type: ignore[override]
        u, dt, A, B, C, D_skip, h0 = ctx.saved_tensors
        kernel = _kernel("selective_scan_bwd", u.dtype)
        grad_y = torch.zeros_like(u) if grad_y is None else grad_y.contiguous()
        grad_last = None if grad_last is None else grad_last.contiguous()
        slices = _slices(u.shape[2])
        du, ddt = torch.empty_like(u), torch.empty_like(u)
        dA = torch.zeros_like(A)
        dD = None if D_skip is None else torch.zeros_like(D_skip)
        # Per slice and per lane of the kernel's 8-channel blocks: summed here, not in C.
        dB = B.new_zeros(len(slices), *B.shape, _LANES)
        dC = C.new_zeros(len(slices), *C.shape, _LANES)
        dh0 = None if h0 is None else torch.empty_like(h0)
        head, groups = _sizes(u, A), _group_args(A, ctx.reverse)
        jobs = [
            lambda i=i, lo=lo, hi=hi: kernel(
                *head, ctypes.c_int64(lo), ctypes.c_int64(hi), *groups,
                *map(_pointer, (u, dt, A, B, C, D_skip, h0, grad_y, grad_last, du, ddt, dA, dD)),
                _pointer(dB[i]), _pointer(dC[i]), _pointer(dh0),
            )  # fmt: skip
            for i, (lo, hi) in enumerate(slices)
        ]
        _run(jobs)
        return du, ddt, dA, dB.sum((0, 4)), dC.sum((0, 4)), dD, dh0, None


def _rows_and_groups(x: torch.Tensor, bias: torch.Tensor | None) -> list[ctypes.c_int64]:
    groups = 1 if bias is None or bias.dim() == 1 else bias.shape[0]
    return [ctypes.c_int64(x.numel() // max(x.shape[-1], 1)), ctypes.c_int64(x.shape[-1]), ctypes.c_int64(groups)]


class _SoftplusWithBias(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias):  # type: ignore[override]
        x = x.contiguous()
        bias = None if bias is None else bias.contiguous()
        out = torch.empty_like(x)
        _run([lambda: _kernel("softplus_bias", x.dtype)(*_rows_and_groups(x, bias), *map(_pointer, (x, bias, out)))])
        ctx.save_for_backward(x, bias)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x, bias = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = torch.empty_like(x)
        grad_bias = None if bias is None else torch.zeros_like(bias)
        kernel = _kernel("softplus_bias_bwd", x.dtype)
        _run([lambda: kernel(*_rows_and_groups(x, bias), *map(_pointer, (x, bias, grad, grad_x, grad_bias)))])
        return grad_x, grad_bias


def softplus_with_bias_cpu(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``softplus(x + bias)`` over the last dim, vectorised in C (PyTorch's threshold of 20).

    ``bias`` is ``(D,)``, or ``(G, D)`` for ``x (G, ..., D)``: one bias row per leading block.
    """
    if x.dtype not in _SUFFIX or (bias is not None and bias.dtype != x.dtype):
        raise ValueError(f"softplus_with_bias_cpu: needs float32 or float64 inputs, got {x.dtype}")
    if bias is not None and bias.dim() == 2 and (x.dim() < 2 or x.shape[0] != bias.shape[0]):
        raise ValueError(
            f"softplus_with_bias_cpu: a bias of {bias.shape[0]} rows needs x of shape "
            f"({bias.shape[0]}, ..., D), got {tuple(x.shape)}"
        )
    return _SoftplusWithBias.apply(x, bias)


def selective_scan_cpu_core(
    u: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    h0: torch.Tensor | None,
    reverse: bool | Sequence[bool],
    D: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, last_state)`` of the recurrence, readout and ``D`` skip; float32 or float64 CPU tensors.

    ``A (D, N)`` with a bool ``reverse``, or grouped: ``A (G, D, N)``, ``D (G, D)`` and one
    reverse flag per group, the batch being ``G`` equal blocks (one compiled call for
    both directions of a bidirectional mixer).
    """
    if u.dtype not in _SUFFIX or any(t.dtype != u.dtype for t in (dt, A, B, C)):
        raise ValueError(
            f"selective_scan_cpu_core: needs float32 or float64 inputs of one dtype, got {u.dtype}"
        )
    grouped = A.dim() == 3
    flags = tuple(bool(f) for f in reverse) if grouped else (bool(reverse),)
    A = A if grouped else A[None]
    D = None if D is None else (D if grouped else D[None]).to(u.dtype)
    if len(flags) != A.shape[0] or u.shape[0] % A.shape[0] or len(flags) > 62:
        raise ValueError(
            f"selective_scan_cpu_core: {A.shape[0]} groups of A, {len(flags)} reverse flags and "
            f"batch {u.shape[0]} do not match (batch must be a multiple of the groups)"
        )
    if h0 is not None and h0.dtype != u.dtype:
        h0 = h0.to(u.dtype)
    return _SelectiveScanCPU.apply(u, dt, A, B, C, D, h0, flags)
