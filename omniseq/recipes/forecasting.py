"""ForecastingTask: training logic for multivariate forecasting backbones."""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanAbsoluteError, MeanMetric, MeanSquaredError, MetricCollection

from omniseq.recipes.checkpoints import CheckpointOrigin
from omniseq.recipes.hparams import save_task_hyperparameters
from omniseq.recipes.train_logging import TrainLossLogging

LossName = Literal["mse", "mae", "huber"]
_LOSSES = {"mse": nn.MSELoss, "mae": nn.L1Loss, "huber": nn.HuberLoss}


class ForecastingTask(TrainLossLogging, CheckpointOrigin, L.LightningModule):
    """Fit a forecasting backbone ``(x (B, L, C), x_mark) -> (B, H, C)`` with MSE/MAE metrics.

    Metrics are computed in the DataModule's normalised space, the convention of
    the long-horizon forecasting literature (Informer, iTransformer, TSMixer).

    Args:
        backbone: e.g. ``omniseq.backbones.itransformer.ITransformer``.
        lr: peak learning rate of Adam.
        weight_decay: decoupled weight decay (AdamW).
        loss: training loss.
        lr_decay: per-epoch multiplicative decay. Epochs 1 and 2 run at ``lr``, epoch
            k > 2 at ``lr * lr_decay ** (k - 2)``: with 0.5 this is ``lradj type1`` of
            the Time-Series-Library and iTransformer code, whose first halving comes
            after the second epoch (it is set after each epoch for epoch + 1).
    """

    def __init__(
        self,
        backbone: nn.Module,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        loss: LossName = "mse",
        lr_decay: float = 0.5,
    ) -> None:
        super().__init__()
        if loss not in _LOSSES:
            raise ValueError(f"loss must be one of {sorted(_LOSSES)}, got {loss!r}")
        save_task_hyperparameters(self)
        self.backbone = backbone
        self.criterion = _LOSSES[loss]()
        metrics = MetricCollection({"mse": MeanSquaredError(), "mae": MeanAbsoluteError()})
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.val_loss = MeanMetric()

    def forward(self, x: torch.Tensor, x_mark: torch.Tensor | None = None) -> torch.Tensor:
        return self.backbone(x, x_mark)

    def _predict_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pred = self(batch["x"], batch.get("x_mark"))
        # "MS" forecasts one target from many inputs; the DataModule puts the
        # target last, so the prediction's trailing channels are compared.
        if "y" in batch:
            pred = pred[..., -batch["y"].shape[-1] :]
        return pred

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.criterion(self._predict_batch(batch), batch["y"])
        self.log_train_loss(loss)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        pred = self._predict_batch(batch)
        # A torchmetric: its epoch value is the exact sample mean over all processes.
        self.val_loss.update(self.criterion(pred, batch["y"]), weight=len(pred))
        self.log("val/loss", self.val_loss, prog_bar=True)
        self.val_metrics.update(pred.flatten(), batch["y"].flatten())
        self.log_dict(self.val_metrics)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        pred = self._predict_batch(batch)
        self.test_metrics.update(pred.flatten(), batch["y"].flatten())
        self.log_dict(self.test_metrics)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._predict_batch(batch)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        decay = self.hparams.lr_decay
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: decay ** max(epoch - 1, 0))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
