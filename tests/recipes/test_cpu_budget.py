"""CPUTimeBudget: the CPU-time training budget of the benchmark recipes."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from omniseq.recipes.callbacks import CPUTimeBudget


class _Regression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
        return torch.utils.data.DataLoader(data, batch_size=4)


def _fit(budget: CPUTimeBudget) -> L.Trainer:
    trainer = L.Trainer(max_epochs=3, callbacks=[budget], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(_Regression())
    return trainer


def test_budget_stops_training_after_the_step_that_spends_it():
    budget = CPUTimeBudget(minutes=1e-9)
    trainer = _fit(budget)
    assert trainer.global_step == 1 and budget.used_seconds() > 0


def test_an_unspent_budget_lets_training_finish():
    trainer = _fit(CPUTimeBudget(minutes=60))
    assert trainer.global_step == 3 * 16


def test_time_spent_before_a_resume_counts_against_the_budget():
    spent = CPUTimeBudget(minutes=1)
    spent.load_state_dict({"used_seconds": 60.0})  # as restored from a checkpoint
    assert spent.used_seconds() >= 60.0
    trainer = _fit(spent)
    assert trainer.global_step == 1
    state = spent.state_dict()
    fresh = CPUTimeBudget(minutes=1)
    fresh.load_state_dict(state)
    assert fresh.used_seconds() == state["used_seconds"] > 60.0


def test_budget_must_be_positive():
    with pytest.raises(ValueError, match="minutes must be positive"):
        CPUTimeBudget(0)
