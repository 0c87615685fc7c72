"""Callbacks shared by the recipes: exact resume and a CPU-time training budget."""

from __future__ import annotations

import random
import time
from typing import Any

import lightning as L
import numpy as np
import torch


class RNGStateCheckpoint(L.Callback):
    """Store the Python, NumPy and torch RNG states in every checkpoint.

    Lightning seeds once at start-up but does not checkpoint RNG state, so a
    resumed fit would draw different dropout masks than an uninterrupted one.
    """

    # Only tensors and plain Python values, so checkpoints still load with
    # torch.load(weights_only=True), Lightning's default.
    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        return {
            "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(state_dict["python"])
        kind, keys, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class CPUTimeBudget(L.Callback):
    """Stop training once this process has used ``minutes`` of CPU time.

    Wall-clock limits (``max_time``) are unfair on a shared machine: a model
    trained while others load the CPU gets fewer steps. CPU time of the
    training process (all its threads, validation included) is the same
    budget whatever else runs. The time used is checkpointed, so a resumed fit
    spends only what is left.

    ``anneal_fraction`` > 0 decays every learning rate linearly to
    ``final_lr_factor`` of its value over that last fraction of the budget.
    A fixed budget rewards ending on a decayed rate (Li et al., "Budgeted
    Training", ICLR 2020, https://arxiv.org/abs/1905.04753); the step count is
    not known in advance, so the decay follows the budget spent. The factor is
    applied multiplicatively, so it composes with a plateau scheduler.
    """

    def __init__(self, minutes: float, anneal_fraction: float = 0.0, final_lr_factor: float = 0.01) -> None:
        self.set_minutes(minutes)
        if not 0.0 <= anneal_fraction <= 1.0:
            raise ValueError(f"CPUTimeBudget: anneal_fraction must be in [0, 1], got {anneal_fraction}")
        if not 0.0 < final_lr_factor <= 1.0:
            raise ValueError(f"CPUTimeBudget: final_lr_factor must be in (0, 1], got {final_lr_factor}")
        self.anneal_fraction = anneal_fraction
        self.final_lr_factor = final_lr_factor
        self._spent_before = 0.0
        self._start: float | None = None
        self._lr_factor = 1.0
        self.stopped = False

    def set_minutes(self, minutes: float) -> None:
        """Set the budget (``omniseq fit --budget_minutes``); time already spent still counts."""
        if not minutes > 0:
            raise ValueError(f"CPUTimeBudget: minutes must be positive, got {minutes}")
        self.seconds = 60.0 * minutes

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.process_time()

    def used_seconds(self) -> float:
        current = 0.0 if self._start is None else time.process_time() - self._start
        return self._spent_before + current

    def lr_factor(self, used_seconds: float) -> float:
        """The learning-rate multiplier after ``used_seconds`` of the budget."""
        anneal_start = (1.0 - self.anneal_fraction) * self.seconds
        if self.anneal_fraction == 0.0 or used_seconds <= anneal_start:
            return 1.0
        progress = min(1.0, (used_seconds - anneal_start) / (self.seconds - anneal_start))
        return 1.0 - progress * (1.0 - self.final_lr_factor)

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        factor = self.lr_factor(self.used_seconds())
        if factor == self._lr_factor:
            return
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] *= factor / self._lr_factor
        self._lr_factor = factor

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if self.used_seconds() >= self.seconds:
            trainer.should_stop = self.stopped = True

    def state_dict(self) -> dict[str, Any]:
        return {"used_seconds": self.used_seconds(), "lr_factor": self._lr_factor}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._spent_before = float(state_dict["used_seconds"])
        # The optimizer's restored rates already carry this factor.
        self._lr_factor = float(state_dict.get("lr_factor", 1.0))
