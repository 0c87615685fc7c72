"""Mask-based speech separators: front end -> masker -> decoder (Conv-TasNet style).

Luo & Mesgarani 2019, Conv-TasNet, https://arxiv.org/abs/1809.07454 (learned
conv encoder/decoder, masks in the encoded space); Luo et al. 2020, DPRNN,
https://arxiv.org/abs/1910.06379 (dual-path: intra-chunk then inter-chunk
modelling); Subakan et al. 2021, SepFormer, https://arxiv.org/abs/2010.13154
(dual-path with attention). Here the dual-path blocks take any registered
mixer (``attention``, ``mamba``, ``gla``, ``s5``, ``s4d``, ``fsmn``); a SaShiMi
U-Net can be the masker instead, or Conv-TasNet's own temporal conv network with a
block of any mixer in front of each stack (``TCNMasker``): the conv blocks reach
about 0.25 s at 8 kHz, and the mixer adds whole-mixture context.

The front ends live here rather than in ``omniseq.domains.audio`` because the
separator composes them and backbones may not import domains; the audio domain
re-exports them.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from omniseq.backbones.blocks import Block
from omniseq.backbones.config import records_config
from omniseq.backbones.sashimi import SaShiMi

__all__ = [
    "ConvDecoder",
    "ConvEncoder",
    "DualPathMasker",
    "MaskSeparator",
    "SaShiMiMasker",
    "STFTFrontEnd",
    "SinglePathMasker",
    "TCNMasker",
    "TemporalConvBlock",
    "TorchaudioConvTasNet",
    "check_waveform",
]


def check_waveform(wav: torch.Tensor, min_length: int, who: str) -> None:
    if wav.ndim != 2:
        raise ValueError(f"{who}: mixture must have shape (B, T) (mono; mix stereo down first), got {tuple(wav.shape)}")
    if wav.shape[-1] < min_length:
        raise ValueError(
            f"{who}: the mixture has {wav.shape[-1]} samples, shorter than the encoder kernel "
            f"({min_length} samples); pad it or use a longer recording"
        )


class ConvEncoder(nn.Module):
    """Learned analysis filterbank: ``(B, T) -> (B, L, channels)``, 50% overlap.

    ``activation="relu"`` rectifies the features (the Conv-TasNet paper);
    ``"none"`` keeps them linear, as torchaudio's ConvTasNet does, so no filter
    starts dead and the masks act on an invertible representation.
    """

    def __init__(
        self, channels: int = 256, kernel_size: int = 16, stride: int | None = None,
        activation: Literal["relu", "none"] = "relu",
    ) -> None:
        super().__init__()
        if activation not in ("relu", "none"):
            raise ValueError(f"ConvEncoder: activation must be 'relu' or 'none', got {activation!r}")
        self.kernel_size, self.stride = kernel_size, stride or kernel_size // 2
        self.channels = channels
        self.conv = nn.Conv1d(1, channels, kernel_size, stride=self.stride, bias=False)
        self.activation = nn.ReLU() if activation == "relu" else nn.Identity()

    def padding(self, length: int) -> int:
        """Right padding so that the frames cover every sample."""
        return (-(length - self.kernel_size)) % self.stride

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, dict]:
        check_waveform(wav, self.kernel_size, "ConvEncoder")
        length = wav.shape[-1]
        x = F.pad(wav[:, None], (0, self.padding(length)))
        return self.activation(self.conv(x)).transpose(1, 2), {"length": length}


class ConvDecoder(nn.Module):
    """Learned synthesis filterbank (transposed conv): ``(B, L, channels) -> (B, T)``."""

    def __init__(self, channels: int = 256, kernel_size: int = 16, stride: int | None = None) -> None:
        super().__init__()
        self.deconv = nn.ConvTranspose1d(channels, 1, kernel_size, stride=stride or kernel_size // 2, bias=False)

    def forward(self, feats: torch.Tensor, context: dict) -> torch.Tensor:
        return self.deconv(feats.transpose(1, 2))[:, 0, : context["length"]]


class STFTFrontEnd(nn.Module):
    """STFT magnitude features; decoding reuses the mixture phase (iSTFT).

    ``encode(wav (B, T)) -> (|X| (B, frames, n_fft // 2 + 1), context)`` and
    ``decode(masked magnitude, context) -> (B, T)``; an all-ones mask returns the
    input exactly (Hann window at 75% overlap satisfies COLA).
    """

    def __init__(self, n_fft: int = 256, hop_length: int | None = None) -> None:
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length or n_fft // 4
        self.kernel_size = n_fft
        self.channels = n_fft // 2 + 1
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def encode(self, wav: torch.Tensor) -> tuple[torch.Tensor, dict]:
        check_waveform(wav, self.n_fft, "STFTFrontEnd")
        spec = torch.stft(wav, self.n_fft, self.hop_length, window=self.window.to(wav.dtype), return_complex=True)
        phase = torch.polar(torch.ones_like(spec.real), spec.angle())
        return spec.abs().transpose(1, 2), {"length": wav.shape[-1], "phase": phase}

    def decode(self, magnitude: torch.Tensor, context: dict) -> torch.Tensor:
        phase = context["phase"]
        repeat = magnitude.shape[0] // phase.shape[0]
        spec = magnitude.transpose(1, 2) * phase.repeat_interleave(repeat, dim=0)
        return torch.istft(
            spec, self.n_fft, self.hop_length, window=self.window.to(magnitude.dtype), length=context["length"]
        )


def _sinusoidal(length: int, dim: int, device, dtype) -> torch.Tensor:
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)[:, : dim // 2]
    return table.to(dtype)


class _FrameMasker(nn.Module):
    """The ends every masker shares: GroupNorm + bottleneck in, PReLU + linear + mask out.

    Subclasses build the input end, then their sequence model, then the output end,
    in that order (it fixes the seeded initialisation), and implement ``_frames``.
    """

    def _build_input(self, channels: int, num_sources: int, dim: int) -> None:
        self.num_sources, self.channels = num_sources, channels
        self.norm = nn.GroupNorm(1, channels)
        self.bottleneck = nn.Linear(channels, dim)

    @staticmethod
    def _block_options(
        mixer: str | None, mixer_options: dict | None, mlp_ratio: float, dropout: float, num_heads: int | None
    ) -> dict:
        """Keyword options of the masker's ``Block``s (heads only for the mixers that have them)."""
        options = dict(mixer=mixer, mixer_options=mixer_options, mlp_ratio=mlp_ratio, drop=dropout)
        if mixer in ("attention", "gla"):
            options["num_heads"] = num_heads
        return options

    def _build_output(self, channels: int, num_sources: int, dim: int, mask_activation: str) -> None:
        self.out = nn.Sequential(nn.PReLU(), nn.Linear(dim, num_sources * channels))
        self.mask_activation = nn.ReLU() if mask_activation == "relu" else nn.Sigmoid()

    def _frames(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, L, dim) -> (B, L, dim)``: the masker's sequence model."""
        raise NotImplementedError

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        B, L, N = feats.shape
        x = self.bottleneck(self.norm(feats.transpose(1, 2)).transpose(1, 2))
        masks = self.out(self._frames(x)).reshape(B, L, self.num_sources, N)
        return self.mask_activation(masks.permute(0, 2, 1, 3))


class DualPathMasker(_FrameMasker):
    """Dual-path masker: ``(B, L, channels) -> masks (B, num_sources, L, channels)``.

    Frames are cut into chunks of ``chunk_size`` with 50% overlap; each of
    ``num_repeats`` rounds runs ``depth`` blocks along each chunk (intra) and
    ``depth`` blocks across chunks (inter), then the chunks are overlap-added.
    ``positional=True`` adds sinusoidal positions before each pass (SepFormer);
    it defaults to on for attention only, the other mixers are order-aware.
    """

    def __init__(
        self,
        channels: int,
        num_sources: int = 2,
        dim: int = 64,
        chunk_size: int = 100,
        num_repeats: int = 2,
        depth: int = 1,
        mixer: str = "attention",
        mixer_options: dict | None = None,
        num_heads: int | None = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        positional: bool | None = None,
        mask_activation: Literal["relu", "sigmoid"] = "relu",
    ) -> None:
        super().__init__()
        if chunk_size < 2:
            raise ValueError(f"DualPathMasker: chunk_size must be >= 2, got {chunk_size}")
        self.chunk_size = chunk_size
        self.positional = (mixer == "attention") if positional is None else positional
        self._build_input(channels, num_sources, dim)
        options = self._block_options(mixer, mixer_options, mlp_ratio, dropout, num_heads)

        def stack() -> nn.Sequential:
            return nn.Sequential(*(Block(dim, **options) for _ in range(depth)))

        self.intra = nn.ModuleList(stack() for _ in range(num_repeats))
        self.inter = nn.ModuleList(stack() for _ in range(num_repeats))
        self._build_output(channels, num_sources, dim, mask_activation)

    def _chunk(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``(B, L, D) -> (B, C, K, D)`` with hop K/2 and half a chunk of padding on each side."""
        K, hop = self.chunk_size, self.chunk_size // 2
        L = x.shape[1]
        pad_right = hop + (-(L + hop - K)) % hop
        x = F.pad(x, (0, 0, hop, pad_right))
        chunks = x.unfold(1, K, hop)  # (B, C, D, K)
        return chunks.transpose(2, 3), L

    def _merge(self, chunks: torch.Tensor, length: int) -> torch.Tensor:
        """Overlap-add ``(B, C, K, D) -> (B, L, D)`` (inverse of ``_chunk`` up to the 2x overlap)."""
        B, C, K, D = chunks.shape
        hop = K // 2
        total = (C - 1) * hop + K
        folded = F.fold(
            chunks.permute(0, 3, 2, 1).reshape(B, D * K, C), (1, total), (1, K), stride=(1, hop)
        )
        return folded.reshape(B, D, total).transpose(1, 2)[:, hop : hop + length]

    def _pass(self, blocks: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        if self.positional:
            x = x + _sinusoidal(x.shape[1], x.shape[2], x.device, x.dtype)
        return blocks(x)

    def _frames(self, x: torch.Tensor) -> torch.Tensor:
        chunks, length = self._chunk(x)
        B, C, K, D = chunks.shape
        for intra, inter in zip(self.intra, self.inter, strict=True):
            chunks = chunks + self._pass(intra, chunks.reshape(B * C, K, D)).reshape(B, C, K, D)
            across = chunks.transpose(1, 2).reshape(B * K, C, D)
            chunks = chunks + self._pass(inter, across).reshape(B, K, C, D).transpose(1, 2)
        return self._merge(chunks, length)


class SinglePathMasker(_FrameMasker):
    """Blocks over the whole frame sequence (Conv-TasNet's TCN layout, any mixer):
    ``(B, L, channels) -> masks (B, num_sources, L, channels)``.

    ``block_mixer_options`` are per-block overrides of ``mixer_options``, cycled
    over the ``depth`` blocks; e.g. ``[{"dilation": 1}, {"dilation": 2}, ...]``
    gives an ``fsmn`` stack the exponentially growing reach of a TCN.
    """

    def __init__(
        self,
        channels: int,
        num_sources: int = 2,
        dim: int = 64,
        depth: int = 8,
        mixer: str = "fsmn",
        mixer_options: dict | None = None,
        block_mixer_options: list[dict] | None = None,
        num_heads: int | None = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        mask_activation: Literal["relu", "sigmoid"] = "sigmoid",
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"SinglePathMasker: depth must be >= 1, got {depth}")
        self._build_input(channels, num_sources, dim)
        per_block = block_mixer_options or [{}]
        options = self._block_options(mixer, None, mlp_ratio, dropout, num_heads)
        options.pop("mixer_options")
        self.blocks = nn.Sequential(*(
            Block(dim, mixer_options={**(mixer_options or {}), **per_block[i % len(per_block)]}, **options)
            for i in range(depth)
        ))
        self._build_output(channels, num_sources, dim, mask_activation)

    def _frames(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class TemporalConvBlock(nn.Module):
    """Conv-TasNet's 1-D conv block on ``(B, dim, L)``: 1x1 up, PReLU, gLN, dilated
    depthwise conv, PReLU, gLN, then 1x1 back down to a residual and a skip output.

    gLN (global layer norm: statistics over channels and time, a per-channel affine)
    is ``GroupNorm`` with one group. The network's last block has no residual
    (nothing reads it, and an unused parameter would stall DDP).
    """

    def __init__(self, dim: int, hidden: int, kernel_size: int, dilation: int, residual: bool = True) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv1d(dim, hidden, 1), nn.PReLU(), nn.GroupNorm(1, hidden, eps=1e-8))
        self.depthwise = nn.Sequential(
            nn.Conv1d(hidden, hidden, kernel_size, dilation=dilation, padding=dilation * (kernel_size - 1) // 2,
                      groups=hidden),
            nn.PReLU(), nn.GroupNorm(1, hidden, eps=1e-8),
        )
        self.residual = nn.Conv1d(hidden, dim, 1) if residual else None
        self.skip = nn.Conv1d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.depthwise(self.expand(x))
        return (x if self.residual is None else x + self.residual(hidden)), self.skip(hidden)


class TCNMasker(_FrameMasker):
    """Conv-TasNet's temporal conv network with a sequence mixer in front of every stack:
    ``(B, L, channels) -> masks (B, num_sources, L, channels)``.

    Each of ``stacks`` stacks is ``mixer_depth`` residual mixer blocks (any registered
    mixer, over the whole frame sequence) followed by ``layers`` conv blocks with
    dilations 1, 2, 4, ...; the masks come from the sum of the conv blocks' skip outputs.
    The conv blocks see a few hundred milliseconds; the mixer gives every stack the whole
    recording (speaker identity, long pauses). ``mixer=None`` leaves the plain TCN.
    ``mixer_pool > 1`` runs the mixer blocks on frames averaged in groups of that size
    and adds their update back at full rate: context needs no fine time resolution,
    and it divides the mixers' cost by that factor (attention's by its square).
    """

    def __init__(
        self,
        channels: int,
        num_sources: int = 2,
        dim: int = 64,
        hidden: int = 128,
        kernel_size: int = 3,
        layers: int = 6,
        stacks: int = 2,
        mixer: str | None = "mamba",
        mixer_options: dict | None = None,
        mixer_depth: int = 1,
        mixer_pool: int = 1,
        num_heads: int | None = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        mask_activation: Literal["relu", "sigmoid"] = "sigmoid",
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0 or min(layers, stacks, mixer_pool) < 1:
            raise ValueError(
                f"TCNMasker: kernel_size must be odd and layers, stacks, mixer_pool >= 1, "
                f"got {kernel_size}, {layers}, {stacks}, {mixer_pool}"
            )
        self.mixer_pool = mixer_pool
        self._build_input(channels, num_sources, dim)
        options = self._block_options(mixer, mixer_options, mlp_ratio, dropout, num_heads)
        self.mixers = nn.ModuleList(
            nn.Sequential(*(Block(dim, **options) for _ in range(mixer_depth if mixer else 0)))
            for _ in range(stacks)
        )
        self.convs = nn.ModuleList(
            nn.ModuleList(
                TemporalConvBlock(dim, hidden, kernel_size, 2**i, residual=(s, i) != (stacks - 1, layers - 1))
                for i in range(layers)
            )
            for s in range(stacks)
        )
        self._build_output(channels, num_sources, dim, mask_activation)

    def _mix(self, mixers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        if len(mixers) == 0 or self.mixer_pool == 1:
            return mixers(x)
        length, pool = x.shape[1], self.mixer_pool
        # ceil_mode averages a short last group over the frames it has.
        pooled = F.avg_pool1d(x.transpose(1, 2), pool, ceil_mode=True).transpose(1, 2)
        update = mixers(pooled) - pooled
        return x + update.repeat_interleave(pool, dim=1)[:, :length]

    def _frames(self, x: torch.Tensor) -> torch.Tensor:
        # The conv blocks run channels-first on contiguous tensors (a transposed view costs
        # each convolution a copy); the mixer blocks take (B, L, dim).
        skips = None
        for mixers, convs in zip(self.mixers, self.convs, strict=True):
            x = self._mix(mixers, x).transpose(1, 2).contiguous()
            for block in convs:
                x, skip = block(x)
                skips = skip if skips is None else skips + skip
            x = x.transpose(1, 2)
        return skips.transpose(1, 2)


class SaShiMiMasker(_FrameMasker):
    """Non-causal SaShiMi over the encoded frames: ``(B, L, channels) -> (B, S, L, channels)``."""

    def __init__(
        self,
        channels: int,
        num_sources: int = 2,
        dim: int = 64,
        pools: tuple[int, ...] = (4, 4),
        expand: int = 2,
        depth: int = 2,
        mixer: str = "s4d",
        mixer_options: dict | None = None,
        dropout: float = 0.0,
        mask_activation: Literal["relu", "sigmoid"] = "relu",
    ) -> None:
        super().__init__()
        self._build_input(channels, num_sources, dim)
        self.sashimi = SaShiMi(
            dim, pools=pools, expand=expand, depth=depth, mixer=mixer, mixer_options=mixer_options,
            causal=False, dropout=dropout,
        )
        self._build_output(channels, num_sources, dim, mask_activation)

    def _frames(self, x: torch.Tensor) -> torch.Tensor:
        return self.sashimi(x)


@records_config
class MaskSeparator(nn.Module):
    """Waveform separator ``(B, T) -> (B, num_sources, T)``: encode, mask, decode.

    Args:
        num_sources: speakers to separate (2 or 3).
        front_end: ``conv`` (learned, Conv-TasNet) or ``stft`` (magnitude masks, mixture phase).
        channels: filters of the conv front end (ignored by ``stft``: ``n_fft // 2 + 1``).
        kernel_size: conv kernel in samples (stride = half of it), or ``n_fft`` for ``stft``.
        masker: ``dualpath``, ``singlepath``, ``sashimi`` or ``tcn``.
        masker_options: keyword options of ``DualPathMasker`` / ``SinglePathMasker`` / ``SaShiMiMasker``
            / ``TCNMasker``
            (e.g. ``{"mixer": "mamba", "dim": 64, "chunk_size": 100}``).
        encoder_activation: ``relu`` or ``none`` (linear filterbank) for the conv front end.
    """

    def __init__(
        self,
        num_sources: int = 2,
        front_end: Literal["conv", "stft"] = "conv",
        channels: int = 128,
        kernel_size: int = 16,
        masker: Literal["dualpath", "singlepath", "sashimi", "tcn"] = "dualpath",
        masker_options: dict | None = None,
        encoder_activation: Literal["relu", "none"] = "relu",
    ) -> None:
        super().__init__()
        self.num_sources = num_sources
        if front_end == "conv":
            self.encoder = ConvEncoder(channels, kernel_size, activation=encoder_activation)
            self.decoder = ConvDecoder(channels, kernel_size)
            self.stft = None
        elif front_end == "stft":
            self.stft = STFTFrontEnd(kernel_size)
            channels = self.stft.channels
        else:
            raise ValueError(f"front_end must be 'conv' or 'stft', got {front_end!r}")
        self.kernel_size = kernel_size
        maskers = {
            "dualpath": DualPathMasker, "singlepath": SinglePathMasker, "sashimi": SaShiMiMasker, "tcn": TCNMasker,
        }
        if masker not in maskers:
            raise ValueError(f"masker must be one of {sorted(maskers)}, got {masker!r}")
        self.masker = maskers[masker](channels, num_sources=num_sources, **(masker_options or {}))

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        check_waveform(wav, self.kernel_size, type(self).__name__)
        if self.stft is not None:
            feats, context = self.stft.encode(wav)
        else:
            feats, context = self.encoder(wav)
        masks = self.masker(feats)  # (B, S, L, N)
        B, S, L, N = masks.shape
        masked = (masks * feats[:, None]).reshape(B * S, L, N)
        if self.stft is not None:
            out = self.stft.decode(masked, context)
        else:
            out = self.decoder(masked, context)
        return out.reshape(B, S, -1)


@records_config
class TorchaudioConvTasNet(nn.Module):
    """torchaudio's ConvTasNet behind the separator interface ``(B, T) -> (B, S, T)``.

    The baseline of ``benchmarks/separation.py``; arguments are torchaudio's
    (defaults: the paper's best configuration, 5.1M parameters).
    """

    def __init__(
        self,
        num_sources: int = 2,
        enc_kernel_size: int = 16,
        enc_num_feats: int = 512,
        msk_kernel_size: int = 3,
        msk_num_feats: int = 128,
        msk_num_hidden_feats: int = 512,
        msk_num_layers: int = 8,
        msk_num_stacks: int = 3,
        msk_activate: str = "sigmoid",
    ) -> None:
        super().__init__()
        from torchaudio.models import ConvTasNet

        self.num_sources, self.kernel_size = num_sources, enc_kernel_size
        self.model = ConvTasNet(
            num_sources, enc_kernel_size, enc_num_feats, msk_kernel_size, msk_num_feats,
            msk_num_hidden_feats, msk_num_layers, msk_num_stacks, msk_activate,
        )

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        check_waveform(wav, self.kernel_size, type(self).__name__)
        return self.model(wav[:, None])[..., : wav.shape[-1]]
