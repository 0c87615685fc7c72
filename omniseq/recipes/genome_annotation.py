"""Per-base genome annotation: a DNA backbone with a token-classification head.

Trained on windows labelled from a GFF3 file
(:class:`omniseq.data.genome_annotation.GenomeAnnotationDataModule`); evaluation
reports the per-class F1 over every held-out base (torchmetrics), their macro mean,
accuracy and MCC.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassMatthewsCorrCoef,
)

from omniseq.data.genome_annotation import ANNOTATION_CLASSES, IGNORE_INDEX
from omniseq.recipes.checkpoints import CheckpointOrigin
from omniseq.recipes.genomics import _optimizers, load_backbone_weights
from omniseq.recipes.hparams import save_task_hyperparameters
from omniseq.recipes.train_logging import TrainLossLogging

__all__ = ["GenomeAnnotationTask"]


class GenomeAnnotationTask(TrainLossLogging, CheckpointOrigin, L.LightningModule):
    """Label every base from the backbone's per-token features (``forward_features``).

    The head is a linear layer on the features, which for a Caduceus-PS backbone hold
    both strand halves, so strand-specific classes (``cds_plus`` / ``cds_minus``) are
    learnable.

    Args:
        backbone: ``DNAModel`` or ``DNACNN`` (character tokens).
        class_names: one name per class (default: gene / CDS / intergenic classes of the
            GFF DataModule); their number sets the head's width.
        class_weights: cross-entropy weight per class (None: equal).
        pretrained: checkpoint of a ``DNAPretrainTask`` (or a backbone state dict) to start from.
        freeze_backbone: train the head only (linear probe).
        head_dropout, lr, weight_decay, warmup_steps: head and optimiser settings.
    """

    def __init__(
        self,
        backbone: nn.Module,
        class_names: Sequence[str] = ANNOTATION_CLASSES,
        class_weights: Sequence[float] | None = None,
        pretrained: str | None = None,
        freeze_backbone: bool = False,
        head_dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 50,
    ) -> None:
        super().__init__()
        num_classes = len(class_names)
        if num_classes < 2:
            raise ValueError(f"class_names must name at least 2 classes, got {list(class_names)}")
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(f"class_weights has {len(class_weights)} entries for {num_classes} classes")
        save_task_hyperparameters(self)
        self.backbone, self.class_names = backbone, list(class_names)
        if pretrained:
            load_backbone_weights(backbone, pretrained)
        if freeze_backbone:
            backbone.requires_grad_(False)
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(backbone.feature_dim, num_classes))
        weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)
        options = {"num_classes": num_classes, "ignore_index": IGNORE_INDEX}
        self.f1 = nn.ModuleDict({s: MulticlassF1Score(average=None, **options) for s in ("val", "test")})
        self.acc = nn.ModuleDict({s: MulticlassAccuracy(average="micro", **options) for s in ("val", "test")})
        self.mcc = nn.ModuleDict({s: MulticlassMatthewsCorrCoef(**options) for s in ("val", "test")})

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, L, num_classes)``."""
        return self.head(self.backbone.forward_features(ids))

    def _check_labels(self, labels: torch.Tensor) -> None:
        valid = labels[labels != IGNORE_INDEX]
        if valid.numel() and (int(valid.max()) >= len(self.class_names) or int(valid.min()) < 0):
            raise ValueError(f"labels must be in [0, {len(self.class_names)}) or {IGNORE_INDEX}, got range "
                             f"[{int(valid.min())}, {int(valid.max())}]; class_names must match the data")

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_labels(batch["labels"])
        logits = self(batch["input_ids"])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1),
                               weight=self.class_weights, ignore_index=IGNORE_INDEX)
        return loss, logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch)
        self.log_train_loss(loss)
        return loss

    def _eval(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        loss, logits = self._loss(batch)
        preds, target = logits.argmax(-1).reshape(-1), batch["labels"].reshape(-1)
        for metric in (self.f1[stage], self.acc[stage], self.mcc[stage]):
            metric.update(preds, target)
        self.log(f"{stage}/loss", loss, sync_dist=True)

    def _log_epoch(self, stage: str) -> None:
        f1 = self.f1[stage].compute()
        values = {f"{stage}/f1_{name}": f1[i] for i, name in enumerate(self.class_names)}
        values.update({f"{stage}/f1_macro": f1.mean(), f"{stage}/acc": self.acc[stage].compute(),
                       f"{stage}/mcc": self.mcc[stage].compute()})
        self.log_dict(values, prog_bar=stage == "val")
        for metric in (self.f1[stage], self.acc[stage], self.mcc[stage]):
            metric.reset()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch["input_ids"]).softmax(-1)

    def configure_optimizers(self):
        return _optimizers(self, self.hparams.lr, self.hparams.weight_decay, self.hparams.warmup_steps)
