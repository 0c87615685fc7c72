"""SegmentationTask: CE + Dice training, sliding-window evaluation, overlay PNGs on predict."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassJaccardIndex,
)

from omniseq._files import atomic_path
from omniseq.domains.vision.inference import sliding_window_inference
from omniseq.recipes.checkpoints import CheckpointOrigin
from omniseq.recipes.hparams import save_task_hyperparameters

__all__ = ["SegmentationTask", "dice_loss", "save_overlay"]


def dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss averaged over classes; ignored pixels take no part."""
    num_classes = logits.shape[1]
    valid = target != ignore_index
    probs = logits.softmax(1) * valid[:, None]
    onehot = F.one_hot(target.clamp(0, num_classes - 1), num_classes).movedim(-1, 1) * valid[:, None]
    dims = (0, *range(2, logits.ndim))
    inter = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    return 1 - ((2 * inter + eps) / (total + eps)).mean()


def save_overlay(image: torch.Tensor, mask: torch.Tensor, path: str | Path, alpha: float = 0.45) -> None:
    """Grayscale image (first channel, min-max scaled) with class > 0 pixels tinted; 3D -> middle slice."""
    from PIL import Image

    if mask.ndim == 3:
        mid = mask.shape[0] // 2
        image, mask = image[:, mid], mask[mid]
    gray = image[0].float()
    gray = (gray - gray.min()) / (gray.max() - gray.min()).clamp_min(1e-6)
    rgb = gray[..., None].repeat(1, 1, 3).numpy()
    colours = np.array([[0, 0, 0], [1, 0.1, 0.1], [0.1, 0.9, 0.1], [0.2, 0.4, 1], [1, 0.9, 0.1]])
    m = mask.numpy()
    tint = colours[np.clip(m, 0, len(colours) - 1)]
    on = (m > 0)[..., None]
    rgb = np.where(on, (1 - alpha) * rgb + alpha * tint, rgb)
    with atomic_path(path) as tmp:  # a crash mid-write leaves no half-written PNG
        Image.fromarray((rgb * 255).astype(np.uint8)).save(tmp)


class SegmentationTask(CheckpointOrigin, L.LightningModule):
    """Per-pixel classification with cross-entropy + Dice and torchmetrics mIoU / Dice / accuracy.

    Args:
        backbone: a network ``(B, C, *S) -> (B, K, *S)``, e.g. ``omniseq.domains.vision.SegmentationNet``.
        num_classes: K.
        lr, weight_decay, warmup_steps: AdamW with linear warm-up then cosine decay over the run.
        dice_weight: weight of the Dice term.
        ignore_index: mask value excluded from loss and metrics.
        window: sliding-window size for val/test/predict (None = whole input at once).
        overlap: sliding-window overlap fraction.
        predict_dir: where ``predict`` writes overlay PNGs (None: not written).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 2,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 20,
        dice_weight: float = 1.0,
        ignore_index: int = 255,
        window: Sequence[int] | None = None,
        overlap: float = 0.25,
        predict_dir: str | None = None,
    ) -> None:
        super().__init__()
        save_task_hyperparameters(self)
        self.backbone = backbone
        self.num_classes, self.ignore_index = num_classes, ignore_index
        metrics = MetricCollection({
            "miou": MulticlassJaccardIndex(num_classes, ignore_index=ignore_index),
            "dice": MulticlassF1Score(num_classes, average="macro", ignore_index=ignore_index),
            "pixel_acc": MulticlassAccuracy(num_classes, average="micro", ignore_index=ignore_index),
        })
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        # Per-class Dice (class 1 = membranes on ISBI): F1 over pixels equals Dice.
        self.val_class_dice = MulticlassF1Score(num_classes, average="none", ignore_index=ignore_index)
        self.test_class_dice = MulticlassF1Score(num_classes, average="none", ignore_index=ignore_index)
        self.eval_losses = nn.ModuleDict({"val": MeanMetric(), "test": MeanMetric()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a whole image / volume, by sliding window when ``window`` is set."""
        window = self.hparams.window
        if window is None:
            return self(x)
        return sliding_window_inference(self, x, window, self.hparams.overlap)

    def loss(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, mask, ignore_index=self.ignore_index)
        return ce + self.hparams.dice_weight * dice_loss(logits, mask, self.ignore_index)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch["image"]), batch["mask"])
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)
        return loss

    def _evaluate(self, batch: dict, metrics: MetricCollection, class_dice, prefix: str) -> None:
        logits = self.infer(batch["image"])
        # A torchmetric: its epoch value is the exact sample mean over all processes.
        self.eval_losses[prefix].update(self.loss(logits, batch["mask"]), weight=len(logits))
        self.log(f"{prefix}/loss", self.eval_losses[prefix], prog_bar=True)
        pred = logits.argmax(1)
        metrics.update(pred, batch["mask"])
        class_dice.update(pred, batch["mask"])
        self.log_dict(metrics, batch_size=1)

    def _log_class_dice(self, class_dice, prefix: str) -> None:
        for k, value in enumerate(class_dice.compute()):
            self.log(f"{prefix}/dice_class{k}", value)
        class_dice.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, self.val_class_dice, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_class_dice(self.val_class_dice, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, self.test_class_dice, "test")

    def on_test_epoch_end(self) -> None:
        self._log_class_dice(self.test_class_dice, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images = batch["image"]
        if not torch.isfinite(images).all():  # NaN logits would give a meaningless mask, silently
            first = tuple(int(i) for i in (~torch.isfinite(images)).nonzero()[0])
            raise ValueError(
                f"SegmentationTask.predict: batch {batch_idx} has NaN or infinite pixel values "
                f"(first at (batch, channel, ...) index {first}); images must hold finite numbers"
            )
        masks = self.infer(images).argmax(1)
        if self.hparams.predict_dir:
            out = Path(self.hparams.predict_dir)
            out.mkdir(parents=True, exist_ok=True)
            for j, (image, mask) in enumerate(zip(batch["image"].cpu(), masks.cpu(), strict=True)):
                index = int(batch["index"][j]) if "index" in batch else batch_idx
                save_overlay(image, mask, out / f"overlay_{index:04d}.png")
        return masks

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1) if self.trainer else 1000
        warmup = min(self.hparams.warmup_steps, total // 2)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
