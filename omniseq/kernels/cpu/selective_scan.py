"""Autograd wrapper of the fused C selective scan (``selective_scan.c``).

The C kernel covers the recurrence and the ``C``-readout, ``y_t = sum_n C_t[n] h_t[n]``
with ``h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t``; the softplus, ``D`` skip and
``silu(z)`` gate stay in PyTorch around it, where autograd differentiates them.
Backward recomputes the states (only the inputs are saved, as in the CUDA kernel
of Mamba), so memory is that of the inputs at any length.

Channels are split into one slice per torch thread and the slices run in a thread
pool: ctypes releases the GIL, and each slice owns its channels of every output
except dB/dC, which sum over channels and so get one buffer per slice.
"""

from __future__ import annotations

import ctypes
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.autograd.function import once_differentiable

from omniseq.kernels.cpu._build import load_cpu_library

__all__ = ["selective_scan_cpu_core", "softplus_with_bias_cpu"]

_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


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


def _run(jobs: list) -> None:
    if len(jobs) == 1:
        status = [jobs[0]()]
    else:
        with ThreadPoolExecutor(len(jobs)) as pool:
            status = list(pool.map(lambda job: job(), jobs))
    if any(code != 0 for code in status):
        raise MemoryError("selective_scan (compiled CPU kernel): could not allocate scratch memory")


def _sizes(u: torch.Tensor, A: torch.Tensor) -> list[ctypes.c_int64]:
    batch, length, dim = u.shape
    return [ctypes.c_int64(v) for v in (batch, length, dim, A.shape[1])]


class _SelectiveScanCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, dt, A, B, C, h0, reverse):  # type: ignore[override]
        u, dt, A, B, C = (t.contiguous() for t in (u, dt, A, B, C))
        h0 = None if h0 is None else h0.contiguous()
        kernel = _kernel("selective_scan_fwd", u.dtype)
        y = torch.empty_like(u)
        h_last = u.new_empty(u.shape[0], u.shape[2], A.shape[1])
        head = _sizes(u, A)
        jobs = [
            lambda lo=lo, hi=hi: kernel(
                *head,
                ctypes.c_int64(lo),
                ctypes.c_int64(hi),
                ctypes.c_int(int(reverse)),
                *map(_pointer, (u, dt, A, B, C, h0, y, h_last)),
            )  # fmt: skip
            for lo, hi in _slices(u.shape[2])
        ]
        _run(jobs)
        ctx.reverse = reverse
        ctx.save_for_backward(u, dt, A, B, C, h0)
        return y, h_last

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_last):  # type: ignore[override]
        u, dt, A, B, C, h0 = ctx.saved_tensors
        kernel = _kernel("selective_scan_bwd", u.dtype)
        grad_y = torch.zeros_like(u) if grad_y is None else grad_y.contiguous()
        grad_last = None if grad_last is None else grad_last.contiguous()
        slices = _slices(u.shape[2])
        du, ddt = torch.empty_like(u), torch.empty_like(u)
        dA = torch.zeros_like(A)
        dB = B.new_zeros(len(slices), *B.shape)
        dC = C.new_zeros(len(slices), *C.shape)
        dh0 = None if h0 is None else torch.empty_like(h0)
        head = _sizes(u, A)
        jobs = [
            lambda i=i, lo=lo, hi=hi: kernel(
                *head,
                ctypes.c_int64(lo),
                ctypes.c_int64(hi),
                ctypes.c_int(int(ctx.reverse)),
                *map(_pointer, (u, dt, A, B, C, h0, grad_y, grad_last, du, ddt)),
                _pointer(dA, lo * A.shape[1]),
                _pointer(dB[i]),
                _pointer(dC[i]),
                _pointer(dh0),
            )  # fmt: skip
            for i, (lo, hi) in enumerate(slices)
        ]
        _run(jobs)
        return du, ddt, dA, dB.sum(0), dC.sum(0), dh0, None


class _SoftplusWithBias(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias):  # type: ignore[override]
        x = x.contiguous()
        bias = None if bias is None else bias.contiguous()
        kernel = _kernel("softplus_bias", x.dtype)
        out = torch.empty_like(x)
        kernel(
            ctypes.c_int64(x.numel() // max(x.shape[-1], 1)), ctypes.c_int64(x.shape[-1]),
            *map(_pointer, (x, bias, out)),
        )  # fmt: skip
        ctx.save_for_backward(x, bias)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, bias = ctx.saved_tensors
        pre = x if bias is None else x + bias
        # Above PyTorch's threshold softplus is the identity; sigmoid(20) differs from 1 by 2e-9.
        slope = torch.where(pre > 20, torch.ones_like(pre), torch.sigmoid(pre))
        grad_x = grad * slope
        grad_bias = None if bias is None else grad_x.reshape(-1, x.shape[-1]).sum(0)
        return grad_x, grad_bias


def softplus_with_bias_cpu(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``softplus(x + bias)`` over the last dim, vectorised in C (PyTorch's threshold of 20)."""
    if x.dtype not in _SUFFIX or (bias is not None and bias.dtype != x.dtype):
        raise ValueError(f"softplus_with_bias_cpu: needs float32 or float64 inputs, got {x.dtype}")
    return _SoftplusWithBias.apply(x, bias)


def selective_scan_cpu_core(
    u: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    h0: torch.Tensor | None,
    reverse: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, last_state)`` of the recurrence and readout; float32 or float64 CPU tensors of one dtype."""
    if u.dtype not in _SUFFIX or any(t.dtype != u.dtype for t in (dt, A, B, C)):
        raise ValueError(
            f"selective_scan_cpu_core: needs float32 or float64 inputs of one dtype, got {u.dtype}"
        )
    if h0 is not None and h0.dtype != u.dtype:
        h0 = h0.to(u.dtype)
    return _SelectiveScanCPU.apply(u, dt, A, B, C, h0, reverse)
