"""TSMixer: all-MLP time and feature mixing (Chen et al. 2023, https://arxiv.org/abs/2303.06053).

Tokens are time steps (``seq_len`` tokens of width C). Each block mixes along
time (the ``mlp`` mixer: one ``Linear(seq_len, seq_len)`` + ReLU shared by all
channels, or any swapped mixer run bidirectionally over the lookback) and then
along features (a two-layer MLP ``C -> ff_dim -> C``), each as a normalised
residual branch with dropout. A linear temporal projection maps ``seq_len`` to
``pred_len``; RevIN wraps the whole model (the paper's TSMixer-RevIN).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from omniseq.backbones.mixers import build_mixer
from omniseq.backbones.revin import RevIN, check_series_input
from omniseq.kernels.narrow_mlp import narrow_mlp

__all__ = ["TSMixer", "TSMixerBlock"]

TSMixerNorm = Literal["layernorm", "batchnorm", "none"]


class _JointBatchNorm(nn.Module):
    """Batch norm with separate statistics per (time, channel) entry.

    Matches the reference code's ``BatchNormalization(axis=[-2, -1])``.
    """

    def __init__(self, seq_len: int, num_channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(seq_len * num_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.flatten(1)).view_as(x)


def _make_norm(kind: TSMixerNorm, seq_len: int, num_channels: int) -> nn.Module:
    if kind == "layernorm":
        # Normalises each sample over time and channels together, as the
        # reference code's LayerNormalization(axis=[-2, -1]).
        return nn.LayerNorm((seq_len, num_channels))
    if kind == "batchnorm":
        return _JointBatchNorm(seq_len, num_channels)
    if kind == "none":  # TSLib's TSMixer has no normalisation layers
        return nn.Identity()
    raise ValueError(f"TSMixer: norm must be 'layernorm', 'batchnorm' or 'none', got {kind!r}")


class TSMixerBlock(nn.Module):
    """One TSMixer residual block: time mixing, then feature mixing; ``(B, L, C) -> (B, L, C)``."""

    def __init__(
        self,
        seq_len: int,
        num_channels: int,
        ff_dim: int,
        dropout: float,
        mixer: str = "mlp",
        mixer_options: dict | None = None,
        norm: TSMixerNorm = "layernorm",
        hidden_dropout: float | None = None,
    ) -> None:
        super().__init__()
        self.time_norm = _make_norm(norm, seq_len, num_channels)
        # num_heads=1: the token width is the channel count, often prime (7 for ETT).
        context = {"causal": False, "seq_len": seq_len, "num_heads": 1}
        self.time_mixer = build_mixer(mixer, num_channels, **{**context, **(mixer_options or {})})
        self.time_drop = nn.Dropout(dropout)
        self.feature_norm = _make_norm(norm, seq_len, num_channels)
        # Holds the parameters (state-dict keys feature_mlp.0/.3, as before); forward runs its
        # layers 0-3 as one narrow_mlp op, which is several times faster on the CPU for few channels.
        self.feature_mlp = nn.Sequential(
            nn.Linear(num_channels, ff_dim),
            nn.ReLU(),
            nn.Dropout(dropout if hidden_dropout is None else hidden_dropout),
            nn.Linear(ff_dim, num_channels),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.time_drop(self.time_mixer(self.time_norm(x)))
        fc1, _, hidden_drop, fc2, out_drop = self.feature_mlp
        mixed = narrow_mlp(self.feature_norm(x), fc1.weight, fc1.bias, fc2.weight, fc2.bias, hidden_drop.p,
                           self.training)
        return x + out_drop(mixed)


class TSMixer(nn.Module):
    """TSMixer forecaster: ``forward(x (B, seq_len, C), x_mark=None)`` -> ``(B, pred_len, C)``.

    Args:
        seq_len: lookback length L.
        pred_len: forecast horizon H.
        num_channels: C (the DataModule's ``num_channels``).
        n_block: number of mixer blocks.
        ff_dim: hidden width of the feature-mixing MLP.
        dropout: dropout in both mixing branches (the paper tunes it per dataset,
            up to 0.9 on ETT).
        mixer: time-mixing mixer; ``mlp`` is the paper's.
        mixer_options: extra options for the mixer.
        norm: ``layernorm`` (over time and channels per sample), ``batchnorm``
            (per time-channel entry over the batch) or ``none``. TSLib's TSMixer is
            ``norm="none", use_norm=False, mixer_options={"hidden": d_model}, hidden_dropout=0``.
        use_norm: wrap the model in affine RevIN.
        hidden_dropout: dropout on the feature MLP's hidden layer (default: ``dropout``,
            as the paper's code; TSLib drops only the branch output, ``0.0``).

    ``x_mark`` is accepted for interface parity and ignored: TSMixer's basic form
    uses no calendar features.
    """

    def __init__(
        self,
        seq_len: int,
        pred_len: int,
        num_channels: int,
        n_block: int = 2,
        ff_dim: int = 64,
        dropout: float = 0.1,
        mixer: str = "mlp",
        mixer_options: dict | None = None,
        norm: TSMixerNorm = "layernorm",
        use_norm: bool = True,
        hidden_dropout: float | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("seq_len", seq_len), ("pred_len", pred_len),
                            ("num_channels", num_channels), ("n_block", n_block), ("ff_dim", ff_dim)):
            if value <= 0:
                raise ValueError(f"TSMixer: {name} must be positive, got {value}")
        self.seq_len, self.pred_len, self.num_channels = seq_len, pred_len, num_channels
        self.normalizer = RevIN(num_channels, affine=True) if use_norm else None
        self.blocks = nn.ModuleList(
            TSMixerBlock(seq_len, num_channels, ff_dim, dropout, mixer, mixer_options, norm, hidden_dropout)
            for _ in range(n_block)
        )
        self.temporal_projection = nn.Linear(seq_len, pred_len)

    def forward(self, x: torch.Tensor, x_mark: torch.Tensor | None = None) -> torch.Tensor:
        check_series_input("TSMixer", x, self.seq_len, self.num_channels, x_mark)
        stats = None
        if self.normalizer is not None:
            x, stats = self.normalizer.normalize(x)
        for block in self.blocks:
            x = block(x)
        y = self.temporal_projection(x.transpose(1, 2)).transpose(1, 2)
        if stats is not None:
            y = self.normalizer.denormalize(y, stats)
        return y
