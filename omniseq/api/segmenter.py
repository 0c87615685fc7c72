"""Segmenter: fit / predict / plot / save / load for 2D images and 3D volumes in notebooks,
and ``from_checkpoint`` for a model trained by ``omniseq fit``.

    seg = Segmenter.from_checkpoint("runs/segmentation/mine/checkpoints/best.ckpt")
    mask = seg.predict("new_image.png")         # any size; the training normalisation is stored
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from omniseq.api._saved import load_payload, save_payload
from omniseq.data.segmentation import SegmentationDataModule, check_finite, read_image, scale_pixels
from omniseq.domains.vision.segmentation import SegmentationNet
from omniseq.recipes.checkpoints import read_checkpoint
from omniseq.recipes.progress import fit_callbacks
from omniseq.recipes.segmentation import (
    PRETRAINED_OPTIONS,
    SegmentationTask,
    class_colours,
    class_labels,
    display_image,
)

__all__ = ["Segmenter"]

# The names a checkpoint may record for the network (never imported: the class is ours).
NET_CLASS_PATHS = {"omniseq.domains.vision.SegmentationNet", f"{SegmentationNet.__module__}.SegmentationNet"}
NET_OPTIONS = ("backbone", "num_classes", "in_chans", "head", "decoder_channels", "backbone_options")


class Segmenter:
    """A segmentation model with a small notebook API.

    >>> seg = Segmenter("vig_tiny_patch16_224", num_classes=2, in_chans=1, window=(96, 96),
    ...                 backbone_options={"depth": 4, "img_size": 96})
    >>> seg.fit(max_steps=50)                      # built-in synthetic data
    >>> mask = seg.predict(image)                  # (H, W) array, path, or (T, H, W) volume

    Images are scaled by ``omniseq.data.segmentation.scale_pixels`` (as in training) and
    normalised with the training mean/std the model stores.
    """

    def __init__(
        self,
        backbone: str = "vig_tiny_patch16_224",
        num_classes: int = 2,
        in_chans: int = 1,
        head: str = "unetr",
        window: Sequence[int] | None = (128, 128),
        backbone_options: dict[str, Any] | None = None,
        lr: float = 1e-3,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        decoder_channels: int = 32,
    ) -> None:
        self.config = dict(
            backbone=backbone, num_classes=num_classes, in_chans=in_chans, head=head,
            window=list(window) if window else None, backbone_options=dict(backbone_options or {}),
            lr=lr, ignore_index=ignore_index, class_names=list(class_names) if class_names else None,
            decoder_channels=decoder_channels,
        )
        net = SegmentationNet(backbone, num_classes, in_chans, head, decoder_channels, backbone_options)
        self.task = SegmentationTask(
            net, num_classes=num_classes, lr=lr, ignore_index=ignore_index,
            class_names=self.config["class_names"], window=self.config["window"],
        )

    @property
    def mean(self) -> torch.Tensor:
        """Per-channel training mean (stored in the model, applied by ``predict``)."""
        return self.task.pixel_mean.detach().cpu()

    @property
    def std(self) -> torch.Tensor:
        return self.task.pixel_std.detach().cpu()

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> Segmenter:
        """A Segmenter from a ``SegmentationTask`` checkpoint written by ``omniseq fit``.

        Read as data (weights only); the network is rebuilt by its registered model name,
        with the checkpoint's classes, window and training normalisation.
        """
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such checkpoint file")
        checkpoint = read_checkpoint(path)
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        net = hparams.get("backbone")
        if not isinstance(net, dict) or net.get("class_path") not in NET_CLASS_PATHS:
            raise ValueError(
                f"{path}: not a checkpoint of SegmentationTask with a SegmentationNet written by `omniseq fit` "
                f"(its backbone is recorded as {net.get('class_path') if isinstance(net, dict) else net!r}); "
                "load it with SegmentationTask.load_from_checkpoint(path, backbone=...)"
            )
        options = {k: v for k, v in (net.get("init_args") or {}).items() if k in NET_OPTIONS}
        # The checkpoint holds the fine-tuned weights: the pretrained ones it started from are not read.
        options["backbone_options"] = {k: v for k, v in (options.get("backbone_options") or {}).items()
                                       if k not in PRETRAINED_OPTIONS}
        seg = cls(
            options.pop("backbone"), window=hparams.get("window"), lr=hparams.get("lr", 1e-3),
            ignore_index=hparams.get("ignore_index", 255), class_names=hparams.get("class_names"), **options,
        )
        seg.task.on_load_checkpoint(checkpoint)  # refuses checkpoints without the stored normalisation
        seg.task.load_state_dict(checkpoint["state_dict"])
        return seg

    def fit(
        self,
        data: SegmentationDataModule | str | None = None,
        max_epochs: int = 1,
        max_steps: int = -1,
        max_time: str | None = None,
        verbose: bool = True,
        **data_options: Any,
    ) -> Segmenter:
        """Train on a DataModule, a folder / registered dataset name, or (None) the synthetic default.

        Options for a new DataModule default to this model's classes, ignore index and window (crop).
        ``verbose`` prints a progress line every 30 s and why training stopped.
        """
        if not isinstance(data, SegmentationDataModule):
            data_options.setdefault("num_classes", self.config["num_classes"])
            data_options.setdefault("class_names", self.config["class_names"])
            data_options.setdefault("ignore_index", self.config["ignore_index"])
            if self.config["window"]:
                data_options.setdefault("crop_size", self.config["window"])
            data = SegmentationDataModule(root=data, **data_options)
        trainer = L.Trainer(
            max_epochs=max_epochs, max_steps=max_steps, max_time=max_time, logger=False,
            enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0, **fit_callbacks(verbose),
        )
        trainer.fit(self.task, datamodule=data)  # the task takes the training mean/std from the data
        return self

    def _prepare(self, image: np.ndarray | torch.Tensor | str | Path) -> torch.Tensor:
        if isinstance(image, (str, Path)):
            image = read_image(image, allow_alpha=False)
        raw = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        check_finite(raw, "Segmenter.predict: the image")
        x = scale_pixels(raw)
        spatial, channels = self.task.backbone.ndim, self.config["in_chans"]
        if x.ndim == spatial:
            x = x[None]
        elif x.ndim == spatial + 1 and x.shape[-1] == channels and x.shape[0] != channels:
            x = x.movedim(-1, 0)
        if x.ndim != spatial + 1 or x.shape[0] != channels:
            alpha = " (an RGBA or gray+alpha image? drop its alpha channel)" if raw.shape[-1] == channels + 1 else ""
            raise ValueError(
                f"Segmenter.predict: expected an image with {channels} channel(s) and "
                f"{spatial} spatial dims, got shape {tuple(raw.shape)}{alpha}"
            )
        return x[None]

    @torch.no_grad()
    def predict(self, image: np.ndarray | torch.Tensor | str | Path) -> np.ndarray:
        """Class-index mask with the input's spatial shape (inputs smaller than the window are padded)."""
        self.task.eval()
        x = self._prepare(image).to(self.task.device)
        return self.task.infer(x).argmax(1)[0].cpu().numpy()

    def plot(self, image, mask: np.ndarray | None = None, ax=None):
        """Image with the (predicted, if not given) mask overlaid, every class in its colour, and a
        legend of all classes; 3D shows the middle slice."""
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch

        mask = self.predict(image) if mask is None else np.asarray(mask)
        pixels = self._prepare(image)[0]
        if mask.ndim == 3:
            pixels, mask = pixels[:, mask.shape[0] // 2], mask[mask.shape[0] // 2]
        k = self.config["num_classes"]
        colours = class_colours(k)
        ax = ax or plt.gca()
        ax.imshow(display_image(pixels))
        ax.imshow(colours[np.clip(mask, 0, k - 1)], alpha=0.45)
        labels = class_labels(k, self.config["class_names"])
        ax.legend(handles=[Patch(color=c, label=t) for c, t in zip(colours, labels, strict=True)],
                  loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
        ax.set_axis_off()
        return ax

    def save(self, path: str | Path) -> None:
        save_payload({"config": self.config, "state_dict": self.task.state_dict(),
                      "mean": self.mean, "std": self.std}, path, "Segmenter")

    @classmethod
    def load(cls, path: str | Path) -> Segmenter:
        blob = load_payload(path, "Segmenter", ("config", "state_dict", "mean", "std"),
                            has_from_checkpoint=True)
        seg = cls(**blob["config"])
        state = dict(blob["state_dict"])
        state.setdefault("pixel_mean", blob["mean"])  # files from before the model held its normalisation
        state.setdefault("pixel_std", blob["std"])
        seg.task.load_state_dict(state)
        return seg
