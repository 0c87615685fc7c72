"""A segmentation network from any registered vision backbone plus a head.

``SegmentationNet("vig_tiny_patch16_224", num_classes=2, in_chans=1, head="unetr")``
maps ``(B, C, H, W)`` (or ``(B, C, T, H, W)`` for 3D backbones) to logits of the
same spatial size. Backbones come from timm's registry (ours are registered on
``import omniseq``), features from ``features_only=True``.
"""

from __future__ import annotations

from typing import Any, Literal

import timm
import torch
import torch.nn.functional as F
from torch import nn

import omniseq.backbones.hierarchical  # noqa: F401  registers the models
import omniseq.backbones.vit  # noqa: F401
from omniseq.domains.vision.heads import SimpleFPN, UNETRDecoder, UperNetHead, match_size

__all__ = ["SegmentationNet"]

HeadName = Literal["unetr", "upernet"]


def _plain_indices(depth: int, n: int = 4) -> tuple[int, ...]:
    """Evenly spaced block indices ending at the last block (UNETR takes 3, 6, 9, 12 of 12)."""
    return tuple(sorted({max(depth * (i + 1) // n - 1, 0) for i in range(n)}))


class SegmentationNet(nn.Module):
    """Backbone features -> UNETR decoder or (simple FPN +) UperNet -> per-pixel logits.

    Args:
        backbone: timm model name (e.g. ``vim_tiny_patch16_224``, ``omni_swin_tiny_patch4_window7_224``,
            ``swin3d_unetr_tiny``).
        num_classes: output classes.
        in_chans: image channels.
        head: ``"unetr"`` or ``"upernet"``.
        decoder_channels: width of the decoder.
        backbone_options: extra ``timm.create_model`` arguments (``depth``, ``mixer``,
            ``img_size``, ``drop_path_rate``, ``pretrained``, ``pretrained_cfg_overlay``, ...).
    """

    def __init__(
        self,
        backbone: str = "vig_tiny_patch16_224",
        num_classes: int = 2,
        in_chans: int = 3,
        head: HeadName = "unetr",
        decoder_channels: int = 32,
        backbone_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if head not in ("unetr", "upernet"):
            raise ValueError(f"head must be 'unetr' or 'upernet', got {head!r}")
        options = dict(backbone_options or {})
        # Only the architecture is read from the probe: no weights are loaded (or downloaded) for it.
        architecture = {k: v for k, v in options.items() if k not in ("pretrained", "pretrained_cfg_overlay")}
        with torch.device("meta"):
            probe = timm.create_model(backbone, in_chans=in_chans, num_classes=0, **architecture)
        self.plain = hasattr(probe, "blocks")
        self.ndim = probe.patch_embed.ndim
        indices = _plain_indices(len(probe.blocks)) if self.plain else tuple(range(len(probe.layers)))
        del probe
        self.encoder = timm.create_model(
            backbone, in_chans=in_chans, features_only=True, out_indices=indices, **options
        )
        channels = self.encoder.feature_info.channels()
        reductions = self.encoder.feature_info.reduction()
        self.in_chans, self.num_classes, self.head_name = in_chans, num_classes, head
        if head == "unetr":
            self.head = UNETRDecoder(in_chans, channels, reductions, num_classes, decoder_channels, self.ndim)
            self.fpn = None
        else:
            self.fpn = SimpleFPN(channels[-1], 4 * decoder_channels, self.ndim) if self.plain else None
            pyramid = self.fpn.out_channels if self.fpn else channels
            self.head = UperNetHead(pyramid, num_classes, 4 * decoder_channels, ndim=self.ndim)

    def check_input(self, x: torch.Tensor) -> None:
        layout = "(B, C, H, W)" if self.ndim == 2 else "(B, C, T, H, W)"
        if x.ndim != self.ndim + 2 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"SegmentationNet expects input {layout} with C = {self.in_chans}, got {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        features = self.encoder(x)
        if self.head_name == "unetr":
            return self.head(x, features)
        pyramid = self.fpn(features[-1]) if self.fpn is not None else features
        logits = self.head(pyramid)
        # Upsample by the finest stride, then crop the padding the patch embedding added.
        reductions = self.encoder.feature_info.reduction()
        stride = reductions[-1] // 4 if self.plain else reductions[0]
        mode = "bilinear" if self.ndim == 2 else "trilinear"
        up = F.interpolate(logits, scale_factor=float(stride), mode=mode, align_corners=False)
        return match_size(up, x.shape[2:])
