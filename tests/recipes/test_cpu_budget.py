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


def test_anneal_schedule_is_flat_then_linear_to_the_final_factor():
    budget = CPUTimeBudget(minutes=10, anneal_fraction=0.4, final_lr_factor=0.01)
    assert [budget.lr_factor(60.0 * m) for m in (0, 3, 6)] == [1.0, 1.0, 1.0]
    assert budget.lr_factor(60.0 * 8) == pytest.approx(1.0 - 0.5 * 0.99)
    assert budget.lr_factor(60.0 * 10) == pytest.approx(0.01)
    assert budget.lr_factor(60.0 * 12) == pytest.approx(0.01)
    assert CPUTimeBudget(minutes=10).lr_factor(60.0 * 9.9) == 1.0


def test_annealing_scales_the_optimizer_rate_and_survives_a_resume():
    budget = CPUTimeBudget(minutes=1, anneal_fraction=1.0, final_lr_factor=0.1)
    budget.load_state_dict({"used_seconds": 45.0, "lr_factor": 1.0})  # three quarters spent
    trainer = _fit(budget)
    # Every batch ran with 45 s or more spent, so at most 1 - 0.75 * 0.9 of lr 0.1, and
    # at least the factor for all the time spent by the end.
    factor = trainer.optimizers[0].param_groups[0]["lr"] / 0.1
    assert budget.lr_factor(budget.used_seconds()) <= factor <= 1 - 0.75 * 0.9 + 1e-9
    resumed = CPUTimeBudget(minutes=1, anneal_fraction=1.0, final_lr_factor=0.1)
    resumed.load_state_dict(budget.state_dict())
    assert resumed.state_dict()["lr_factor"] == pytest.approx(factor)


def test_anneal_options_are_checked():
    with pytest.raises(ValueError, match="anneal_fraction must be in"):
        CPUTimeBudget(1, anneal_fraction=1.5)
    with pytest.raises(ValueError, match="final_lr_factor must be in"):
        CPUTimeBudget(1, anneal_fraction=0.5, final_lr_factor=0.0)
