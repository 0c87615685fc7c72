"""Genomics tasks: DNA language-model pretraining and sequence classification."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassMatthewsCorrCoef,
)

from omniseq._files import load_file
from omniseq.backbones.dna import rc_gather_index
from omniseq.domains.genomics import NucleotideTokenizer, mask_tokens
from omniseq.recipes.checkpoints import CheckpointOrigin
from omniseq.recipes.hparams import save_task_hyperparameters
from omniseq.recipes.train_logging import TrainLossLogging

__all__ = ["DNAPretrainTask", "SequenceClassificationTask", "load_backbone_weights", "random_reverse_complement"]


def random_reverse_complement(
    ids: torch.Tensor, complement: torch.Tensor, attention_mask: torch.Tensor | None = None, p: float = 0.5
) -> torch.Tensor:
    """Reverse-complement each row of ``ids (B, L)`` with probability ``p`` (real prefix only)."""
    mask = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask
    rc = complement.to(ids.device)[ids].gather(1, rc_gather_index(mask))
    flip = torch.rand(ids.shape[0], device=ids.device) < p
    return torch.where(flip[:, None], rc, ids)


def _warmup_cosine(optimizer, warmup_steps: int, total_steps: float):
    """Linear warmup then cosine decay to 10%; constant after warmup when the total is unknown."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if not math.isfinite(total_steps) or total_steps <= warmup_steps:
            return 1.0
        progress = min((step - warmup_steps) / (total_steps - warmup_steps), 1.0)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _optimizers(task: L.LightningModule, lr: float, weight_decay: float, warmup_steps: int):
    optimizer = torch.optim.AdamW(task.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    total = float(task.trainer.estimated_stepping_batches) if task._trainer is not None else float("inf")
    scheduler = _warmup_cosine(optimizer, warmup_steps, total)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class DNAPretrainTask(TrainLossLogging, CheckpointOrigin, L.LightningModule):
    """Masked (BERT 15%, 80/10/10) or causal language-model pretraining of a DNA backbone.

    The backbone maps token ids ``(B, L)`` to logits ``(B, L, vocab)`` (``DNAModel``,
    ``DNACNN``). Validation reports the loss on held-out windows and its
    exponential, the perplexity (per masked token for MLM, per next token for CLM);
    the validation masks come from a fixed seed so every evaluation sees the same ones.

    Args:
        backbone: the model.
        objective: ``"mlm"`` or ``"clm"`` (the backbone must then be causal).
        mask_prob: MLM masking rate.
        rc_augment: reverse-complement each training window with probability 1/2.
        tokenizer_mode, k: the tokenizer of the data (for special, mask and complement ids).
        lr, weight_decay, warmup_steps: AdamW with linear warmup and cosine decay.
    """

    def __init__(
        self,
        backbone: nn.Module,
        objective: Literal["mlm", "clm"] = "mlm",
        mask_prob: float = 0.15,
        rc_augment: bool = True,
        tokenizer_mode: Literal["char", "kmer", "byte"] = "char",
        k: int = 6,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        warmup_steps: int = 100,
    ) -> None:
        super().__init__()
        if objective not in ("mlm", "clm"):
            raise ValueError(f"objective must be 'mlm' or 'clm', got {objective!r}")
        if objective == "clm" and not getattr(backbone, "causal", False):
            raise ValueError("objective='clm' needs a causal backbone (DNAModel(causal=True))")
        save_task_hyperparameters(self)
        self.backbone = backbone
        self.tokenizer = NucleotideTokenizer(tokenizer_mode, k=k)
        if getattr(backbone, "vocab_size", self.tokenizer.vocab_size) != self.tokenizer.vocab_size:
            raise ValueError(f"backbone vocab_size {backbone.vocab_size} != tokenizer vocabulary {self.tokenizer.vocab_size}")
        self.register_buffer("complement", self.tokenizer.complement_ids, persistent=False)
        self.register_buffer("random_ids", self.tokenizer.base_ids, persistent=False)
        # Token-weighted loss sums (plain floats: torchmetrics states created under
        # validate()'s inference mode cannot be updated later in fit()).
        self._sums = {"val": [0.0, 0], "test": [0.0, 0]}

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.backbone(ids)

    def _mask(self, ids: torch.Tensor, seeds: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """MLM inputs and targets: from the global RNG, or row by row from fixed ``seeds``."""
        maskable = ids >= self.tokenizer.num_special
        options = (self.tokenizer.mask_id, self.random_ids, self.hparams.mask_prob)
        if seeds is None:
            return mask_tokens(ids, maskable, *options)
        rows = [mask_tokens(ids[i : i + 1], maskable[i : i + 1], *options,
                            torch.Generator(device=ids.device).manual_seed(seed)) for i, seed in enumerate(seeds)]
        inputs, targets = zip(*rows, strict=True)
        return torch.cat(inputs), torch.cat(targets)

    def _loss(self, ids: torch.Tensor, seeds: list[int] | None = None) -> tuple[torch.Tensor, int]:
        """Mean token cross-entropy and the number of predicted tokens."""
        if self.hparams.objective == "clm":
            logits = self.backbone(ids[:, :-1])
            targets = ids[:, 1:]
        else:
            inputs, targets = self._mask(ids, seeds)
            logits = self.backbone(inputs)
        count = int((targets != -100).sum())
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100)
        return loss, count

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        ids = batch["input_ids"]
        if self.hparams.rc_augment:
            ids = random_reverse_complement(ids, self.complement)
        loss, _ = self._loss(ids)
        self.log_train_loss(loss)
        return loss

    def _eval(self, batch: dict[str, torch.Tensor], batch_idx: int, stage: str) -> None:
        ids = batch["input_ids"]
        # Fixed masks per window (by dataset index when the batch has one, else per batch).
        index = batch.get("index")
        seeds = ([10_007 + int(i) for i in index] if index is not None
                 else [10_007 + batch_idx * ids.shape[0] + row for row in range(ids.shape[0])])
        loss, count = self._loss(ids, seeds)
        self._sums[stage][0] += float(loss) * count
        self._sums[stage][1] += count

    def _log_perplexity(self, stage: str) -> None:
        # Token sums of every process added up (a no-op in a single one): exact under DDP.
        sums = torch.tensor(self._sums[stage], dtype=torch.float64, device=self.device)
        total, count = self.trainer.strategy.reduce(sums, reduce_op="sum").tolist()
        loss = torch.tensor(total / max(count, 1), dtype=torch.float32)
        self.log_dict({f"{stage}/loss": loss, f"{stage}/ppl": torch.exp(loss)}, prog_bar=stage == "val")
        self._sums[stage] = [0.0, 0]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval(batch, batch_idx, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_perplexity("val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval(batch, batch_idx, "test")

    def on_test_epoch_end(self) -> None:
        self._log_perplexity("test")

    def configure_optimizers(self):
        return _optimizers(self, self.hparams.lr, self.hparams.weight_decay, self.hparams.warmup_steps)


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> list[str]:
    """Load backbone weights from a Lightning checkpoint (keys ``backbone.*``) or a
    plain state dict; returns the backbone keys that were not in the file."""
    state = load_file(path, what="pretrained checkpoint")
    if not isinstance(state, dict):
        raise ValueError(f"pretrained checkpoint {path}: holds a {type(state).__name__}, not a state dict")
    state = state.get("state_dict", state)
    if any(key.startswith("backbone.") for key in state):
        state = {key.removeprefix("backbone."): v for key, v in state.items() if key.startswith("backbone.")}
    hint = "was it pretrained with the same architecture and settings?"
    try:
        result = backbone.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"{path}: weights do not fit the backbone; {hint}\n{err}") from None
    if result.unexpected_keys or len(result.missing_keys) == len(backbone.state_dict()):
        raise ValueError(
            f"{path}: weights do not fit the backbone (unexpected {result.unexpected_keys[:5]}, "
            f"missing {result.missing_keys[:5]}); {hint}"
        )
    return list(result.missing_keys)


class SequenceClassificationTask(TrainLossLogging, CheckpointOrigin, L.LightningModule):
    """Classify whole sequences from the backbone's pooled embedding (``forward_pooled``).

    Args:
        backbone: ``DNAModel`` or ``DNACNN`` (RC-invariant pooling for PS/Ph).
        num_classes: number of classes.
        pretrained: checkpoint of a ``DNAPretrainTask`` (or a backbone state dict) to start from.
        freeze_backbone: train the head only (linear probe).
        rc_augment: reverse-complement training sequences with probability 1/2.
        tokenizer_mode, k: tokenizer of the data (for the complement table).
        head_dropout, lr, weight_decay, warmup_steps: head and optimiser settings.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 2,
        pretrained: str | None = None,
        freeze_backbone: bool = False,
        rc_augment: bool = False,
        tokenizer_mode: Literal["char", "kmer", "byte"] = "char",
        k: int = 6,
        head_dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 50,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        save_task_hyperparameters(self)
        self.backbone = backbone
        if pretrained:
            load_backbone_weights(backbone, pretrained)
        if freeze_backbone:
            backbone.requires_grad_(False)
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(backbone.pooled_dim, num_classes))
        self.register_buffer("complement", NucleotideTokenizer(tokenizer_mode, k=k).complement_ids, persistent=False)
        metrics = MetricCollection({
            "mcc": MulticlassMatthewsCorrCoef(num_classes),
            "f1": MulticlassF1Score(num_classes, average="macro"),
            "acc": MulticlassAccuracy(num_classes, average="micro"),
        })
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.eval_losses = nn.ModuleDict({"val": MeanMetric(), "test": MeanMetric()})

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.backbone.forward_pooled(ids, attention_mask))

    def _check_labels(self, labels: torch.Tensor) -> None:
        if labels.numel() and (int(labels.max()) >= self.hparams.num_classes or int(labels.min()) < 0):
            raise ValueError(f"labels must be in [0, {self.hparams.num_classes}), got range "
                             f"[{int(labels.min())}, {int(labels.max())}]; set model num_classes to match the data")

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self._check_labels(batch["label"])
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if self.hparams.rc_augment:
            ids = random_reverse_complement(ids, self.complement, mask)
        loss = F.cross_entropy(self(ids, mask), batch["label"])
        self.log_train_loss(loss)
        return loss

    def _eval(self, batch: dict[str, torch.Tensor], metrics: MetricCollection, prefix: str) -> None:
        self._check_labels(batch["label"])
        logits = self(batch["input_ids"], batch["attention_mask"])
        # A torchmetric: its epoch value is the exact sample mean over all processes.
        self.eval_losses[prefix].update(F.cross_entropy(logits, batch["label"]), weight=len(logits))
        self.log(f"{prefix}/loss", self.eval_losses[prefix], prog_bar=True)
        metrics.update(logits, batch["label"])
        self.log_dict(metrics, prog_bar=prefix == "val")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval(batch, self.val_metrics, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval(batch, self.test_metrics, "test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch["input_ids"], batch["attention_mask"]).softmax(-1)

    def configure_optimizers(self):
        return _optimizers(self, self.hparams.lr, self.hparams.weight_decay, self.hparams.warmup_steps)
