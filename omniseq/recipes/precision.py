"""bf16 mixed precision where the hardware runs bf16 natively, fp32 where it would be emulated.

A recipe lists :class:`BF16WhereNative` under ``trainer.plugins``. On a GPU with bf16, or a
CPU with AVX512-BF16 or AMX, it is Lightning's ``bf16-mixed``: ConvS5's convolutions then
run in bf16 (its scan stays fp32), about twice as fast on such a CPU. Elsewhere bf16 would be
emulated and slower, so it is fp32. Either way it says which, and why, in one line. The CLI
(:class:`omniseq.recipes.cli.OmniseqCLI`) turns it into that precision flag before the
Trainer is built, so every strategy brings its own precision plugin as usual, and an explicit
``--trainer.precision`` (``32-true`` forces fp32) wins. Given to a ``Trainer`` directly, it
is a precision plugin that decides for the device the model is on.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.utilities import rank_zero_info

__all__ = ["BF16WhereNative", "native_bf16", "precision_for"]

_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def native_bf16(device: str, cpuinfo: str | None = None) -> tuple[bool, str]:
    """Whether ``device`` ("cpu" or "cuda") computes bf16 natively, and the reason in words.
    ``cpuinfo`` stands in for ``/proc/cpuinfo`` (tests)."""
    if device == "cuda":
        supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return supported, "this GPU supports bf16" if supported else "this GPU has no bf16"
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False, "the CPU's features are unknown (no /proc/cpuinfo)"
    flags = {word for line in cpuinfo.splitlines() if line.startswith("flags") for word in line.split()}
    found = [flag for flag in _CPU_FLAGS if flag in flags]
    if found:
        return True, f"this CPU has {found[0].upper().replace('_', '-')}"
    return False, "this CPU has no AVX512-BF16 or AMX, where bf16 would be emulated and slower"


def precision_for(device: str) -> tuple[str, str]:
    """The precision flag :class:`BF16WhereNative` stands for on ``device``, and the line that says why."""
    native, why = native_bf16(device)
    precision = "bf16-mixed" if native else "32-true"
    return precision, f"omniseq: precision {precision} ({why}); --trainer.precision chooses another"


class BF16WhereNative(MixedPrecision):
    """``bf16-mixed`` on hardware with native bf16, fp32 elsewhere (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__("bf16-mixed", "cuda" if torch.cuda.is_available() else "cpu")
        self._decide(self.device)
        self._said = False

    def _decide(self, device: str) -> None:
        self.device = device
        self.precision, self.line = precision_for(device)
        self.native = self.precision == "bf16-mixed"

    def connect(self, model, optimizers, lr_schedulers):  # type: ignore[override]
        # The model is on its device now (a CPU run on a machine with a GPU decides for the CPU).
        device = next((p.device.type for p in model.parameters()), self.device)
        if device != self.device:
            self._decide(device)
        return super().connect(model, optimizers, lr_schedulers)

    def autocast_context_manager(self) -> contextlib.AbstractContextManager:
        if not self._said:  # said at first use, once the device is known (the CLI says it earlier, itself)
            rank_zero_info(self.line)
            self._said = True
        if not self.native:
            return contextlib.nullcontext()
        return super().autocast_context_manager()
