"""SpatiotemporalTask: gridded forecasting with cells without data masked out."""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanAbsoluteError, MeanMetric, MeanSquaredError, MetricCollection

from omniseq.recipes.checkpoints import CheckpointOrigin
from omniseq.recipes.hparams import save_task_hyperparameters
from omniseq.recipes.train_logging import TrainLossLogging

__all__ = ["SpatiotemporalTask", "lead_table", "masked_by_lead", "masked_values", "register_config_resolvers"]
BASELINES = ("model", "persistence", "climatology")


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


def _grid_channels(data_args, which: str = "inputs") -> int:
    from omegaconf import OmegaConf

    from omniseq.data.gridded import grid_channel_count

    try:
        return grid_channel_count(OmegaConf.to_container(data_args, resolve=True), which)
    except (OSError, ValueError) as err:  # omegaconf would bury the reason under its own traceback
        raise SystemExit(f"omniseq: cannot open the gridded data to count its channels: {err}") from None


def register_config_resolvers() -> None:
    """``${grid_channels:${data.init_args}}`` (and ``...,targets}``) in a recipe: the input (target)
    channel count of the GriddedDataModule those arguments build, so backbones follow the data."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("grid_channels"):
        OmegaConf.register_resolver("grid_channels", _grid_channels)


def masked_by_lead(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, T)`` entries of ``pred``/``target`` ``(B, T, C, H, W)`` on the masked cells, one column per lead."""
    masked_values(pred, target, mask)  # shape checks
    keep = mask.bool()[:, None].expand(pred.shape[0], *pred.shape[2:])  # (B, C, H, W)
    return pred.permute(0, 2, 3, 4, 1)[keep], target.permute(0, 2, 3, 4, 1)[keep]


def lead_table(scores: dict[str, torch.Tensor], step: str = "step") -> str:
    """Per-lead MSE of the model and the baselines as a text table (the last row: all leads)."""
    names = list(scores)
    lines = [f"{'lead':>6} " + " ".join(f"{n:>12}" for n in names)]
    for k in range(len(next(iter(scores.values())))):
        lines.append(f"{f'+{k + 1}':>6} " + " ".join(f"{scores[n][k].item():12.4f}" for n in names))
    lines.append(f"{'all':>6} " + " ".join(f"{scores[n].mean().item():12.4f}" for n in names))
    return f"test MSE per lead time ({step}s ahead; normalised units, masked cells):\n" + "\n".join(lines)


class SpatiotemporalTask(TrainLossLogging, CheckpointOrigin, L.LightningModule):
    """Fit a frame forecaster ``(B, T, C, H, W) -> (B, pred_len, C_out, H, W)``.

    Loss and metrics use only cells whose ``mask`` is 1 (land in WFDE5). Metrics,
    in normalised units: ``mse``/``mae`` over every lead time, ``mse_last`` at the
    last lead time (the 24 h horizon in the 24 h recipe). ``test`` also scores two
    baselines, persistence (the last input frame repeated) and climatology (the
    training split's diurnal mean, from the DataModule), logs ``mse_persistence`` and
    ``mse_climatology``, and prints the MSE of all three per lead time.

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
        self.test_baselines = nn.ModuleDict({n: MeanSquaredError() for n in BASELINES[1:]})
        self.val_loss = MeanMetric()
        self.lead_metrics: nn.ModuleDict | None = None  # per-lead MSE, sized at the first test batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def _shared(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pred = self(batch["x"])
        p, t = masked_values(pred, batch["y"], batch["mask"])
        return pred, p, t

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        _, p, t = self._shared(batch)
        loss = self.criterion(p, t)
        self.log_train_loss(loss)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        _, p, t = self._shared(batch)
        # A torchmetric weighted by masked cells: the exact mean over all cells of all processes.
        self.val_loss.update(self.criterion(p, t), weight=p.numel())
        self.log("val/loss", self.val_loss, prog_bar=True)
        self.val_metrics.update(p, t)
        self.log_dict(self.val_metrics)

    def on_test_start(self) -> None:
        trainer = self.trainer
        if trainer.ckpt_path is None and trainer.global_step == 0 and not trainer.fast_dev_run:
            raise ValueError(
                "SpatiotemporalTask: testing an untrained model; pass the checkpoint to test, e.g. `omniseq test "
                "--config <recipe> --ckpt_path runs/<recipe>/checkpoints/best.ckpt` (or fit first)"
            )

    def on_test_epoch_start(self) -> None:
        self.lead_metrics = None

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        pred, p, t = self._shared(batch)
        self.test_metrics.update(p, t)
        self.log_dict(self.test_metrics)
        last_p, last_t = masked_values(pred[:, -1:], batch["y"][:, -1:], batch["mask"])
        self.test_last.update(last_p, last_t)
        self.log("test/mse_last", self.test_last)
        y, num_out = batch["y"], batch["y"].shape[2]
        forecasts = {"model": pred, "persistence": batch["x"][:, -1:, :num_out].expand_as(y)}
        if "climatology" in batch:
            forecasts["climatology"] = batch["climatology"]
        if self.lead_metrics is None:
            self.lead_metrics = nn.ModuleDict(
                {n: MeanSquaredError(num_outputs=y.shape[1]) for n in forecasts}).to(self.device)
        for name, forecast in forecasts.items():
            by_lead_p, by_lead_t = masked_by_lead(forecast, y, batch["mask"])
            self.lead_metrics[name].update(by_lead_p, by_lead_t)
            if name != "model":
                self.test_baselines[name].update(by_lead_p.flatten(), by_lead_t.flatten())
                self.log(f"test/mse_{name}", self.test_baselines[name])

    def on_test_epoch_end(self) -> None:
        if self.lead_metrics is None:
            return
        self.lead_scores = {name: metric.compute().detach().cpu() for name, metric in self.lead_metrics.items()}
        if self.trainer.is_global_zero:
            print(lead_table(self.lead_scores), flush=True)

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
