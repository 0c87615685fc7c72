"""``train/loss`` logged on the steps where something reads it, instead of on every step.

Lightning's ``self.log`` costs about a millisecond of Python per call on CPU (it moves
its result object to the value's device), a few percent of a small model's step
(``benchmarks/overhead.py``). The value logged in a training step is only read:

* by the logger, which writes a row every ``log_every_n_steps`` steps and on the step
  a fit stops (``Trainer.should_stop``);
* by a callback or learning-rate scheduler that monitors ``train/loss`` (then it is
  logged in every step, as under DDP and in a ``fast_dev_run``).

``TrainLossLogging`` keeps the step's loss and logs it from the module's own
``on_train_batch_end``: Lightning calls that after every callback's, so a stop decided
by the CPU-time budget or ``max_time`` is already known, and before it writes the
step's row. The logged rows are the same as with a ``self.log`` in every step. The
progress lines average the loss themselves (``ProgressLines``), so they do not need it;
Lightning's TQDM and Rich bars show the last logged value.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

__all__ = ["TRAIN_LOSS", "TrainLossLogging", "train_loss_read_this_step"]

TRAIN_LOSS = "train/loss"


def _monitors_train_loss(trainer: L.Trainer) -> bool:
    monitored = [getattr(callback, "monitor", None) for callback in trainer.callbacks]
    monitored += [config.monitor for config in trainer.lr_scheduler_configs]
    return TRAIN_LOSS in monitored


def train_loss_read_this_step(trainer: L.Trainer) -> bool:
    """Whether a ``train/loss`` logged in this step's ``on_train_batch_end`` is written or read."""
    connector = getattr(trainer, "_logger_connector", None)  # Lightning's own rule for writing a row
    return connector is None or trainer.should_stop or connector.should_update_logs


def _log_every_step(trainer: L.Trainer) -> bool:
    # Under several processes each rank may see a different ``should_stop`` (the CPU budget is
    # per process) while ``sync_dist`` is a collective every rank must join; a monitor reads the
    # value in its own ``on_train_batch_end``, before the module's.
    return trainer.world_size > 1 or bool(trainer.fast_dev_run) or _monitors_train_loss(trainer)


class TrainLossLogging:
    """LightningModule mixin: call ``self.log_train_loss(loss)`` in ``training_step`` instead of
    ``self.log("train/loss", loss, prog_bar=True, sync_dist=True)``. A subclass defining
    ``on_train_batch_end`` calls ``super()``.

    On one process the loss is logged on the steps where it is read
    (``train_loss_read_this_step``); on the others ``trainer.callback_metrics`` keeps the
    last logged value. Under DDP, in a ``fast_dev_run`` or when a callback or scheduler
    monitors ``train/loss``, it is logged in every step, as before.
    """

    _step_loss: torch.Tensor | None = None

    def log_train_loss(self, loss: torch.Tensor) -> None:
        trainer = self._trainer
        if trainer is None or _log_every_step(trainer):
            self.log(TRAIN_LOSS, loss, prog_bar=True, sync_dist=True)
        else:
            self._step_loss = loss.detach()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        loss, self._step_loss = self._step_loss, None
        if loss is not None and train_loss_read_this_step(self.trainer):
            self.log(TRAIN_LOSS, loss, prog_bar=True, sync_dist=True)
