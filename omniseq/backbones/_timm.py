"""Shared pieces of the vision backbones: patch embedding, position-embedding
resizing, checkpoint key mapping and the glue that registers models in timm.

Every vision model here is built through ``timm.models.build_model_with_cfg`` so
that ``timm.create_model(name, pretrained=..., features_only=..., checkpoint_path=...)``
behaves as for timm's own models. Features come from ``forward_intermediates``
(timm's ``FeatureGetterNet``), which works for 2D and 3D models alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import LayerNorm2d
from timm.models import build_model_with_cfg
from torch import nn

__all__ = [
    "ConvStem",
    "PatchEmbed",
    "build_vision_model",
    "default_cfg",
    "no_weight_decay_names",
    "output_format",
    "resize_pos_embed",
]


def _as_tuple(value: int | Sequence[int], ndim: int, what: str) -> tuple[int, ...]:
    out = (int(value),) * ndim if isinstance(value, int) else tuple(int(v) for v in value)
    if len(out) != ndim:
        raise ValueError(f"{what} must be an int or a {ndim}-tuple, got {value}")
    return out


class PatchEmbed(nn.Module):
    """Non-overlapping patches of a 2D image ``(B, C, H, W)`` or 3D volume
    ``(B, C, T, H, W)`` projected to tokens ``(B, L, embed_dim)``.

    Sizes not divisible by the patch are zero-padded at their end (never refused).
    ``forward`` returns the tokens and their grid, e.g. ``(H / p, W / p)``.
    The projection is named ``proj`` and the optional norm ``norm`` as in timm.
    """

    def __init__(
        self,
        patch_size: int | Sequence[int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        ndim: int = 2,
        norm: bool = False,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError(f"PatchEmbed: ndim must be 2 or 3, got {ndim}")
        self.ndim = ndim
        self.patch_size = _as_tuple(patch_size, ndim, "PatchEmbed: patch_size")
        self.in_chans, self.embed_dim = in_chans, embed_dim
        conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        self.proj = conv(in_chans, embed_dim, self.patch_size, self.patch_size, bias=bias)
        self.norm = nn.LayerNorm(embed_dim) if norm else nn.Identity()

    def grid_size(self, spatial: Sequence[int]) -> tuple[int, ...]:
        return tuple(math.ceil(s / p) for s, p in zip(spatial, self.patch_size, strict=True))

    def check_input(self, x: torch.Tensor) -> None:
        layout = "(B, C, H, W)" if self.ndim == 2 else "(B, C, T, H, W)"
        if x.ndim != self.ndim + 2:
            raise ValueError(
                f"PatchEmbed: input must have shape {layout} with C = {self.in_chans}, got {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"PatchEmbed: expected {self.in_chans} input channels {layout}, got {x.shape[1]} "
                f"(input shape {tuple(x.shape)})"
            )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        self.check_input(x)
        spatial = x.shape[2:]
        pad = []
        for s, p in zip(reversed(spatial), reversed(self.patch_size), strict=True):
            pad += [0, (-s) % p]
        if any(pad):
            x = F.pad(x, pad)
        x = self.proj(x)
        grid = tuple(x.shape[2:])
        return self.norm(x.flatten(2).transpose(1, 2)), grid


class ConvStem(nn.Module):
    """ViG's overlapping two-conv patch embedding (hustvl/ViG ``V2PatchEmbed``).

    Conv ``k = p/2 + 1``, stride ``p/2`` to half width, LayerNorm2d, SiLU, then a
    3x3 stride-2 conv to ``embed_dim`` and LayerNorm2d: total stride ``p``.
    Module indices (``proj.0`` ... ``proj.4``) match ViG's checkpoints.
    """

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 192) -> None:
        super().__init__()
        if patch_size % 4:
            raise ValueError(f"ConvStem: patch_size must be a multiple of 4, got {patch_size}")
        self.ndim, self.in_chans, self.embed_dim = 2, in_chans, embed_dim
        self.patch_size = (patch_size, patch_size)
        self.stride1 = patch_size // 2
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, embed_dim // 2, self.stride1 + 1, self.stride1, padding=1),
            LayerNorm2d(embed_dim // 2, eps=1e-5),
            nn.SiLU(),
            nn.Conv2d(embed_dim // 2, embed_dim, 3, 2, padding=1),
            LayerNorm2d(embed_dim, eps=1e-5),
        )

    def grid_size(self, spatial: Sequence[int]) -> tuple[int, ...]:
        first = [(s + 2 - self.stride1 - 1) // self.stride1 + 1 for s in spatial]
        return tuple((f - 1) // 2 + 1 for f in first)

    check_input = PatchEmbed.check_input

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        self.check_input(x)
        if min(x.shape[2:]) < self.stride1 - 1:
            raise ValueError(f"ConvStem: input {tuple(x.shape)} is smaller than the first kernel")
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2), tuple(x.shape[2:])


def resize_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: Sequence[int],
    old_grid: Sequence[int] | None = None,
    num_prefix_tokens: int = 0,
    prefix_position: str = "first",
    mode: str | None = None,
) -> torch.Tensor:
    """Resize a learned position embedding ``(1, P + prod(old_grid), C)`` to ``new_grid``.

    Prefix tokens (class token) keep their embedding; they sit ``"first"``
    (DeiT) or in the ``"middle"`` of the grid tokens, at index ``n // 2`` (Vim).
    2D grids are interpolated bicubically, 3D trilinearly. ``old_grid`` defaults
    to a square (cube) grid.
    """
    new_grid = tuple(int(g) for g in new_grid)
    ndim = len(new_grid)
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"resize_pos_embed: pos_embed must be (1, L, C), got {tuple(pos_embed.shape)}")
    n_grid = pos_embed.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = round(n_grid ** (1 / ndim))
        old_grid = (side,) * ndim
    old_grid = tuple(int(g) for g in old_grid)
    if math.prod(old_grid) != n_grid:
        raise ValueError(
            f"resize_pos_embed: {n_grid} grid tokens do not form old_grid {old_grid}"
        )
    if old_grid == new_grid:
        return pos_embed
    if prefix_position not in ("first", "middle"):
        raise ValueError(f"prefix_position must be 'first' or 'middle', got {prefix_position!r}")
    middle = prefix_position == "middle"
    p = n_grid // 2 if middle else 0
    prefix = pos_embed[:, p : p + num_prefix_tokens]
    grid_tokens = torch.cat([pos_embed[:, :p], pos_embed[:, p + num_prefix_tokens :]], dim=1)
    C = pos_embed.shape[-1]
    image = grid_tokens.reshape(1, *old_grid, C).movedim(-1, 1).float()
    mode = mode or ("bicubic" if ndim == 2 else "trilinear")
    image = F.interpolate(image, size=new_grid, mode=mode, align_corners=False)
    resized = image.movedim(1, -1).reshape(1, -1, C).to(pos_embed.dtype)
    q = math.prod(new_grid) // 2 if middle else 0
    return torch.cat([resized[:, :q], prefix, resized[:, q:]], dim=1)


def output_format(fmt: Any) -> str:
    """timm passes ``output_fmt`` as a ``Format`` enum or a string."""
    return str(getattr(fmt, "value", fmt))


def no_weight_decay_names(model: nn.Module, always: Iterable[str] = ()) -> set[str]:
    """Parameter names excluded from weight decay: ``always`` plus parameters that
    carry ``_no_weight_decay`` (Mamba's A_log and D)."""
    names = set(always)
    for name, param in model.named_parameters():
        if getattr(param, "_no_weight_decay", False):
            names.add(name)
    return names


def install_key_mapping(model: nn.Module, filter_fn: Callable[[dict, nn.Module], dict]) -> None:
    """Let ``model.load_state_dict`` accept the official layout that ``filter_fn``
    converts (used by ``timm.create_model(..., checkpoint_path=...)``, which applies
    no filter). Our own state dicts pass through unchanged."""

    def hook(module, state_dict, prefix, *args):
        if prefix:
            return
        converted = filter_fn(dict(state_dict), module)
        state_dict.clear()
        state_dict.update(converted)

    model.register_load_state_dict_pre_hook(hook)


def default_cfg(
    input_size: tuple[int, ...] = (3, 224, 224),
    pool_size: tuple[int, ...] | None = None,
    first_conv: str = "patch_embed.proj",
    classifier: str = "head",
    **kwargs: Any,
) -> dict[str, Any]:
    """A timm pretrained cfg with no weights source (local files only)."""
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": input_size,
        "pool_size": pool_size,
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": first_conv,
        "classifier": classifier,
        "license": "apache-2.0",
        **kwargs,
    }


def build_vision_model(
    model_cls: Callable[..., nn.Module],
    variant: str,
    pretrained: bool,
    default_out_indices: int | tuple[int, ...],
    layout: str = "deit",
    **kwargs: Any,
) -> nn.Module:
    """``build_model_with_cfg`` with the checkpoint filter of the weights' ``layout``
    (``"deit"``, ``"swin"``, ``"vim"``, ``"vig"``; see ``omniseq.backbones._pretrained``)
    and the getter feature wrapper."""
    from omniseq.backbones._pretrained import (
        FILTERS,
        check_pretrained_file,
        pretrained_load_context,
    )

    out_indices = kwargs.pop("out_indices", default_out_indices)
    filter_fn = FILTERS[layout]
    if pretrained:
        check_pretrained_file(variant, kwargs.get("pretrained_cfg_overlay"))
    with pretrained_load_context(pretrained, variant):
        model = build_model_with_cfg(
            model_cls,
            variant,
            pretrained,
            pretrained_filter_fn=filter_fn,
            feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
            **kwargs,
        )
    install_key_mapping(getattr(model, "model", model), filter_fn)
    return model
