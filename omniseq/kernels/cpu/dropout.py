"""ctypes wrappers of ``dropout.c``: dropout whose mask is Philox4x32-10 of the element index,
generated and applied in one pass over a dense fp32 or bf16 buffer, on the calling thread.

:func:`omniseq.kernels.gelu_mix.keep_mask` computes the same mask in PyTorch (the test oracle
and the path on other devices and dtypes).
"""

from __future__ import annotations

import ctypes

import torch

from omniseq.kernels.cpu._build import cpu_kernels_available, load_cpu_library
from omniseq.kernels.cpu.selective_scan import _pointer

__all__ = ["philox4x32_10", "philox_dropout", "supports"]

_SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16"}


def supports(x: torch.Tensor, memory_format: torch.memory_format) -> bool:
    """Whether the kernel takes ``x``: CPU, fp32 or bf16, dense in ``memory_format``, and compiled."""
    return (x.device.type == "cpu" and x.dtype in _SUFFIX and x.is_contiguous(memory_format=memory_format)
            and cpu_kernels_available("dropout"))


def philox_dropout(x: torch.Tensor, out: torch.Tensor, key: tuple[int, int], threshold: int, scale: float) -> None:
    """``out = keep ? x * scale : 0`` element by element in memory order (``out`` may be ``x``);
    element i is kept when its 16-bit Philox half is below ``threshold`` (see ``dropout.c``)."""
    if out.dtype != x.dtype or out.numel() != x.numel() or out.stride() != x.stride():
        raise ValueError("philox_dropout: out must have x's dtype, size and layout")
    kernel = getattr(load_cpu_library("dropout"), f"philox_dropout_{_SUFFIX[x.dtype]}")
    kernel.restype = None
    kernel(_pointer(x), _pointer(out), ctypes.c_int64(x.numel()), ctypes.c_uint32(key[0]), ctypes.c_uint32(key[1]),
           ctypes.c_uint32(threshold), ctypes.c_float(scale))


def philox4x32_10(counter: tuple[int, int, int, int], key: tuple[int, int]) -> tuple[int, ...]:
    """The compiled generator's four words for one counter (for its known-answer test)."""
    words = (ctypes.c_uint32 * 4)()
    load_cpu_library("dropout").philox4x32_10((ctypes.c_uint32 * 4)(*counter), (ctypes.c_uint32 * 2)(*key), words)
    return tuple(words)
