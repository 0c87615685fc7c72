"""Plain (single-scale) vision backbones: DeiT, Vision Mamba (Vim) and ViG.

One class, ``PlainVisionModel``, covers the three papers; they differ in the
sequence mixer, the block layout, the norm and the class token:

- DeiT (Touvron et al. 2021, https://arxiv.org/abs/2012.12877): attention + MLP
  blocks, LayerNorm, class token first. Loads timm ``deit_*`` weights.
- Vim (Zhu et al. 2024, https://arxiv.org/abs/2401.09417): bidirectional Mamba
  "v2" blocks without a channel MLP, RMSNorm, class token in the middle of the
  sequence. Loads hustvl/Vim key names.
- ViG (Liao et al. 2024, https://arxiv.org/abs/2405.18425): ViG's mixer
  (bidirectional GLA with direction-wise gates and gated 2D locality) + SwiGLU
  blocks, RMSNorm, a two-conv stem, no class token, average pooling. Loads
  hustvl/ViG checkpoints.

``mixer=`` swaps the sequence mixer of any of them. Importing this module
registers the models in timm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from timm.layers import DropPath, trunc_normal_
from timm.models import register_model
from timm.models._features import feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint

from omniseq.backbones._pretrained import HUB_SOURCES
from omniseq.backbones._timm import (
    ConvStem,
    PatchEmbed,
    build_vision_model,
    default_cfg,
    no_weight_decay_names,
    output_format,
    resize_pos_embed,
)
from omniseq.backbones.blocks import Block, make_norm
from omniseq.backbones.mixers import build_mixer

__all__ = ["MixerOnlyBlock", "PlainVisionModel"]

PoolName = Literal["token", "avg", ""]


class MixerOnlyBlock(nn.Module):
    """Pre-norm residual block with a sequence mixer and no channel MLP (Vim, Mamba).

    Names follow hustvl/Vim (``norm``, ``mixer``). ``residual_fp32`` keeps the
    residual stream in float32 under autocast, as Vim's ``residual_in_fp32``.
    """

    def __init__(
        self,
        dim: int,
        mixer: str = "mamba",
        mixer_options: dict | None = None,
        norm: str = "rmsnorm",
        norm_eps: float = 1e-5,
        drop_path: float = 0.0,
        num_heads: int | None = None,
        residual_fp32: bool = False,
    ) -> None:
        super().__init__()
        context = {} if num_heads is None else {"num_heads": num_heads}
        self.norm = make_norm(norm, dim, norm_eps)
        self.mixer = build_mixer(mixer, dim, **{**context, **(mixer_options or {})})
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.residual_fp32 = residual_fp32

    def forward(self, x: torch.Tensor, grid: tuple[int, ...] | None = None) -> torch.Tensor:
        out = self.drop_path(self.mixer(self.norm(x), grid=grid))
        return (x.float() + out.float()) if self.residual_fp32 else x + out


class PlainVisionModel(nn.Module):
    """Patch embedding, position embedding, a stack of mixer blocks, norm, head.

    Args:
        img_size: default input size (int or tuple); any other size also works
            (the position embedding is resized, sizes not divisible by the patch are padded).
        patch_size, in_chans, num_classes, embed_dim, depth: as in timm's ViT.
        mixer: sequence mixer of every block (see ``omniseq.backbones.mixers``).
        mixer_options: extra options of that mixer.
        num_heads: heads (forwarded to mixers that take them).
        mlp_ratio: channel-MLP width; ``channel_mixer="none"`` gives Vim-style blocks.
        norm, norm_eps: ``"layernorm"`` or ``"rmsnorm"``.
        class_token: ``"first"`` (DeiT), ``"middle"`` (Vim) or ``"none"`` (ViG).
        global_pool: ``"token"`` (class token), ``"avg"`` or ``""`` (no pooling).
        drop_rate, drop_path_rate: head dropout and stochastic depth (linear rule).
        residual_fp32: Vim's float32 residual stream (mixer-only blocks).
        stem: ``"patch"`` (one strided conv, ViT) or ``"conv"`` (ViG's two-conv stem).
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 192,
        depth: int = 12,
        mixer: str = "attention",
        mixer_options: dict | None = None,
        num_heads: int | None = 3,
        mlp_ratio: float = 4.0,
        channel_mixer: Literal["mlp", "glu", "swiglu", "none"] = "mlp",
        norm: Literal["layernorm", "rmsnorm"] = "layernorm",
        norm_eps: float = 1e-6,
        class_token: Literal["first", "middle", "none"] = "first",
        global_pool: PoolName = "token",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        residual_fp32: bool = False,
        stem: Literal["patch", "conv"] = "patch",
        **kwargs: Any,
    ) -> None:
        super().__init__()
        kwargs.pop("pretrained_cfg", None)
        kwargs.pop("pretrained_cfg_overlay", None)
        # timm's flag for "any input size": always true here (pos-embed resized per call).
        kwargs.pop("dynamic_img_size", None)
        if kwargs:
            raise TypeError(f"PlainVisionModel got unknown argument(s) {sorted(kwargs)}")
        if class_token not in ("first", "middle", "none"):
            raise ValueError(f"class_token must be 'first', 'middle' or 'none', got {class_token!r}")
        if global_pool == "token" and class_token == "none":
            raise ValueError("global_pool='token' needs a class token; use 'avg'")
        img = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.num_classes, self.global_pool = num_classes, global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.class_token = class_token
        self.num_prefix_tokens = 0 if class_token == "none" else 1
        self.grad_checkpointing = False
        if stem not in ("patch", "conv"):
            raise ValueError(f"stem must be 'patch' or 'conv', got {stem!r}")
        stem_cls = PatchEmbed if stem == "patch" else ConvStem
        self.patch_embed = stem_cls(patch_size, in_chans, embed_dim)
        self.patch_grid = self.patch_embed.grid_size(img)
        if self.num_prefix_tokens:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        num_tokens = math.prod(self.patch_grid) + self.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            self._make_block(
                embed_dim, mixer, mixer_options, num_heads, mlp_ratio, channel_mixer,
                norm, norm_eps, rate, residual_fp32,
            )
            for rate in rates
        )
        self.norm = make_norm(norm, embed_dim, norm_eps)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [
            dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=patch_size) for i in range(depth)
        ]
        self._init_weights()

    @staticmethod
    def _make_block(dim, mixer, options, heads, mlp_ratio, channel_mixer, norm, eps, dpr, fp32):
        if channel_mixer == "none":
            return MixerOnlyBlock(dim, mixer, options, norm, eps, dpr, heads, fp32)
        return Block(
            dim, mixer, options, mlp_ratio=mlp_ratio, channel_mixer=channel_mixer, norm=norm,
            norm_eps=eps, drop_path=dpr, num_heads=heads,
        )

    def _init_weights(self) -> None:
        trunc_normal_(self.pos_embed, std=0.02)
        if self.num_prefix_tokens:
            nn.init.normal_(self.cls_token, std=1e-6)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    # -- timm API --------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return no_weight_decay_names(self, {"pos_embed", "cls_token"} & set(dict(self.named_parameters())))

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^cls_token|pos_embed|patch_embed", blocks=r"^blocks\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: PoolName | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("token", "avg", ""):
                raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
            if global_pool == "token" and not self.num_prefix_tokens:
                raise ValueError("global_pool='token' needs a class token")
            self.global_pool = global_pool
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def adapt_checkpoint(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Resize a checkpoint's position embedding to this model's grid."""
        pos = state_dict.get("pos_embed")
        if pos is not None and pos.shape != self.pos_embed.shape:
            state_dict["pos_embed"] = resize_pos_embed(
                pos, self.patch_grid, None, self.num_prefix_tokens, self._prefix_position
            )
        return state_dict

    # -- forward -------------------------------------------------------------------

    @property
    def _prefix_position(self) -> str:
        return "middle" if self.class_token == "middle" else "first"

    def _cls_index(self, num_patches: int) -> int:
        return num_patches // 2 if self.class_token == "middle" else 0

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        x, grid = self.patch_embed(x)
        pos = self.pos_embed
        if grid != self.patch_grid:
            pos = resize_pos_embed(
                pos, grid, self.patch_grid, self.num_prefix_tokens, self._prefix_position
            )
        if self.num_prefix_tokens:
            i = self._cls_index(x.shape[1])
            cls = self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype)
            x = torch.cat([x[:, :i], cls, x[:, i:]], dim=1)
        return x + pos.to(x.dtype), grid

    def _run_block(self, block: nn.Module, x: torch.Tensor, grid) -> torch.Tensor:
        # Mixers that use the 2D grid (ViG locality, windows) cannot see a class token.
        mixer_grid = grid if not self.num_prefix_tokens else None
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return checkpoint(block, x, mixer_grid, use_reentrant=False)
        return block(x, mixer_grid)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> normalised tokens ``(B, prefix + N, embed_dim)``."""
        x, grid = self._embed(x)
        for block in self.blocks:
            x = self._run_block(block, x, grid)
        return self.norm(x)

    def _split_prefix(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        if not self.num_prefix_tokens:
            return None, x
        i = self._cls_index(x.shape[1] - 1)
        return x[:, i : i + 1], torch.cat([x[:, :i], x[:, i + 1 :]], dim=1)

    def pool(self, x: torch.Tensor, pool_type: str | None = None) -> torch.Tensor:
        pool_type = self.global_pool if pool_type is None else pool_type
        prefix, patches = self._split_prefix(x)
        if pool_type == "token":
            return prefix[:, 0]
        if pool_type == "avg":
            return patches.mean(dim=1)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """Block outputs as ``(B, C, H/p, W/p)`` maps (``NCHW``) or tokens (``NLC``)."""
        fmt = output_format(output_fmt)
        if fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {fmt!r}")
        take, max_index = feature_take_indices(len(self.blocks), indices)
        x, grid = self._embed(x)
        blocks = self.blocks[: max_index + 1] if stop_early else self.blocks
        intermediates = []
        for i, block in enumerate(blocks):
            x = self._run_block(block, x, grid)
            if i in take:
                prefix, patches = self._split_prefix(self.norm(x) if norm else x)
                if fmt == "NCHW":
                    patches = patches.reshape(x.shape[0], *grid, -1).permute(0, 3, 1, 2).contiguous()
                intermediates.append((patches, prefix) if return_prefix_tokens else patches)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        take, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take


# -- paper configurations and timm registration -----------------------------

_DEIT = dict(mixer="attention", norm="layernorm", norm_eps=1e-6, class_token="first", global_pool="token")
_VIM = dict(
    depth=24, mixer="mamba", mixer_options=dict(d_state=16, expand=2), num_heads=None,
    channel_mixer="none", norm="rmsnorm", norm_eps=1e-5, class_token="middle", global_pool="token",
)
_VIG = dict(
    depth=12, stem="conv", mixer="vig", norm="rmsnorm", norm_eps=1e-6, channel_mixer="swiglu",
    mlp_ratio=8 / 3, class_token="none", global_pool="avg",
)

MODEL_ARGS: dict[str, dict[str, Any]] = {
    "omni_deit_tiny_patch16_224": dict(embed_dim=192, depth=12, num_heads=3, **_DEIT),
    "omni_deit_small_patch16_224": dict(embed_dim=384, depth=12, num_heads=6, **_DEIT),
    "vim_tiny_patch16_224": dict(embed_dim=192, **_VIM),
    "vim_small_patch16_224": dict(embed_dim=384, **_VIM),
    "vig_tiny_patch16_224": dict(
        embed_dim=192, num_heads=3, mixer_options=dict(conv_act=True, out_act=True), **_VIG
    ),
    "vig_small_patch16_224": dict(
        embed_dim=384, num_heads=6, mixer_options=dict(conv_act=False, out_act=False), **_VIG
    ),
}

_PAPERS = {
    "omni_deit_tiny_patch16_224": ("deit", "https://arxiv.org/abs/2012.12877"),
    "omni_deit_small_patch16_224": ("deit", "https://arxiv.org/abs/2012.12877"),
    "vim_tiny_patch16_224": ("vim", "https://arxiv.org/abs/2401.09417"),
    "vim_small_patch16_224": ("vim", "https://arxiv.org/abs/2401.09417"),
    "vig_tiny_patch16_224": ("vig", "https://arxiv.org/abs/2405.18425"),
    "vig_small_patch16_224": ("vig", "https://arxiv.org/abs/2405.18425"),
}

default_cfgs = {
    name: default_cfg(
        pool_size=None, classifier="head", paper_ids=paper, **HUB_SOURCES[name],
        first_conv="patch_embed.proj.0" if layout == "vig" else "patch_embed.proj",
    )
    for name, (layout, paper) in _PAPERS.items()
}


def _create(variant: str, pretrained: bool, **kwargs: Any) -> PlainVisionModel:
    args = {**MODEL_ARGS[variant], **kwargs}
    return build_vision_model(
        PlainVisionModel, variant, pretrained, default_out_indices=4, layout=_PAPERS[variant][0], **args
    )


@register_model
def omni_deit_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> PlainVisionModel:
    """DeiT-T (5.7M); loads timm ``deit_tiny_patch16_224`` weights."""
    return _create("omni_deit_tiny_patch16_224", pretrained, **kwargs)


@register_model
def omni_deit_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> PlainVisionModel:
    """DeiT-S (22M); loads timm ``deit_small_patch16_224`` weights."""
    return _create("omni_deit_small_patch16_224", pretrained, **kwargs)


@register_model
def vim_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> PlainVisionModel:
    """Vim-T (7M): 24 bidirectional Mamba blocks, dim 192, middle class token."""
    return _create("vim_tiny_patch16_224", pretrained, **kwargs)


@register_model
def vim_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> PlainVisionModel:
    """Vim-S (26M): 24 bidirectional Mamba blocks, dim 384."""
    return _create("vim_small_patch16_224", pretrained, **kwargs)


@register_model
def vig_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> PlainVisionModel:
    """ViG-T (6M): 12 BiGLA blocks with direction-wise gates and locality, dim 192."""
    return _create("vig_tiny_patch16_224", pretrained, **kwargs)


@register_model
def vig_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> PlainVisionModel:
    """ViG-S (23M): 12 BiGLA blocks, dim 384."""
    return _create("vig_small_patch16_224", pretrained, **kwargs)
