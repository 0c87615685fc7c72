"""Autograd wrapper of the fused causal + anti-causal depthwise conv with SiLU (``bidirectional_conv.c``).

Replaces a padded, transposed grouped conv, its SiLU and the copies back to the
sequence-major layout by one pass that writes ``(2, B, L, D)`` directly; backward
recomputes the pre-activations instead of saving them. Channels are split over
torch's threads as in the compiled selective scan.
"""

from __future__ import annotations

import ctypes

import torch
from torch.autograd.function import once_differentiable

from omniseq.kernels.cpu._build import load_cpu_library
from omniseq.kernels.cpu.selective_scan import _pointer, _run, _slices

__all__ = ["bidirectional_conv_silu_cpu"]

_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def _kernel(name: str, dtype: torch.dtype):
    function = getattr(load_cpu_library("bidirectional_conv"), f"{name}_{_SUFFIX[dtype]}")
    function.restype = ctypes.c_int64
    return function


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself when its channels are contiguous and its rows evenly spaced, else a copy."""
    batch, length, _ = x.shape
    if x.stride(2) == 1 and x.stride(0) == length * x.stride(1):
        return x
    return x.contiguous()


def _head(x: torch.Tensor, taps: int) -> list[ctypes.c_int64]:
    batch, length, dim = x.shape
    return [ctypes.c_int64(v) for v in (batch, length, dim, taps, x.stride(1))]


class _BidirectionalConvSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):  # type: ignore[override]
        x = _rows(x)
        w = weight.transpose(1, 2).contiguous()  # (2, K, D): channels innermost
        bias = bias.contiguous()
        out = x.new_empty(2, *x.shape)
        kernel, head = _kernel("bidirectional_conv_fwd", x.dtype), _head(x, weight.shape[-1])
        _run([
            lambda lo=lo, hi=hi: kernel(*head, ctypes.c_int64(lo), ctypes.c_int64(hi), *map(_pointer, (x, w, bias, out)))
            for lo, hi in _slices(x.shape[2])
        ])  # fmt: skip
        ctx.save_for_backward(x, w, bias)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        x, w, bias = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        dx = torch.zeros(x.shape, dtype=x.dtype)
        dw, dbias = torch.zeros_like(w), torch.zeros_like(bias)
        slices = _slices(x.shape[2])
        scratch = x.new_empty(len(slices), x.shape[2])
        kernel, head = _kernel("bidirectional_conv_bwd", x.dtype), _head(x, w.shape[1])
        _run([
            lambda i=i, lo=lo, hi=hi: kernel(
                *head, ctypes.c_int64(lo), ctypes.c_int64(hi),
                *map(_pointer, (x, w, bias, grad_out, dx, dw, dbias)), _pointer(scratch[i]),
            )
            for i, (lo, hi) in enumerate(slices)
        ])  # fmt: skip
        return dx, dw.transpose(1, 2), dbias


def bidirectional_conv_silu_cpu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``silu`` of the causal (index 0) and anti-causal (1) depthwise convs of ``x (B, L, D)``.

    ``weight (2, D, K)``, ``bias (2, D)``; float32 or float64 CPU tensors of one dtype.
    Returns ``(2, B, L, D)``.
    """
    if x.dtype not in _SUFFIX or weight.dtype != x.dtype or bias.dtype != x.dtype:
        raise ValueError(f"bidirectional_conv_silu_cpu: needs float32 or float64 inputs of one dtype, got {x.dtype}")
    return _BidirectionalConvSiLU.apply(x, weight, bias)
