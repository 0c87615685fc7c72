"""Hierarchical (multi-stage) vision backbones: Swin 2D/3D, ViG-H, windowed linear mixers.

``HierarchicalVisionModel`` is Swin's layout (Liu et al. 2021,
https://arxiv.org/abs/2103.14030): patch embedding, stages of residual blocks
separated by 2x patch merging, final norm, pooled head. Module names follow
timm's ``SwinTransformer`` (``layers.i.downsample``, ``layers.i.blocks.j``,
``head.fc``) so timm Swin checkpoints load after renaming ``attn`` to ``mixer``.

- ``mixer="window_attention"``: Swin (shifted windows every other block); with
  ``ndim=3`` the Swin UNETR encoder (Hatamizadeh et al. 2022,
  https://arxiv.org/abs/2201.01266).
- ``mixer="gla"`` with locality: hierarchical ViG (ViG-H, https://arxiv.org/abs/2405.18425).
- ``windowed=True`` with a linear mixer runs it inside large non-overlapping
  windows (the LION idea, https://arxiv.org/abs/2407.18232), via the ``windowed`` mixer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models import register_model
from timm.models._features import feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint

from omniseq.backbones._pretrained import HUB_SOURCES
from omniseq.backbones._timm import (
    PatchEmbed,
    build_vision_model,
    default_cfg,
    no_weight_decay_names,
    output_format,
)
from omniseq.backbones.blocks import Block
from omniseq.backbones.mixers import build_mixer
from omniseq.backbones.mixers.registry import Mixer, register_mixer
from omniseq.kernels import window_merge, window_partition

__all__ = ["HierarchicalVisionModel", "PatchMerging", "WindowedMixer"]


def _per_stage(value: Any, n: int, what: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{what} must have one entry per stage ({n}), got {value}")
        return list(value)
    return [value] * n


@register_mixer("windowed")
class WindowedMixer(Mixer):
    """Any mixer run independently inside non-overlapping windows of a 2D/3D grid.

    The grid is zero-padded at its end to a multiple of the window (clamped to
    the grid); padded tokens are part of the window's sequence and dropped after.
    The inner mixer receives ``grid=window`` (so ViG's locality works per window).
    """

    def __init__(self, dim: int, inner: str = "gla", window_size: int | Sequence[int] = 14, **options) -> None:
        super().__init__(dim, causal=False)
        options.pop("causal", None)
        self.window_size = window_size
        self.inner = build_mixer(inner, dim, **options)

    def forward(self, x: torch.Tensor, grid: Sequence[int] | None = None) -> torch.Tensor:
        self.check_input(x)
        if grid is None or len(grid) not in (2, 3) or math.prod(grid) != x.shape[1]:
            raise ValueError(
                f"windowed mixer needs grid= a 2D/3D token grid with prod(grid) = L = {x.shape[1]}, got {grid}"
            )
        grid = tuple(int(g) for g in grid)
        ws = self.window_size
        ws = (ws,) * len(grid) if isinstance(ws, int) else tuple(ws)
        window = tuple(min(w, g) for w, g in zip(ws, grid, strict=True))
        padded = tuple(math.ceil(g / w) * w for g, w in zip(grid, window, strict=True))
        B, C = x.shape[0], x.shape[-1]
        pad = [p for g, pg in zip(reversed(grid), reversed(padded), strict=True) for p in (0, pg - g)]
        image = F.pad(x.reshape(B, *grid, C), [0, 0, *pad])
        out = self.inner(window_partition(image, window), grid=window)
        out = window_merge(out, window, padded)
        crop = (slice(None), *(slice(0, g) for g in grid))
        return out[crop].reshape(B, -1, C)


class PatchMerging(nn.Module):
    """2x downsampling of a 2D/3D token grid: concatenate each 2^ndim block, norm, project.

    The concatenation order matches timm's Swin ``PatchMerging`` in 2D. Odd
    sizes are zero-padded.
    """

    def __init__(self, dim: int, out_dim: int, ndim: int = 2) -> None:
        super().__init__()
        self.ndim = ndim
        self.norm = nn.LayerNorm(2**ndim * dim)
        self.reduction = nn.Linear(2**ndim * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor, grid: tuple[int, ...]) -> tuple[torch.Tensor, tuple[int, ...]]:
        B, _, C = x.shape
        pad = [p for g in reversed(grid) for p in (0, g % 2)]
        x = F.pad(x.reshape(B, *grid, C), [0, 0, *pad])
        half = tuple((g + 1) // 2 for g in grid)
        if self.ndim == 2:
            x = x.reshape(B, half[0], 2, half[1], 2, C).permute(0, 1, 3, 4, 2, 5)
        else:
            x = x.reshape(B, half[0], 2, half[1], 2, half[2], 2, C).permute(0, 1, 3, 5, 6, 4, 2, 7)
        x = x.reshape(B, math.prod(half), -1)
        return self.reduction(self.norm(x)), half


class Stage(nn.Module):
    """Optional patch merging, then residual blocks on the token grid."""

    def __init__(self, downsample: nn.Module | None, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.ModuleList(blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, grid: tuple[int, ...]) -> tuple[torch.Tensor, tuple[int, ...]]:
        if isinstance(self.downsample, PatchMerging):
            x, grid = self.downsample(x, grid)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, grid, use_reentrant=False)
            else:
                x = block(x, grid)
        return x, grid


class PoolHead(nn.Module):
    """Global average pool over the grid of ``(B, *grid, C)`` then ``fc`` (timm's ``head.fc``)."""

    def __init__(self, dim: int, num_classes: int, pool_type: str = "avg", drop_rate: float = 0.0) -> None:
        super().__init__()
        self.pool_type = pool_type
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.pool_type == "avg":
            x = x.flatten(1, -2).mean(dim=1)
        x = self.drop(x)
        return x if pre_logits else self.fc(x)


class HierarchicalVisionModel(nn.Module):
    """Swin-style multi-stage backbone over 2D images or 3D volumes.

    Args:
        img_size: default input size (any size works; non-divisible sizes are padded).
        patch_size, in_chans, num_classes, embed_dim: as in timm's Swin.
        depths, num_heads: blocks and heads per stage.
        window_size: window of ``window_attention`` (int, or a 3-tuple in 3D) and of
            ``windowed`` stages.
        mixer: mixer name, or one per stage.
        mixer_options: extra mixer options (dict, or one per stage).
        windowed: run a non-window mixer inside windows (bool or one per stage).
        ndim: 2 (images) or 3 (volumes).
        patch_norm: LayerNorm after the patch embedding (Swin: True, Swin UNETR: False).
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int | Sequence[int] = 7,
        mixer: str | Sequence[str] = "window_attention",
        mixer_options: dict | Sequence[dict] | None = None,
        windowed: bool | Sequence[bool] = False,
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-5,
        ndim: int = 2,
        patch_norm: bool = True,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        kwargs.pop("pretrained_cfg", None)
        kwargs.pop("pretrained_cfg_overlay", None)
        # timm's flag for "any input size": always true here (inputs are padded to fit).
        kwargs.pop("dynamic_img_size", None)
        if kwargs:
            raise TypeError(f"HierarchicalVisionModel got unknown argument(s) {sorted(kwargs)}")
        n = len(depths)
        self.ndim, self.num_classes, self.global_pool = ndim, num_classes, global_pool
        self.dims = [embed_dim * 2**i for i in range(n)]
        self.num_features = self.head_hidden_size = self.dims[-1]
        self.window_size = window_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, ndim=ndim, norm=patch_norm)
        mixers = _per_stage(mixer, n, "mixer")
        options = _per_stage(mixer_options or {}, n, "mixer_options")
        heads = _per_stage(num_heads, n, "num_heads")
        windowed = _per_stage(windowed, n, "windowed")
        total = sum(depths)
        flat = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        rates = [flat[sum(depths[:i]) : sum(depths[: i + 1])] for i in range(n)]
        self.layers = nn.ModuleList()
        for i in range(n):
            down = PatchMerging(self.dims[i - 1], self.dims[i], ndim) if i else None
            blocks = [
                Block(
                    self.dims[i], *self._mixer_spec(mixers[i], options[i], windowed[i], j),
                    mlp_ratio=mlp_ratio, norm_eps=norm_eps, drop_path=float(rates[i][j]),
                    num_heads=heads[i],
                )
                for j in range(depths[i])
            ]
            self.layers.append(Stage(down, blocks))
        self.norm = nn.LayerNorm(self.num_features, eps=norm_eps)
        self.head = PoolHead(self.num_features, num_classes, global_pool, drop_rate)
        self.feature_info = [
            dict(module=f"layers.{i}", num_chs=d, reduction=patch_size * 2**i)
            for i, d in enumerate(self.dims)
        ]
        self.apply(self._init_linear)

    def _mixer_spec(self, mixer: str, options: dict, windowed: bool, j: int) -> tuple[str, dict]:
        ws = self.window_size
        if mixer == "window_attention":
            shift = 0 if j % 2 == 0 else (ws // 2 if isinstance(ws, int) else tuple(w // 2 for w in ws))
            return mixer, {"window_size": ws, "shift_size": shift, **options}
        if windowed:
            return "windowed", {"inner": mixer, "window_size": ws, **options}
        return mixer, dict(options)

    @staticmethod
    def _init_linear(module: nn.Module) -> None:
        # Swin's init for projections; mixers with their own init (Mamba dt) keep it.
        if isinstance(module, nn.Linear) and not hasattr(module.bias, "_no_reinit"):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    # -- timm API --------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        names = {n for n, _ in self.named_parameters() if "relative_position_bias_table" in n}
        return no_weight_decay_names(self, names)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^patch_embed", blocks=r"^layers\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.layers:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.head = PoolHead(self.num_features, num_classes, self.global_pool, self.head.drop.p)

    def adapt_checkpoint(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return state_dict

    # -- forward -------------------------------------------------------------------

    def _grid_tensor(self, x: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        return x.reshape(x.shape[0], *grid, x.shape[-1])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, H/32, W/32, C_out)`` (channels last, as timm's Swin)."""
        x, grid = self.patch_embed(x)
        for stage in self.layers:
            x, grid = stage(x, grid)
        return self._grid_tensor(self.norm(x), grid)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """Stage outputs channels-first: ``(B, C, H, W)`` or ``(B, C, T, H, W)``."""
        fmt = output_format(output_fmt)
        if fmt not in ("NCHW", "NCDHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' (channels first) or 'NHWC', got {fmt!r}")
        take, max_index = feature_take_indices(len(self.layers), indices)
        x, grid = self.patch_embed(x)
        stages = self.layers[: max_index + 1] if stop_early else self.layers
        last = len(self.layers) - 1
        intermediates = []
        for i, stage in enumerate(stages):
            x, grid = stage(x, grid)
            if i in take:
                inter = self._grid_tensor(self.norm(x) if norm and i == last else x, grid)
                intermediates.append(inter if fmt == "NHWC" else inter.movedim(-1, 1).contiguous())
        if intermediates_only:
            return intermediates
        if i == last:
            x = self.norm(x)
        return self._grid_tensor(x, grid), intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        take, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[: max_index + 1]
        if prune_norm or max_index < len(self.feature_info) - 1:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take


# -- paper configurations and timm registration -----------------------------

MODEL_ARGS: dict[str, dict[str, Any]] = {
    "omni_swin_tiny_patch4_window7_224": dict(
        embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7,
        mixer="window_attention", drop_path_rate=0.2,
    ),
    "vig_h_tiny": dict(
        embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), mixer="gla",
        mixer_options=dict(direction_gates=True, locality=True), drop_path_rate=0.2,
    ),
    "swin3d_unetr_tiny": dict(
        img_size=96, patch_size=2, in_chans=1, num_classes=0, embed_dim=48, depths=(2, 2, 2, 2),
        num_heads=(3, 6, 12, 24), window_size=(7, 7, 7), ndim=3, patch_norm=False,
        drop_path_rate=0.0,
    ),
}

default_cfgs = {
    "omni_swin_tiny_patch4_window7_224": default_cfg(
        pool_size=(7, 7), classifier="head.fc", paper_ids="https://arxiv.org/abs/2103.14030",
        **HUB_SOURCES["omni_swin_tiny_patch4_window7_224"],
    ),
    "vig_h_tiny": default_cfg(
        pool_size=(7, 7), classifier="head.fc", paper_ids="https://arxiv.org/abs/2405.18425"
    ),
    # timm's builder asserts a 3-entry (C, H, W) input_size: the volume's (C, T, H, W)
    # is set on the built model's cfg instead (_volume_data_config).
    "swin3d_unetr_tiny": default_cfg(
        input_size=None, pool_size=(3, 3, 3), classifier="head.fc", num_classes=0,
        mean=(0.5,), std=(0.5,), paper_ids="https://arxiv.org/abs/2201.01266",
    ),
}


def _create(variant: str, pretrained: bool, **kwargs: Any) -> HierarchicalVisionModel:
    args = {**MODEL_ARGS[variant], **kwargs}
    depths = args["depths"]
    model = build_vision_model(
        HierarchicalVisionModel, variant, pretrained, default_out_indices=tuple(range(len(depths))),
        layout="swin", **args,
    )
    if args.get("ndim", 2) == 3:
        _volume_data_config(model, args.get("in_chans", 3), args.get("img_size", 224))
    return model


def _volume_data_config(model: nn.Module, in_chans: int, img_size: int | Sequence[int]) -> None:
    """``resolve_data_config`` reads ``input_size`` and mean/std from the model's cfg:
    give a volume model its ``(C, T, H, W)`` and one mean/std entry per channel."""
    size = (img_size,) * 3 if isinstance(img_size, int) else tuple(img_size)
    for holder in {id(m): m for m in (model, getattr(model, "model", model))}.values():
        cfg = dict(holder.pretrained_cfg)
        cfg["input_size"] = (in_chans, *size)
        for key in ("mean", "std"):
            if len(cfg[key]) != in_chans:
                cfg[key] = (sum(cfg[key]) / len(cfg[key]),) * in_chans
        holder.pretrained_cfg = holder.default_cfg = cfg


@register_model
def omni_swin_tiny_patch4_window7_224(pretrained: bool = False, **kwargs: Any) -> HierarchicalVisionModel:
    """Swin-T (28M); loads timm ``swin_tiny_patch4_window7_224`` weights."""
    return _create("omni_swin_tiny_patch4_window7_224", pretrained, **kwargs)


@register_model
def vig_h_tiny(pretrained: bool = False, **kwargs: Any) -> HierarchicalVisionModel:
    """Hierarchical ViG-T: Swin-T layout with global BiGLA (gates + locality) blocks."""
    return _create("vig_h_tiny", pretrained, **kwargs)


@register_model
def swin3d_unetr_tiny(pretrained: bool = False, **kwargs: Any) -> HierarchicalVisionModel:
    """Swin UNETR's 3D encoder: feature size 48, depths 2-2-2-2, 96^3 input, 1 channel."""
    return _create("swin3d_unetr_tiny", pretrained, **kwargs)
