"""The residual block every architecture reuses: norm, mixer, norm, channel MLP.

Parameter names follow timm's ViT block (``norm1``, ``ls1``, ``drop_path1``, ...)
so that timm checkpoints map onto it with a rename of ``attn`` to ``mixer``.
"""

from __future__ import annotations

from typing import Literal

import torch
from timm.layers import DropPath, GluMlp, LayerScale, Mlp
from torch import nn

from omniseq.backbones.mixers import build_mixer
from omniseq.backbones.norms import FastRmsNorm
from omniseq.kernels.glu_mlp import glu_mlp_inference

NormName = Literal["layernorm", "rmsnorm"]
ChannelMixer = Literal["mlp", "glu", "swiglu", "none"]


def make_norm(kind: NormName, dim: int, eps: float = 1e-5) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    if kind == "rmsnorm":
        return FastRmsNorm(dim, eps=eps)
    raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {kind!r}")


def make_channel_mixer(
    kind: ChannelMixer, dim: int, hidden: int, act: type[nn.Module], drop: float
) -> nn.Module:
    if kind == "mlp":
        return Mlp(dim, hidden, act_layer=act, drop=drop)
    if kind == "glu":
        # GluMlp splits its hidden width into value and gate halves.
        return GluMlp(dim, 2 * hidden, act_layer=nn.SiLU, drop=drop)
    if kind == "swiglu":
        # GLA's / ViG's MLP: one bias-free fc1 whose first half is the SiLU gate.
        return PackedSwiGLU(dim, 2 * hidden, bias=False, drop=drop)
    raise ValueError(f"channel mixer must be 'mlp', 'glu' or 'swiglu' (or 'none' in Block), got {kind!r}")


class PackedSwiGLU(GluMlp):
    """timm's ``SwiGLUPacked`` (same parameters and keys); without autograd on the CPU it
    runs :func:`omniseq.kernels.glu_mlp.glu_mlp_inference`, token blocks that stay in cache."""

    def __init__(self, in_features: int, hidden_features: int, bias: bool = True, drop: float = 0.0) -> None:
        super().__init__(in_features, hidden_features, act_layer=nn.SiLU, bias=bias, drop=drop, gate_last=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fc1, fc2 = self.fc1, self.fc2
        inference = not torch.is_grad_enabled() or not (
            x.requires_grad or any(p.requires_grad for p in self.parameters())
        )
        if (
            not inference or x.device.type != "cpu" or torch.is_autocast_enabled("cpu")
            or not isinstance(self.norm, nn.Identity) or (self.training and self.drop1.p + self.drop2.p > 0)
            or x.dtype != fc1.weight.dtype
        ):
            return super().forward(x)
        return glu_mlp_inference(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, _silu_)


def _silu_(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.silu(x, inplace=True)


class Block(nn.Module):
    """Residual mixer block (pre-norm by default; post-norm as in iTransformer).

    Args:
        dim: token width.
        mixer: registered mixer name (see ``omniseq.backbones.mixers.list_mixers``).
        mixer_options: extra keyword options for that mixer.
        mlp_ratio: channel-MLP hidden width as a multiple of ``dim``.
        channel_mixer: ``"mlp"``, ``"glu"`` or ``"none"``.
        norm: ``"layernorm"`` or ``"rmsnorm"``.
        prenorm: normalise before each branch (True) or after each residual (False).
        layer_scale: initial value of LayerScale, or None to disable.
        causal, seq_len, num_heads: context forwarded to the mixer.
    """

    def __init__(
        self,
        dim: int,
        mixer: str = "attention",
        mixer_options: dict | None = None,
        mlp_ratio: float = 4.0,
        channel_mixer: ChannelMixer = "mlp",
        norm: NormName = "layernorm",
        norm_eps: float = 1e-5,
        prenorm: bool = True,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale: float | None = None,
        causal: bool = False,
        seq_len: int | None = None,
        num_heads: int | None = None,
    ) -> None:
        super().__init__()
        self.dim = dim
        context = {"causal": causal, "seq_len": seq_len, "num_heads": num_heads}
        context = {k: v for k, v in context.items() if v is not None}
        self.prenorm = prenorm
        self.norm1 = make_norm(norm, dim, norm_eps)
        self.mixer = build_mixer(mixer, dim, **{**context, **(mixer_options or {})})
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.drop1 = nn.Dropout(drop)
        # channel_mixer="none" drops the whole second branch, norm included.
        self.has_mlp = channel_mixer != "none"
        if self.has_mlp:
            self.norm2 = make_norm(norm, dim, norm_eps)
            hidden = int(round(dim * mlp_ratio, 6))  # 192 * 8 / 3 is 511.99999999999994
            self.mlp = make_channel_mixer(channel_mixer, dim, hidden, act_layer, drop)
            self.ls2 = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()
            self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _mix(self, x: torch.Tensor, grid) -> torch.Tensor:
        return self.drop1(self.mixer(x, grid=grid))

    def _channel(self, x: torch.Tensor) -> torch.Tensor:
        if not self.has_mlp:
            return x
        if self.prenorm:
            return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return self.norm2(x + self.drop_path2(self.ls2(self.mlp(x))))

    def forward(self, x: torch.Tensor, grid: tuple[int, ...] | None = None) -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] != self.dim:  # else a LayerNorm error that names no block
            raise ValueError(f"Block expects tokens of shape (B, L, {self.dim}), got {tuple(x.shape)}")
        if self.prenorm:
            x = x + self.drop_path1(self.ls1(self._mix(self.norm1(x), grid)))
        else:
            x = self.norm1(x + self.drop_path1(self.ls1(self._mix(x, grid))))
        return self._channel(x)

    def init_state(self, batch_size: int, device=None, dtype=None):
        return self.mixer.init_state(batch_size, device=device, dtype=dtype)

    def step(self, x_t: torch.Tensor, state):
        """One token ``(B, dim)`` through the block; equals ``forward`` position by position."""
        if self.prenorm:
            y_t, state = self.mixer.step(self.norm1(x_t), state)
            x_t = x_t + self.ls1(y_t)
        else:
            y_t, state = self.mixer.step(x_t, state)
            x_t = self.norm1(x_t + self.ls1(y_t))
        return self._channel(x_t), state
