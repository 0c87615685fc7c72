"""SegmentationTask: CE + Dice training, sliding-window evaluation, the training normalisation
stored with the weights, and ``OverlayWriter`` for overlay PNGs (with a class legend) on predict."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassJaccardIndex,
)

from omniseq._files import atomic_path
from omniseq.domains.vision.inference import sliding_window_inference
from omniseq.recipes.checkpoints import CheckpointOrigin, read_checkpoint
from omniseq.recipes.hparams import save_task_hyperparameters
from omniseq.recipes.train_logging import TrainLossLogging

__all__ = ["OverlayWriter", "SegmentationTask", "class_colours", "dice_loss", "follow_data", "save_overlay"]

PRETRAINED_OPTIONS = ("pretrained", "pretrained_cfg_overlay")
# Distinct colours for the first classes (then golden-angle hues): class 0 is coloured too.
BASE_COLOURS = np.array([
    [0.12, 0.47, 0.71], [1.0, 0.5, 0.05], [0.17, 0.63, 0.17], [0.84, 0.15, 0.16], [0.58, 0.4, 0.74],
    [0.55, 0.34, 0.29], [0.89, 0.47, 0.76], [0.5, 0.5, 0.5], [0.74, 0.74, 0.13], [0.09, 0.75, 0.81],
])


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


def class_colours(num_classes: int) -> np.ndarray:
    """``(num_classes, 3)`` RGB in [0, 1], one distinct colour per class (class 0 included)."""
    import colorsys

    extra = [colorsys.hsv_to_rgb((k * 0.618034) % 1.0, 0.75, 0.95) for k in range(max(num_classes - 10, 0))]
    return np.concatenate([BASE_COLOURS, np.asarray(extra).reshape(-1, 3)])[:num_classes]


def class_labels(num_classes: int, class_names: Sequence[str] | None) -> list[str]:
    """``"k name"`` per class (``"k"`` without names)."""
    names = list(class_names) if class_names else [""] * num_classes
    return [f"{k} {name}".strip() for k, name in enumerate(names)]


def display_image(image: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` -> ``(H, W, 3)`` in [0, 1] (RGB as is, otherwise the first channel), min-max scaled."""
    pixels = image[:3] if image.shape[0] == 3 else image[:1].expand(3, *image.shape[1:])
    pixels = pixels.float()
    pixels = (pixels - pixels.min()) / (pixels.max() - pixels.min()).clamp_min(1e-6)
    return pixels.movedim(0, -1).numpy()


def save_overlay(
    image: torch.Tensor, mask: torch.Tensor, path: str | Path, num_classes: int | None = None,
    class_names: Sequence[str] | None = None, alpha: float = 0.45,
) -> None:
    """The image (``(C, *S)``; 3D -> middle slice) with every class tinted its colour, at its own
    resolution, above a legend of all classes. Written atomically."""
    from PIL import Image, ImageDraw, ImageFont

    if mask.ndim == 3:
        mid = mask.shape[0] // 2
        image, mask = image[:, mid], mask[mid]
    num_classes = num_classes or len(class_names or []) or int(mask.max()) + 1
    colours = class_colours(num_classes)
    m = mask.numpy().clip(0, num_classes - 1)
    rgb = (1 - alpha) * display_image(image) + alpha * colours[m]
    labels = class_labels(num_classes, class_names)
    font = ImageFont.load_default()
    row = 14
    text_width = max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(t, font=font)) for t in labels)
    width = max(rgb.shape[1], text_width + 22)
    canvas = Image.new("RGB", (width, rgb.shape[0] + row * num_classes + 4), (255, 255, 255))
    canvas.paste(Image.fromarray((rgb * 255).round().astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, label in enumerate(labels):
        top = rgb.shape[0] + 2 + row * k
        draw.rectangle((2, top + 1, 13, top + row - 2), fill=tuple(int(c * 255) for c in colours[k]))
        draw.text((18, top), label, fill=(0, 0, 0), font=font)
    with atomic_path(path) as tmp:  # a crash mid-write leaves no half-written PNG
        canvas.save(tmp)


class OverlayWriter(BasePredictionWriter):
    """Writes ``<output_dir>/<input name>.png`` overlays during ``predict``.

    Args:
        output_dir: default ``<trainer.default_root_dir>/overlays`` of the predict run
            (not of the run that trained the checkpoint).
        overwrite: replace existing overlays; otherwise an existing file is an error,
            checked before anything is predicted.
    """

    def __init__(self, output_dir: str | None = None, overwrite: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.output_dir, self.overwrite = output_dir, overwrite

    def folder(self, trainer: L.Trainer) -> Path:
        return Path(self.output_dir) if self.output_dir else Path(trainer.default_root_dir) / "overlays"

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = self.folder(trainer)
        for loader in trainer.predict_dataloaders if isinstance(trainer.predict_dataloaders, list) \
                else [trainer.predict_dataloaders]:
            names = list(getattr(loader.dataset, "names", []))
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise ValueError(f"OverlayWriter: inputs {repeated[:5]} share a name; their overlays would collide")
            existing = [str(folder / f"{n}.png") for n in names if (folder / f"{n}.png").exists()]
            if existing and not self.overwrite:
                raise FileExistsError(
                    f"OverlayWriter: {len(existing)} overlay(s) already exist, e.g. {existing[0]}; predict into "
                    "another --trainer.default_root_dir, delete them, or set OverlayWriter's overwrite: true"
                )

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        names = batch.get("name") or [f"overlay_{i:04d}" for i in batch_indices]
        for image, mask, name in zip(batch["image"].cpu(), prediction.cpu(), names, strict=True):
            path = self.folder(trainer) / f"{name}.png"
            if path.exists() and not self.overwrite:
                raise FileExistsError(f"OverlayWriter: {path} already exists; set overwrite: true to replace it")
            save_overlay(image, mask, path, pl_module.num_classes, pl_module.class_names)


def check_data_fits_model(task: SegmentationTask, data: object, stage: str) -> None:
    """Refuse a DataModule whose classes, ignore index, channels or (at fit) crop differ from the model's."""
    found = []
    for name, model_value in (("num_classes", task.num_classes), ("ignore_index", task.ignore_index),
                              ("class_names", task.class_names), ("in_chans", task.pixel_mean.numel())):
        data_value = getattr(data, name, None)
        if data_value is not None and model_value is not None and data_value != model_value:
            found.append(f"{name}: data {data_value}, model {model_value}")
    crop, window = getattr(data, "crop_size", None), task.hparams.window
    if stage == "fit" and crop is not None and window is not None and tuple(window) != tuple(crop):
        found.append(f"window {tuple(window)} vs crop_size {tuple(crop)}")
    if found:
        raise ValueError(
            f"the segmentation data and model disagree ({'; '.join(found)}). Give classes, ignore_index and "
            "crop_size once under data: the omniseq CLI fills the model from them. A checkpoint keeps what it "
            "was trained with, so test or predict it on images with the same channels and classes"
        )


def _get(namespace: Any, key: str, default: Any = None) -> Any:
    return namespace.get(key, default) if hasattr(namespace, "get") else getattr(namespace, key, default)


def follow_data(config: Any, subcommand: str | None) -> None:
    """Fill a SegmentationTask config from its SegmentationDataModule config (LightningCLI, before
    instantiation): classes, class names and ignore index; the backbone's ``in_chans`` (read from the
    first training image) and ``num_classes``; ``window`` and 2D ``img_size`` from ``crop_size``.

    A checkpoint's own settings are kept under test/predict ``--ckpt_path`` (``SegmentationTask.setup``
    then checks the data against them). An explicit ``window`` or ``img_size`` other than the crop is an error.
    """
    from omniseq.data.segmentation import SegmentationDataModule

    model, data = _get(config, "model"), _get(config, "data")
    if data is None or model is None or not _is_subclass(_get(data, "class_path"), SegmentationDataModule):
        return
    data_args, args = _get(data, "init_args"), _get(model, "init_args")
    if _get(config, "ckpt_path"):
        _skip_pretrained(_get(_get(args, "backbone"), "init_args"))
    if subcommand in ("test", "predict", "validate") and _get(config, "ckpt_path"):
        # The model is the checkpoint's: the data takes its classes where it states none.
        count, names = _get(data_args, "num_classes"), _get(data_args, "class_names")
        if names is None and count in (None, args.num_classes):
            names = args.class_names
        data_args.class_names = names
        data_args.num_classes = count if count is not None else len(names) if names else args.num_classes
        return
    dm = SegmentationDataModule(**_plain(data_args))
    # Both resolved in the config, so the hparams Lightning logs for data and model agree.
    data_args.num_classes, data_args.class_names = dm.num_classes, dm.class_names
    args.num_classes, args.ignore_index, args.class_names = dm.num_classes, dm.ignore_index, dm.class_names
    crop = list(dm.crop_size)
    window = _get(args, "window")
    if window is not None and list(window) != crop:
        raise ValueError(f"model window {list(window)} differs from data crop_size {crop}; the window follows "
                         "the crop, so drop model.window (or make it equal)")
    args.window = crop
    backbone = _get(_get(args, "backbone"), "init_args")
    if backbone is None or _get(backbone, "in_chans", "absent") == "absent":
        return
    backbone.num_classes = dm.num_classes
    try:
        backbone.in_chans = dm.probe_channels()
    except FileNotFoundError:
        pass  # data not there (yet): building the config still works, and fit names the missing folder
    options = dict(_plain(_get(backbone, "backbone_options")) or {})
    if "img_size" in options:
        given = [options["img_size"]] * len(crop) if isinstance(options["img_size"], int) else list(options["img_size"])
        if given[-2:] != crop[-2:] or (len(given) == len(crop) and given != crop):
            raise ValueError(f"backbone_options img_size {options['img_size']} differs from data crop_size {crop}; "
                             "img_size follows the crop, so drop it (or make it equal)")
    elif len(crop) == 2:
        options["img_size"] = crop[0] if crop[0] == crop[1] else crop
        backbone.backbone_options = options


def _skip_pretrained(backbone: Any) -> None:
    """A checkpoint holds the fine-tuned weights: the pretrained file it started from is not read
    again (it may be gone, or offline)."""
    options = _plain(_get(backbone, "backbone_options")) if backbone is not None else None
    if options and any(k in options for k in PRETRAINED_OPTIONS):
        backbone.backbone_options = {k: v for k, v in options.items() if k not in PRETRAINED_OPTIONS}


def _plain(value: Any) -> Any:
    return value.as_dict() if hasattr(value, "as_dict") else value


def _is_subclass(class_path: str | None, cls: type) -> bool:
    import importlib

    module, _, name = (class_path or "").rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(found, type) and issubclass(found, cls)


class SegmentationTask(TrainLossLogging, CheckpointOrigin, L.LightningModule):
    """Per-pixel classification with cross-entropy + Dice and torchmetrics mIoU / Dice / accuracy.

    The per-channel mean and std of the training images (from the DataModule, at fit)
    are buffers of the task: every checkpoint stores them, and test, predict and
    ``Segmenter.from_checkpoint`` apply them to raw (``scale_pixels``) images.

    Args:
        backbone: a network ``(B, C, *S) -> (B, K, *S)``, e.g. ``omniseq.domains.vision.SegmentationNet``.
        num_classes, ignore_index, class_names: follow the DataModule (the CLI fills them in).
        lr, weight_decay, warmup_steps: AdamW with linear warm-up then cosine decay over the run.
        dice_weight: weight of the Dice term.
        window: sliding-window size for val/test/predict (the CLI sets the training crop;
            None = whole input at once). Inputs smaller than it are padded.
        overlap: sliding-window overlap fraction.
        predict_dir: no longer used (``OverlayWriter`` writes overlays); read from old checkpoints.
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
        class_names: list[str] | None = None,
        window: Sequence[int] | None = None,
        overlap: float = 0.25,
        predict_dir: str | None = None,
    ) -> None:
        super().__init__()
        save_task_hyperparameters(self)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}")
        if predict_dir is not None:
            rank_zero_warn("SegmentationTask: predict_dir is no longer used; OverlayWriter writes the overlays "
                           "under the predict run's default_root_dir")
        self.backbone = backbone
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.class_names = list(class_names) if class_names else None
        channels = int(getattr(backbone, "in_chans", 1))
        self.register_buffer("pixel_mean", torch.zeros(channels))
        self.register_buffer("pixel_std", torch.ones(channels))
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

    # -- normalisation and inference -------------------------------------------------

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (x - self.pixel_mean.view(shape)) / self.pixel_std.view(shape)

    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        if mean.shape != self.pixel_mean.shape:
            raise ValueError(
                f"the training images have {mean.numel()} channel(s) but the model takes {self.pixel_mean.numel()} "
                "(in_chans); in_chans follows the images under the CLI, else set it to the images' channels"
            )
        self.pixel_mean.copy_(mean)
        self.pixel_std.copy_(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of raw (``scale_pixels``) images: the stored normalisation is applied here."""
        return self.backbone(self.normalize(x))

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a whole raw image / volume of any size: normalised, padded up to ``window``
        where smaller (with the mean), by sliding window when ``window`` is set."""
        window = self.hparams.window
        z = self.normalize(x)
        if window is None:
            return self.backbone(z)
        spatial = z.shape[2:]
        pad = [p for s, w in zip(reversed(spatial), reversed(window), strict=True) for p in (0, max(int(w) - s, 0))]
        logits = sliding_window_inference(self.backbone, F.pad(z, pad), window, self.hparams.overlap)
        return logits[(slice(None), slice(None), *(slice(0, s) for s in spatial))]

    # -- steps ---------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        data = self.trainer.datamodule if self.trainer is not None else None
        if data is None:
            return
        check_data_fits_model(self, data, stage)
        if stage == "fit" and getattr(data, "mean", None) is not None:
            self.set_normalization(data.mean.to(self.pixel_mean), data.std.to(self.pixel_std))

    follow_data = staticmethod(follow_data)  # the CLI's hook: the config follows the DataModule

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        """Lightning's loader, without reading the pretrained weights file the fit started from
        (the checkpoint holds the fine-tuned weights; that file may be gone or offline)."""
        if "backbone" not in kwargs and isinstance(checkpoint_path, (str, Path)) and Path(checkpoint_path).is_file():
            net = (read_checkpoint(checkpoint_path).get("hyper_parameters") or {}).get("backbone")
            if isinstance(net, dict) and isinstance(net.get("init_args"), dict):
                init_args = dict(net["init_args"])
                options = dict(init_args.get("backbone_options") or {})
                if any(k in options for k in PRETRAINED_OPTIONS):
                    init_args["backbone_options"] = {k: v for k, v in options.items() if k not in PRETRAINED_OPTIONS}
                    kwargs["backbone"] = {**net, "init_args": init_args}
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if "pixel_mean" not in checkpoint.get("state_dict", {"pixel_mean": None}):
            raise ValueError(
                "this segmentation checkpoint was written before omniseq stored the training normalisation "
                "(pixel_mean / pixel_std) in it; fit it again with this version"
            )

    def loss(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, mask, ignore_index=self.ignore_index)
        return ce + self.hparams.dice_weight * dice_loss(logits, mask, self.ignore_index)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch["image"]), batch["mask"])
        self.log_train_loss(loss)
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

    def class_metric_names(self, prefix: str) -> list[str]:
        """``val/dice_class03_car``: zero-padded indices, so sorted as text they are in class order."""
        width = len(str(self.num_classes - 1))
        names = self.class_names or [""] * self.num_classes
        return [
            f"{prefix}/dice_class{k:0{width}d}" + (f"_{name.replace('/', '_')}" if name else "")
            for k, name in enumerate(names)
        ]

    def _log_class_dice(self, class_dice, prefix: str) -> None:
        for key, value in zip(self.class_metric_names(prefix), class_dice.compute(), strict=True):
            self.log(key, value)
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
        return self.infer(images).argmax(1)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1) if self._trainer is not None else 1000
        warmup = min(self.hparams.warmup_steps, total // 2)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

