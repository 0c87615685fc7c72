"""SpatiotemporalTask: gridded forecasting with cells without data masked out."""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanAbsoluteError, MeanMetric, MeanSquaredError, MetricCollection

from omniseq.recipes.checkpoints import CheckpointOrigin
from omniseq.recipes.hparams import save_task_hyperparameters

__all__ = ["SpatiotemporalTask", "masked_values"]


def masked_values(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The entries of ``pred``/``target`` ``(B, T, C, H, W)`` on cells where ``mask (B, H, W)`` is set."""
    if pred.shape != target.shape or pred.ndim != 5:
        raise ValueError(
            f"pred and target must both have shape (B, T, C, H, W), got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if mask.shape != (pred.shape[0], *pred.shape[-2:]):
        raise ValueError(f"mask must have shape ({pred.shape[0]}, {pred.shape[3]}, {pred.shape[4]}), got {tuple(mask.shape)}")
    keep = mask.bool()[:, None, None].expand_as(pred)
    return pred[keep], target[keep]


class SpatiotemporalTask(CheckpointOrigin, L.LightningModule):
    """Fit a frame forecaster ``(B, T, C, H, W) -> (B, pred_len, C_out, H, W)``.

    Loss and metrics use only cells whose ``mask`` is 1 (land in WFDE5). Metrics,
    in normalised units: ``mse``/``mae`` over every lead time, ``mse_last`` at the
    last lead time (the 24 h horizon in the 24 h recipe).

    Args:
        backbone: e.g. ``omniseq.backbones.convs5.ConvS5`` or ``ConvLSTM``.
        lr, weight_decay: AdamW settings.
        loss: ``mse`` or ``mae`` on the masked cells.
        warmup_steps: linear warm-up, then cosine decay to 0 over ``max_steps`` of the trainer.
    """

    def __init__(
        self,
        backbone: nn.Module,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        loss: Literal["mse", "mae"] = "mse",
        warmup_steps: int = 50,
    ) -> None:
        super().__init__()
        if loss not in ("mse", "mae"):
            raise ValueError(f"loss must be 'mse' or 'mae', got {loss!r}")
        save_task_hyperparameters(self)
        self.backbone = backbone
        self.criterion = nn.MSELoss() if loss == "mse" else nn.L1Loss()
        metrics = MetricCollection({"mse": MeanSquaredError(), "mae": MeanAbsoluteError()})
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.test_last = MeanSquaredError()
        self.val_loss = MeanMetric()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def _shared(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pred = self(batch["x"])
        p, t = masked_values(pred, batch["y"], batch["mask"])
        return pred, p, t

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        _, p, t = self._shared(batch)
        loss = self.criterion(p, t)
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        _, p, t = self._shared(batch)
        # A torchmetric weighted by masked cells: the exact mean over all cells of all processes.
        self.val_loss.update(self.criterion(p, t), weight=p.numel())
        self.log("val/loss", self.val_loss, prog_bar=True)
        self.val_metrics.update(p, t)
        self.log_dict(self.val_metrics)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        pred, p, t = self._shared(batch)
        self.test_metrics.update(p, t)
        self.log_dict(self.test_metrics)
        last_p, last_t = masked_values(pred[:, -1:], batch["y"][:, -1:], batch["mask"])
        self.test_last.update(last_p, last_t)
        self.log("test/mse_last", self.test_last)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch["x"])

    def configure_optimizers(self):
        decay, no_decay = [], []
        for param in self.parameters():
            (no_decay if getattr(param, "_no_weight_decay", False) or param.ndim <= 1 else decay).append(param)
        optimizer = torch.optim.AdamW(
            [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr, weight_decay=self.hparams.weight_decay,
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1) if self._trainer is not None else 1
        warmup = min(self.hparams.warmup_steps, max(total - 1, 0))

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1 + torch.cos(torch.tensor(torch.pi * min(progress, 1.0))).item())

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
