"""SeparationTask: train waveform separators with SI-SNR under PIT."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric, MetricCollection

from omniseq.domains.audio.metrics import pit_si_snr, sdr_improvement, si_snr_improvement
from omniseq.recipes.checkpoints import CheckpointOrigin
from omniseq.recipes.hparams import save_task_hyperparameters
from omniseq.recipes.train_logging import TrainLossLogging

__all__ = ["SeparationTask"]


class SeparationTask(TrainLossLogging, CheckpointOrigin, L.LightningModule):
    """Fit a separator ``(B, T) -> (B, S, T)`` on batches ``{"mixture", "sources"}``.

    Loss: negative permutation-invariant SI-SNR. Validation logs ``val/loss``
    and ``val/si_snri``; test logs ``test/si_snr``, ``test/si_snri`` and
    ``test/sdri`` (dB, averaged over mixtures). A DataModule with several test
    lists (``test_sets``, e.g. ``seen``/``unseen``/``unseen_noise``) gets them
    logged as ``test_<name>/si_snri`` and so on.

    Args:
        backbone: e.g. ``omniseq.backbones.separators.MaskSeparator``.
        lr: Adam learning rate.
        weight_decay: AdamW decoupled weight decay.
        plateau_patience: validation epochs without improvement before the
            learning rate is halved (Conv-TasNet's schedule); 0 disables it.
        val_sdri: also compute SDRi in validation (slower).
    """

    def __init__(
        self,
        backbone: nn.Module,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        plateau_patience: int = 3,
        val_sdri: bool = False,
    ) -> None:
        super().__init__()
        save_task_hyperparameters(self)
        self.backbone = backbone
        # torchmetrics means over mixtures: exact over all processes (val/loss included).
        self.val_metrics = MetricCollection(
            {"loss": MeanMetric(), "si_snr": MeanMetric(), "si_snri": MeanMetric(), "sdri": MeanMetric()}, prefix="val/"
        )
        self.test_metrics = self.val_metrics.clone(prefix="test/")
        self._test_sets: dict[int, MetricCollection] = {}

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        return self.backbone(mixture)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        best, _ = pit_si_snr(self(batch["mixture"]), batch["sources"])
        loss = -best.mean()
        self.log_train_loss(loss)
        return loss

    def _evaluate(self, batch: dict[str, torch.Tensor], metrics: MetricCollection, with_sdr: bool) -> None:
        mixture, sources = batch["mixture"], batch["sources"]
        estimates = self(mixture)
        best, perm = pit_si_snr(estimates, sources)
        metrics["loss"].update(-best)
        metrics["si_snr"].update(best)
        metrics["si_snri"].update(si_snr_improvement(estimates, sources, mixture))
        if with_sdr:
            metrics["sdri"].update(sdr_improvement(estimates, sources, mixture, perm))

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, self.hparams.val_sdri)

    def on_validation_epoch_end(self) -> None:
        values = {k: v.compute() for k, v in self.val_metrics.items() if k != "val/sdri" or self.hparams.val_sdri}
        self.log_dict(values, prog_bar=True)
        self.val_metrics.reset()

    def on_test_start(self) -> None:
        names = getattr(self.trainer.datamodule, "test_sets", None) or ["test"]
        self._test_sets = {
            i: self.test_metrics if name == "test" else self.test_metrics.clone(prefix=f"test_{name}/").to(self.device)
            for i, name in enumerate(names)
        }

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, self._test_sets.get(dataloader_idx, self.test_metrics), True)

    def on_test_epoch_end(self) -> None:
        for metrics in self._test_sets.values() or [self.test_metrics]:
            self.log_dict({k: v.compute() for k, v in metrics.items()}, add_dataloader_idx=False)
            metrics.reset()

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch["mixture"])

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if not self.hparams.plateau_patience:
            return optimizer
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=0.5, patience=self.hparams.plateau_patience
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss"}}
