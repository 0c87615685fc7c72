"""``train/loss`` is logged only on the steps where it is read, and the log says the same
as a ``self.log`` in every step; the progress lines average the loss themselves."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from omniseq.recipes.progress import ProgressLines
from omniseq.recipes.train_logging import TrainLossLogging


class _EveryStep(L.LightningModule):
    """The oracle: logs ``train/loss`` in every training step, as the tasks used to."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 1)
        self.log_calls = 0

    def loss(self, batch) -> torch.Tensor:
        return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])

    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)
        return loss

    def log(self, *args, **kwargs) -> None:
        self.log_calls += 1
        super().log(*args, **kwargs)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def train_dataloader(self):
        generator = torch.Generator().manual_seed(1)
        data = torch.utils.data.TensorDataset(torch.randn(64, 4, generator=generator),
                                              torch.randn(64, 1, generator=generator))
        return torch.utils.data.DataLoader(data, batch_size=4)


class _WhenRead(TrainLossLogging, _EveryStep):
    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log_train_loss(loss)
        return loss


class _StopAt(L.Callback):
    """Stops the fit after ``step`` steps from ``on_train_batch_end``, as the CPU budget and max_time do."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def _fit(module: L.LightningModule, root: Path, callbacks=(), **options) -> tuple[L.Trainer, list[dict]]:
    trainer = L.Trainer(default_root_dir=root, logger=CSVLogger(root, name="log"), callbacks=list(callbacks),
                        enable_checkpointing=any(isinstance(cb, ModelCheckpoint) for cb in callbacks),
                        enable_progress_bar=False, enable_model_summary=False, **options)
    trainer.fit(module)
    logs = list(root.rglob("metrics.csv"))
    if not logs:  # no row was due
        return trainer, []
    with open(logs[0]) as f:
        return trainer, list(csv.DictReader(f))


@pytest.mark.parametrize("options, stop", [
    ({"log_every_n_steps": 3, "max_steps": 10}, None),
    ({"log_every_n_steps": 3, "max_epochs": 3}, None),  # 16 batches an epoch: rows across epochs
    ({"log_every_n_steps": 3, "max_steps": 50}, 7),  # a stop at a step that is not a logging step
    ({"log_every_n_steps": 4, "max_steps": 12, "accumulate_grad_batches": 2}, None),
])
def test_the_log_holds_the_same_rows_as_logging_every_step(tmp_path, options, stop):
    callbacks = lambda: [_StopAt(stop)] if stop else []  # noqa: E731
    oracle = _EveryStep()
    oracle_trainer, oracle_rows = _fit(oracle, tmp_path / "every", callbacks(), **options)
    module = _WhenRead()
    trainer, rows = _fit(module, tmp_path / "read", callbacks(), **options)
    logged = [row for row in rows if row.get("train/loss")]
    assert trainer.global_step == oracle_trainer.global_step
    assert logged == [row for row in oracle_rows if row.get("train/loss")] and len(logged) >= 3
    if stop:  # the stop step's row carries that step's loss, not an older one
        assert int(logged[-1]["step"]) == stop - 1
    batches = oracle_trainer.global_step * options.get("accumulate_grad_batches", 1)
    assert oracle.log_calls == batches and module.log_calls < batches / 2


def test_a_monitored_train_loss_is_logged_every_step(tmp_path):
    def fit(module: L.LightningModule, name: str) -> ModelCheckpoint:
        checkpoint = ModelCheckpoint(tmp_path / name / "ckpt", monitor="train/loss", every_n_train_steps=1, save_top_k=1)
        _fit(module, tmp_path / name, [checkpoint], log_every_n_steps=50, max_steps=6)
        return checkpoint

    module = _WhenRead()
    checkpoint, oracle = fit(module, "read"), fit(_EveryStep(), "every")
    assert module.log_calls == 6
    # The checkpoint saw each step's own loss: the same best step and score as the oracle's.
    assert checkpoint.best_model_score == oracle.best_model_score
    assert Path(checkpoint.best_model_path).name == Path(oracle.best_model_path).name
    assert checkpoint.current_score == oracle.current_score


class _KnownLosses(L.LightningModule):
    """Batch ``i`` of an epoch has loss ``i + 1``."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        return self.weight * 0 + float(batch_idx + 1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(10, 1)), batch_size=1)


def test_progress_lines_show_the_mean_loss_since_the_last_line():
    stream = io.StringIO()
    progress = ProgressLines(every_seconds=1e9, stream=stream)
    trainer = L.Trainer(callbacks=[progress], logger=False, enable_checkpointing=False, enable_model_summary=False,
                        max_epochs=1)
    trainer.fit(_KnownLosses())
    assert "step 1/10 | train/loss 1 |" in stream.getvalue()  # the line after the first step
    # Batches 2..10 came after that line: their mean is 6.
    assert "train/loss 6 (mean of 9 batches)" in progress.status_line(trainer, progress._last + 1)
