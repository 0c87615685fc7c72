"""Plain progress lines that read well in a redirected log, and why a fit stopped.

Lightning's Rich and TQDM bars redraw one line in place: in a file they arrive as one
blob at the end, or as thousands of carriage returns. ``ProgressLines`` is a Lightning
``ProgressBar`` (so it replaces them) that prints one ordinary line every
``every_seconds``: epoch, step, training loss (the mean over the steps since the last
line, from the losses ``training_step`` returned), steps/s, time left and CPU budget left.
When training ends it prints one line saying why (budget, early stopping, max_time,
max_steps, max_epochs).
"""

from __future__ import annotations

import math
import sys
import time
from datetime import timedelta
from typing import Any, TextIO

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, Timer
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar

from omniseq.recipes.callbacks import CPUTimeBudget
from omniseq.recipes.train_logging import TRAIN_LOSS


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


def _find(trainer: L.Trainer, kind: type) -> list:
    return [cb for cb in trainer.callbacks if isinstance(cb, kind)]


def stop_reason(trainer: L.Trainer) -> str:
    """One line saying why ``trainer.fit`` returned."""
    for budget in _find(trainer, CPUTimeBudget):
        if budget.stopped:
            return (f"stopped: CPU-time budget spent ({budget.used_seconds() / 60:.1f} of "
                    f"{budget.seconds / 60:g} CPU-minutes; --budget_minutes sets it)")
    for early in _find(trainer, EarlyStopping):
        if early.stopped_epoch > 0 or early.stopping_reason_message:
            message = (early.stopping_reason_message or "").replace("Signaling Trainer to stop.", "")
            message = " ".join(message.split())
            return f"stopped: early stopping at epoch {early.stopped_epoch}. {message}".rstrip()
    for timer in _find(trainer, Timer):
        remaining = timer.time_remaining()
        if remaining is not None and remaining <= 0:
            return f"stopped: max_time reached ({_clock(timer.time_elapsed())} of training)"
    if 0 <= trainer.max_steps <= trainer.global_step:
        return f"stopped: max_steps={trainer.max_steps} reached"
    if trainer.max_epochs is not None and 0 <= trainer.max_epochs <= trainer.current_epoch:
        return f"finished: max_epochs={trainer.max_epochs} reached"
    if trainer.interrupted:
        return "stopped: interrupted"
    return "stopped: trainer.should_stop was set (by the model or a callback)"


class ProgressLines(ProgressBar):
    """Print a progress line every ``every_seconds`` and the reason training stopped.

    Args:
        every_seconds: seconds of wall time between two lines (the first after the first step).
        stream: where to write; ``None`` means ``sys.stdout`` at the time of writing.
    """

    def __init__(self, every_seconds: float = 30.0, stream: TextIO | None = None) -> None:
        super().__init__()
        if every_seconds < 0:
            raise ValueError(f"ProgressLines: every_seconds must be >= 0, got {every_seconds}")
        self.every_seconds = every_seconds
        self.stream = stream
        self._enabled = True
        self._start = self._last = self._cpu_start = 0.0
        self._start_step = self._last_step = 0
        self._epoch_train_s = self._epoch_mark = 0.0
        self._epoch_first_step = 0
        self._loss_sum: torch.Tensor | None = None
        self._loss_steps = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _write(self, trainer: L.Trainer, text: str) -> None:
        if self._enabled and trainer.is_global_zero:
            stream = self.stream or sys.stdout
            stream.write(text + "\n")
            stream.flush()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last = time.perf_counter()
        self._cpu_start = time.process_time()
        self._start_step = self._last_step = trainer.global_step
        self._loss_sum, self._loss_steps = None, 0
        self._write(trainer, f"progress: training from step {trainer.global_step}, a line every "
                             f"{self.every_seconds:g} s")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            # Summed on the loss's device: no host sync until a line is written.
            loss = loss.detach().float() * trainer.accumulate_grad_batches  # Lightning divided it
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._loss_steps += 1
        now = time.perf_counter()
        if now - self._last >= self.every_seconds or trainer.global_step == self._start_step + 1:
            self._write(trainer, self.status_line(trainer, now))
            self._last, self._last_step = now, trainer.global_step
            self._loss_sum, self._loss_steps = None, 0

    def status_line(self, trainer: L.Trainer, now: float) -> str:
        steps = trainer.global_step
        rate = (steps - self._last_step) / max(now - self._last, 1e-9)
        parts = [f"epoch {trainer.current_epoch}", f"step {steps}"]
        total = trainer.estimated_stepping_batches
        if math.isfinite(total):
            parts[-1] += f"/{int(total)}"
        if self._loss_steps:
            mean = float(self._loss_sum) / self._loss_steps
            parts.append(f"{TRAIN_LOSS} {mean:.4g}" + (f" (mean of {self._loss_steps} batches)" if self._loss_steps > 1 else ""))
        metrics = trainer.progress_bar_metrics
        parts += [f"{key} {float(value):.4g}" for key, value in metrics.items()
                  if key.startswith("train/") and not (key == TRAIN_LOSS and self._loss_steps)]
        parts.append(f"{rate:.2f} steps/s")
        parts.append(f"elapsed {_clock(now - self._start)}")
        eta = self._eta(trainer, steps, total, now)
        if eta is not None:
            parts.append(f"ETA {_clock(eta[0])}{eta[1]}")
        for budget in _find(trainer, CPUTimeBudget):
            left = max(budget.seconds - budget.used_seconds(), 0.0) / 60
            parts.append(f"budget left {left:.1f} of {budget.seconds / 60:g} CPU-min")
        return " | ".join(parts)

    def _eta(self, trainer: L.Trainer, steps: int, total: float, now: float) -> tuple[float, str] | None:
        """Wall seconds left and what ends the fit first: the step limit, or a CPU budget
        at the CPU-seconds per wall-second this fit has used so far."""
        elapsed = max(now - self._start, 1e-9)
        overall = (steps - self._start_step) / elapsed
        candidates = []
        if math.isfinite(total) and overall > 0:
            candidates.append((max(total - steps, 0) / overall, ""))
        cpu_per_wall = (time.process_time() - self._cpu_start) / elapsed
        for budget in _find(trainer, CPUTimeBudget):
            if cpu_per_wall > 0:
                left = max(budget.seconds - budget.used_seconds(), 0.0)
                candidates.append((left / cpu_per_wall, " (CPU budget)"))
        return min(candidates, default=None, key=lambda c: c[0])

    # Each epoch's line gives the time spent in the training loop alone (validation excluded).
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_train_s, self._epoch_mark = 0.0, time.perf_counter()
        self._epoch_first_step = trainer.global_step

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._epoch_train_s += time.perf_counter() - self._epoch_mark

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_train_s += time.perf_counter() - self._epoch_mark
        steps = trainer.global_step - self._epoch_first_step
        self._write(trainer, f"epoch {trainer.current_epoch} done: {steps} steps, "
                             f"{self._epoch_train_s:.2f} s in the training loop")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self._epoch_mark = time.perf_counter()
        metrics = trainer.progress_bar_metrics
        shown = ", ".join(f"{key} {float(value):.4g}" for key, value in metrics.items() if key.startswith("val/"))
        self._write(trainer, f"epoch {trainer.current_epoch} step {trainer.global_step} validation: {shown}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.perf_counter()
        done = trainer.global_step - self._start_step
        self._write(trainer, f"progress: {done} steps in {_clock(now - self._start)}; {stop_reason(trainer)}")


def fit_callbacks(verbose: bool, trainer_options: dict | None = None, every_seconds: float = 30.0) -> dict[str, Any]:
    """Trainer options for the API objects: progress lines when ``verbose``, else silence.

    A user's own ``enable_progress_bar=False`` among ``trainer_options`` wins.
    """
    if not verbose or (trainer_options or {}).get("enable_progress_bar") is False:
        return {"enable_progress_bar": False, "callbacks": []}
    from omniseq.recipes.quiet import silence_lightning_noise

    silence_lightning_noise()
    return {"enable_progress_bar": True, "callbacks": [ProgressLines(every_seconds)]}
