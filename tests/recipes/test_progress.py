"""Feedback while training: progress lines in a redirected log, why a fit stopped, the
--budget_minutes flag, and no warnings on a clean run."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping

from omniseq.recipes.callbacks import CPUTimeBudget
from omniseq.recipes.cli import build_cli, resolve_config_args
from omniseq.recipes.progress import ProgressLines, stop_reason

REPO = Path(__file__).resolve().parents[2]


class _Regression(L.LightningModule):
    """A linear fit whose validation loss is constant, so that early stopping fires."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        loss = torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", 1.0, prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def _loader(self):
        data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
        return torch.utils.data.DataLoader(data, batch_size=4)

    def train_dataloader(self):
        return self._loader()

    def val_dataloader(self):
        return self._loader()


def _fit(callbacks: list, **options) -> tuple[L.Trainer, str]:
    stream = io.StringIO()
    trainer = L.Trainer(callbacks=[ProgressLines(every_seconds=0, stream=stream), *callbacks], logger=False,
                        enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
                        **options)
    trainer.fit(_Regression())
    return trainer, stream.getvalue()


def test_progress_lines_carry_epoch_step_loss_rate_and_eta():
    trainer, text = _fit([], max_epochs=2)
    lines = [line for line in text.splitlines() if line.startswith("epoch 1 | step 16/16")]
    assert len(lines) == 1, text
    assert "train/loss" in lines[0] and "steps/s" in lines[0] and "ETA 0:00:00" in lines[0]
    assert "epoch 1 step 16 validation: val/loss 1" in text
    assert text.rstrip().endswith("finished: max_epochs=2 reached")


def test_eta_follows_the_cpu_budget_when_it_ends_the_fit_first():
    # 8 steps an epoch for a million epochs: days by the step count, about a second by the budget.
    _, text = _fit([CPUTimeBudget(minutes=0.02)], max_epochs=1_000_000)
    line = next(line for line in text.splitlines() if " | ETA " in line)
    eta = line.split(" | ETA ")[1].split(" |")[0]
    assert eta.endswith("(CPU budget)"), line
    hours, minutes, seconds = (int(x) for x in eta.split()[0].split(":"))
    assert hours == 0 and minutes == 0, line  # 1.2 CPU-s left at most, not the step count's days


@pytest.mark.parametrize("options, callbacks, reason", [
    ({"max_steps": 3}, [], "stopped: max_steps=3 reached"),
    ({"max_epochs": 50}, [EarlyStopping("val/loss", patience=2)], "stopped: early stopping at epoch 2."),
    ({"max_epochs": 50}, [CPUTimeBudget(minutes=1e-9)], "stopped: CPU-time budget spent"),
    ({"max_epochs": 10_000, "max_time": {"seconds": 0.3}}, [], "stopped: max_time reached"),
])
def test_the_last_line_says_why_training_stopped(options, callbacks, reason):
    trainer, text = _fit(callbacks, **options)
    last = text.rstrip().splitlines()[-1]
    assert reason in last and last.startswith(f"progress: {trainer.global_step} steps in "), text
    assert stop_reason(trainer) in last
    if callbacks and isinstance(callbacks[0], CPUTimeBudget):
        assert "budget left 0.0 of" in text and trainer.global_step == 1


def _cli_trainer(tmp_path, recipe: str, *extra: str) -> L.Trainer:
    args = ["--config", recipe, "--trainer.default_root_dir", str(tmp_path), *extra]
    return build_cli(resolve_config_args(args), run=False).trainer


def test_budget_flag_overrides_the_recipes_budget_or_adds_one(tmp_path):
    recipe = "separation/fsdd_convtasnet"  # carries a 30 CPU-minute budget, annealed
    (budget,) = [cb for cb in _cli_trainer(tmp_path, recipe).callbacks if isinstance(cb, CPUTimeBudget)]
    assert budget.seconds == 30 * 60
    (budget,) = [cb for cb in _cli_trainer(tmp_path, recipe, "--budget_minutes", "7.5").callbacks
                 if isinstance(cb, CPUTimeBudget)]
    assert budget.seconds == 7.5 * 60 and budget.anneal_fraction == 0.5
    recipe = "forecasting/demo_itransformer"  # no budget of its own
    assert not [cb for cb in _cli_trainer(tmp_path, recipe).callbacks if isinstance(cb, CPUTimeBudget)]
    trainer = _cli_trainer(tmp_path, recipe, "--budget_minutes", "2")
    assert [cb.seconds for cb in trainer.callbacks if isinstance(cb, CPUTimeBudget)] == [120.0]
    assert [cb.every_seconds for cb in trainer.callbacks if isinstance(cb, ProgressLines)] == [30.0]


def test_a_cli_fit_redirected_to_a_file_shows_progress_and_why_it_stopped(tmp_path):
    log, err = tmp_path / "fit.log", tmp_path / "fit.err"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "omniseq", "fit", "--config", "forecasting/demo_itransformer",
            "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.limit_val_batches", "2",
            "--model.backbone.d_model", "16", "--model.backbone.d_ff", "16",
            "--budget_minutes", "0.005", "--progress.every_seconds", "0"]
    with open(log, "w") as out, open(err, "w") as errors:
        proc = subprocess.run(args, stdout=out, stderr=errors, cwd=tmp_path, env=env, timeout=600)
    text, errors = log.read_text(), err.read_text()
    assert proc.returncode == 0, errors
    assert "epoch 0 | step 1/" in text and "steps/s" in text and "budget left" in text, text
    assert "stopped: CPU-time budget spent" in text, text
    # A clean run warns about nothing (Lightning's own adverts and deprecations are filtered).
    assert "Warning" not in errors and "warn" not in errors.lower() and "Tip" not in errors, errors


def test_api_fit_prints_progress_by_default_and_nothing_when_not_verbose(capsys, tmp_path):
    from omniseq.api.forecaster import Forecaster
    from omniseq.data.synthetic import make_synthetic_series

    frame = make_synthetic_series(n_rows=300, n_channels=2, seed=0)
    tiny = dict(default_root_dir=str(tmp_path), seq_len=24, pred_len=8, batch_size=16, max_epochs=1, model_options={"d_model": 16, "d_ff": 16},
                trainer_options={"limit_train_batches": 3, "limit_val_batches": 2, "accelerator": "cpu"})
    Forecaster(**tiny).fit(frame)
    text = capsys.readouterr().out
    assert "epoch 0 | step 1/3" in text and "finished: max_epochs=1 reached" in text, text
    Forecaster(**tiny).fit(frame, verbose=False)
    text = capsys.readouterr().out
    assert "steps/s" not in text and "max_epochs" not in text, text
