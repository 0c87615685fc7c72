"""Segmenter: fit / predict / plot / save / load for 2D images and 3D volumes in notebooks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from omniseq.api._saved import load_payload, save_payload
from omniseq.data.segmentation import SegmentationDataModule, check_finite, read_image
from omniseq.domains.vision.segmentation import SegmentationNet
from omniseq.recipes.segmentation import SegmentationTask

__all__ = ["Segmenter"]


class Segmenter:
    """A segmentation model with a small notebook API.

    >>> seg = Segmenter("vig_tiny_patch16_224", num_classes=2, in_chans=1, window=(96, 96),
    ...                 backbone_options={"depth": 4, "img_size": 96})
    >>> seg.fit(max_steps=50)                      # built-in synthetic data
    >>> mask = seg.predict(image)                  # (H, W) array, path, or (T, H, W) volume
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
    ) -> None:
        self.config = dict(
            backbone=backbone, num_classes=num_classes, in_chans=in_chans, head=head,
            window=list(window) if window else None, backbone_options=backbone_options or {},
            lr=lr, ignore_index=ignore_index,
        )
        net = SegmentationNet(backbone, num_classes, in_chans, head, backbone_options=backbone_options)
        self.task = SegmentationTask(
            net, num_classes=num_classes, lr=lr, ignore_index=ignore_index, window=self.config["window"]
        )
        self.mean = torch.zeros(in_chans)
        self.std = torch.ones(in_chans)

    def fit(
        self,
        data: SegmentationDataModule | str | None = None,
        max_epochs: int = 1,
        max_steps: int = -1,
        max_time: str | None = None,
        **data_options: Any,
    ) -> Segmenter:
        """Train on a DataModule, a folder / registered dataset name, or (None) the synthetic default."""
        if not isinstance(data, SegmentationDataModule):
            data_options.setdefault("num_classes", self.config["num_classes"])
            data = SegmentationDataModule(root=data, **data_options)
        trainer = L.Trainer(
            max_epochs=max_epochs, max_steps=max_steps, max_time=max_time, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0,
            limit_val_batches=0,
        )
        trainer.fit(self.task, datamodule=data)
        self.mean, self.std = data.mean.clone(), data.std.clone()
        return self

    def _prepare(self, image: np.ndarray | torch.Tensor | str | Path) -> torch.Tensor:
        if isinstance(image, (str, Path)):
            image = read_image(image)
        raw = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        check_finite(raw, "Segmenter.predict: the image")
        x = torch.from_numpy(np.array(raw)).float()
        if raw.dtype == np.uint8:
            x = x / 255.0
        spatial = self.task.backbone.ndim
        if x.ndim == spatial:
            x = x[None]
        elif x.ndim == spatial + 1 and x.shape[-1] == self.config["in_chans"] and x.shape[0] != self.config["in_chans"]:
            x = x.movedim(-1, 0)
        if x.ndim != spatial + 1 or x.shape[0] != self.config["in_chans"]:
            raise ValueError(
                f"Segmenter.predict: expected an image with {self.config['in_chans']} channel(s) and "
                f"{spatial} spatial dims, got shape {tuple(raw.shape)}"
            )
        shape = (-1,) + (1,) * spatial
        return ((x - self.mean.view(shape)) / self.std.view(shape))[None]

    @torch.no_grad()
    def predict(self, image: np.ndarray | torch.Tensor | str | Path) -> np.ndarray:
        """Class-index mask with the input's spatial shape."""
        self.task.eval()
        x = self._prepare(image).to(self.task.device)
        return self.task.infer(x).argmax(1)[0].cpu().numpy()

    def plot(self, image, mask: np.ndarray | None = None, ax=None):
        """Image with the (predicted, if not given) mask overlaid; 3D shows the middle slice."""
        import matplotlib.pyplot as plt

        mask = self.predict(image) if mask is None else np.asarray(mask)
        raw = np.asarray(read_image(image) if isinstance(image, (str, Path)) else image, dtype=np.float32)
        if mask.ndim == 3:
            raw, mask = raw[mask.shape[0] // 2], mask[mask.shape[0] // 2]
        ax = ax or plt.gca()
        ax.imshow(raw if raw.ndim == 2 else raw[..., 0], cmap="gray")
        ax.imshow(np.ma.masked_equal(mask, 0), cmap="autumn", alpha=0.45, vmin=0, vmax=max(self.config["num_classes"] - 1, 1))
        ax.set_axis_off()
        return ax

    def save(self, path: str | Path) -> None:
        save_payload({"config": self.config, "state_dict": self.task.state_dict(),
                      "mean": self.mean, "std": self.std}, path, "Segmenter")

    @classmethod
    def load(cls, path: str | Path) -> Segmenter:
        blob = load_payload(path, "Segmenter", ("config", "state_dict", "mean", "std"), weights_only=True)
        seg = cls(**blob["config"])
        seg.task.load_state_dict(blob["state_dict"])
        seg.mean, seg.std = blob["mean"], blob["std"]
        return seg
