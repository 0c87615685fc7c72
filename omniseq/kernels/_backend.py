"""Backend dispatch shared by every kernel.

``backend="auto"`` picks Triton for CUDA tensors when Triton imports; on the CPU
it picks the op's compiled C kernel (``omniseq.kernels.cpu``) where the op has one
and it builds, else the PyTorch path. ``"cpu"`` asks for the compiled kernel (ops
without one run PyTorch). ``OMNISEQ_KERNEL_BACKEND=torch|triton|cpu`` forces a
backend globally, which is how a user works around a kernel bug without touching code.

:func:`own_precision` keeps ``torch.autocast`` out of a kernel: each kernel picks
its own compute dtype (fp32 for fp16/bf16 inputs) and casts its result back.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from typing import TypeVar

import torch

BACKENDS = ("auto", "torch", "triton", "cpu")
ENV_VAR = "OMNISEQ_KERNEL_BACKEND"


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, *tensors: torch.Tensor, cpu_kernel: str | None = None) -> str:
    """Return ``"torch"``, ``"triton"`` or ``"cpu"`` for this call.

    ``cpu_kernel`` names the op's compiled CPU kernel, if it has one.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"{ENV_VAR} must be one of {BACKENDS}, got {forced!r}")
        if backend == "auto":
            backend = forced
    on_cuda = any(t is not None and t.is_cuda for t in tensors)
    if backend == "auto":
        if on_cuda:
            return "triton" if triton_available() else "torch"
        return "cpu" if cpu_kernel is not None and _cpu_kernel_builds(cpu_kernel) else "torch"
    if backend == "triton" and not triton_available():
        raise RuntimeError("backend='triton' requested but triton is not importable")
    if backend == "cpu":
        if cpu_kernel is None:
            return "torch"
        if on_cuda:
            raise ValueError("backend='cpu' runs the compiled CPU kernel; the inputs are on CUDA")
        from omniseq.kernels.cpu import load_cpu_library

        load_cpu_library(cpu_kernel)  # raises, saying why, when it cannot be built
    return backend


def _cpu_kernel_builds(name: str) -> bool:
    from omniseq.kernels.cpu import cpu_kernels_available

    return cpu_kernels_available(name)


F = TypeVar("F", bound=Callable)


def _autocast_off(tensors: list[torch.Tensor]) -> contextlib.AbstractContextManager:
    device_type = tensors[0].device.type if tensors else "cpu"
    if not torch.amp.is_autocast_available(device_type):
        return contextlib.nullcontext()
    if not torch.is_autocast_enabled(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


def own_precision(kernel: F) -> F:
    """Run ``kernel`` with autocast disabled on its tensors' device.

    Under ``torch.autocast`` every matmul, einsum and FFT inside a kernel would
    silently drop to bf16/fp16, including the ones that carry recurrent states
    and products of ``exp`` of cumulative gates (fp16 overflows at ``exp(11)``;
    the Vision Mamba AMP NaNs came from this). The kernels instead upcast half
    inputs to fp32 themselves and return the input dtype, so autocast only ever
    sees their inputs and outputs.
    """

    @functools.wraps(kernel)
    def wrapper(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        with _autocast_off(tensors):
            return kernel(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def wide_float(device: torch.device) -> torch.dtype:
    """float64 where the device has it (not MPS): for sums whose differences are exponentiated."""
    return torch.float32 if device.type == "mps" else torch.float64
