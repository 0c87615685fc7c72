"""ConvS5: convolutional state spaces over frame sequences (Smith et al. 2023,
https://arxiv.org/abs/2303.03982).

The state of each layer is a grid ``(P, H, W)`` of complex numbers; every state
channel p decays with its own diagonal eigenvalue ``Lambda_p``:

    x_t = Abar * x_{t-1} + Bbar (*) u_t,      y_t = Re(C (*) x_t) + D * u_t

where ``(*)`` is a 3x3 convolution over space. Discretisation is zero-order
hold: ``Abar = exp(Lambda dt)`` and ``Bbar = (Abar - 1) / Lambda * B``, which
only rescales the output channels of the B kernel, so ``Bbar (*) u`` is still
one convolution. Because the state update is elementwise in space, the whole
sequence is one diagonal linear recurrence over time; ``step`` runs the same
recurrence one frame at a time (autoregressive generation) and equals the parallel form.

The frames stay channels-last and time-major (frame ``t*B + b``) from the encoder to
the head. With the B kernel's output channels interleaved (real, imaginary, real, ...),
the convolution's output viewed complex is the state sequence, scanned in place one
contiguous time step at a time, and then the C convolution's input: B convolution, scan
and readout are one op (:func:`omniseq.kernels.conv_scan`) that keeps one state sequence
per layer for backward and none in the last block, which reads out only the last frame.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from omniseq.kernels.conv_scan import conv_scan
from omniseq.kernels.gelu_mix import gelu_mix_dropout

__all__ = ["ConvS5", "ConvS5Block", "ConvS5Layer", "FrameForecaster", "check_frames"]


def check_frames(name: str, x: torch.Tensor, channels: int | None = None) -> None:
    """Frames must be ``(B, T, C, H, W)`` (with ``C == channels`` when given) and finite."""
    expected = "C" if channels is None else str(channels)
    if x.ndim != 5 or (channels is not None and x.shape[2] != channels):
        raise ValueError(f"{name}: x must have shape (B, T, {expected}, H, W), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: x contains NaN or inf; fill masked cells (e.g. with 0) first")


def _complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


class _LastFrames(torch.autograd.Function):
    """``frames[-count:]`` whose gradient comes back in the frames' memory format: a plain
    slice's backward returns a contiguous (NCHW) tensor, which would turn every gradient
    upstream of the last block NCHW and make each channels-last op reorder it."""

    @staticmethod
    def forward(ctx, frames, count):  # type: ignore[override]
        ctx.shape, ctx.count = frames.shape, count
        ctx.channels_last = frames.is_contiguous(memory_format=torch.channels_last)
        return frames[-count:]

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        layout = torch.channels_last if ctx.channels_last else torch.contiguous_format
        full = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device, memory_format=layout)
        full[:-ctx.count].zero_()
        full[-ctx.count:] = grad
        return full, None


class ConvS5Layer(nn.Module):
    """One ConvS5 state space layer: ``(B, T, U, H, W) -> (B, T, U, H, W)``.

    Args:
        dim: U, input/output channels.
        state_dim: P, complex state channels per cell.
        kernel_size: spatial size of the B and C convolutions (3 in the paper).
        dt_min, dt_max: range of the log-uniform initial timescales.
        recompute_states: in training, keep a few states for backward and recompute the rest
            there (one more B convolution per frame): much less memory for some more time.
    """

    def __init__(
        self, dim: int, state_dim: int = 32, kernel_size: int = 3, dt_min: float = 1e-3, dt_max: float = 1e-1,
        recompute_states: bool = False,
    ) -> None:
        super().__init__()
        if dim <= 0 or state_dim <= 0 or kernel_size % 2 == 0:
            raise ValueError(
                f"ConvS5Layer: need dim > 0, state_dim > 0 and an odd kernel_size, got "
                f"{dim}, {state_dim}, {kernel_size}"
            )
        self.dim, self.state_dim, self.padding = dim, state_dim, kernel_size // 2
        self.recompute_states = recompute_states
        # S4D-Lin eigenvalues -1/2 + i pi n, Re kept negative through -exp(.).
        self.Lambda_re_log = nn.Parameter(torch.full((state_dim,), math.log(0.5)))
        self.Lambda_im = nn.Parameter(math.pi * torch.arange(state_dim, dtype=torch.float32))
        log_dt = torch.rand(state_dim) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)
        fan_b, fan_c = dim * kernel_size**2, state_dim * kernel_size**2
        # Real and imaginary parts stored as real tensors (optimisers, .double()).
        self.B = nn.Parameter(torch.randn(2, state_dim, dim, kernel_size, kernel_size) / math.sqrt(2 * fan_b))
        self.C = nn.Parameter(torch.randn(2, dim, state_dim, kernel_size, kernel_size) / math.sqrt(fan_c))
        self.D = nn.Parameter(torch.randn(dim))
        for p in (self.Lambda_re_log, self.Lambda_im, self.log_dt):
            p._no_weight_decay = True  # SSM dynamics are exempt from weight decay (S4/S5 practice)

    def discretize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """ZOH: ``Abar (P,)`` complex and the Bbar kernel as real ``(2P, U, k, k)`` (real parts, then imaginary)."""
        Lambda = torch.complex(-torch.exp(self.Lambda_re_log), self.Lambda_im)
        Abar = torch.exp(Lambda * torch.exp(self.log_dt))
        scale = ((Abar - 1) / Lambda)[:, None, None, None]
        B = torch.complex(self.B[0], self.B[1])
        Bbar = scale * B
        return Abar, torch.cat([Bbar.real, Bbar.imag], dim=0)

    def _input(self, u: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """``Bbar (*) u`` for frames ``(N, U, H, W)`` -> complex ``(N, P, H, W)``."""
        z = F.conv2d(u, kernel.to(u.dtype), padding=self.padding)
        return torch.complex(z[:, : self.state_dim], z[:, self.state_dim :])

    def _readout(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``Re(C (*) x) + D u`` for complex states ``(N, P, H, W)``."""
        # Re(C x) = Re C * Re x - Im C * Im x, as one real convolution.
        kernel = torch.cat([self.C[0], -self.C[1]], dim=1).to(u.dtype)
        y = F.conv2d(torch.cat([x.real, x.imag], dim=1).to(u.dtype), kernel, padding=self.padding)
        return y + self.D.to(u.dtype)[:, None, None] * u

    def forward(
        self, u: torch.Tensor, state: torch.Tensor | None = None, last_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All outputs ``(B, T, U, H, W)`` (``(B, 1, U, H, W)``, the last, when ``last_only``)
        and the last state ``(B, P, H, W)`` (complex)."""
        check_frames("ConvS5Layer", u, self.dim)
        batch, length = u.shape[:2]
        y, last = self.forward_frames(u.transpose(0, 1).flatten(0, 1), length, state, last_only)
        return y.unflatten(0, (-1, batch)).transpose(0, 1), last

    def forward_frames(
        self, frames: torch.Tensor, length: int, state: torch.Tensor | None = None, last_only: bool = False,
        norm: nn.GroupNorm | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` on time-major frames ``(T*B, U, H, W)`` (frame ``t*B + b``), the
        layout :class:`ConvS5` keeps: every time step is then one contiguous slice. Given
        ``norm``, the layer reads ``norm(frames)`` (fused: only ``frames`` is kept for backward)."""
        Abar, kernel = self.discretize()
        p = self.state_dim
        # State channels interleaved (Re 0, Im 0, Re 1, ...): in channels-last memory the
        # convolution's output is the complex state, viewed without a copy.
        b_kernel = kernel.unflatten(0, (2, p)).transpose(0, 1).flatten(0, 1)
        # Re(C x) = Re C * Re x - Im C * Im x over the same interleaved channels.
        c_kernel = torch.stack([self.C[0], -self.C[1]], dim=2).flatten(1, 2)
        h0 = None if state is None else state.permute(0, 2, 3, 1)
        norm_args = None if norm is None else (norm.weight, norm.bias, norm.num_groups, norm.eps)
        y, last = conv_scan(frames, b_kernel, Abar, c_kernel, length, h0, last_only,
                            recompute=self.recompute_states and self.training, d=self.D, norm=norm_args)
        return y, last.permute(0, 3, 1, 2)

    def init_state(self, batch_size: int, height: int, width: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.zeros(batch_size, self.state_dim, height, width,
                           dtype=_complex_dtype(dtype), device=self.D.device)

    def step(self, u_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One frame ``(B, U, H, W)`` -> output frame and the new state."""
        if u_t.ndim != 4 or u_t.shape[1] != self.dim:
            raise ValueError(f"ConvS5Layer.step: u_t must have shape (B, {self.dim}, H, W), got {tuple(u_t.shape)}")
        Abar, kernel = self.discretize()
        state = Abar.to(state.dtype)[None, :, None, None] * state + self._input(u_t, kernel)
        return self._readout(state, u_t), state


class ConvS5Block(nn.Module):
    """Pre-norm residual block: ``u + Dropout(Conv1x1(GELU(ConvS5(GroupNorm(u)))))``."""

    def __init__(
        self, dim: int, state_dim: int = 32, kernel_size: int = 3, dropout: float = 0.0, recompute_states: bool = False
    ) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(1, dim)  # LayerNorm over (C, H, W) of each frame
        self.ssm = ConvS5Layer(dim, state_dim, kernel_size, recompute_states=recompute_states)
        self.mix = nn.Conv2d(dim, dim, 1)
        self.drop = nn.Dropout(dropout)

    def _branch_out(self, y: torch.Tensor) -> torch.Tensor:
        # self.drop(self.mix(F.gelu(y))), keeping only y for backward instead of three full tensors
        return gelu_mix_dropout(y, self.mix.weight, self.mix.bias, self.drop.p, self.training)

    def forward(
        self, u: torch.Tensor, state: torch.Tensor | None = None, last_only: bool = False, length: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, T, U, H, W)`` -> the same (only the last frame ``(B, 1, U, H, W)`` when
        ``last_only``) and the last state. Given ``length``, ``u`` is time-major frames
        ``(T*B, U, H, W)`` instead (as :class:`ConvS5` calls it), and so is the output."""
        if length is not None:
            return self._forward_frames(u, length, state, last_only)
        batch, length = u.shape[:2]
        y, last = self._forward_frames(u.transpose(0, 1).flatten(0, 1), length, state, last_only)
        return y.unflatten(0, (-1, batch)).transpose(0, 1), last

    def _forward_frames(
        self, u: torch.Tensor, length: int, state: torch.Tensor | None, last_only: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        y, last = self.ssm.forward_frames(u, length, state, last_only, norm=self.norm)
        skip = _LastFrames.apply(u, u.shape[0] // length) if last_only else u
        branch = self._branch_out(y)
        if branch.dtype != skip.dtype:  # (fp32 frames under autocast: the sum is fp32)
            return skip + branch, last
        return branch.add_(skip), last  # in place: nothing keeps the branch's output for backward

    def step(self, u_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, state = self.ssm.step(self.norm(u_t), state)
        return u_t + self._branch_out(y), state


class FrameForecaster(nn.Module):
    """Frame encoder, direct multi-horizon head and persistence residual.

    Shared by :class:`ConvS5` and the ConvLSTM baseline so that the two differ
    only in their temporal core; subclasses run that core between ``encoder``
    and :meth:`decode`.
    """

    def __init__(
        self, in_channels: int, out_channels: int, pred_len: int, dim: int, depth: int, residual: bool
    ) -> None:
        super().__init__()
        name = type(self).__name__
        for arg, value in (("in_channels", in_channels), ("out_channels", out_channels),
                           ("pred_len", pred_len), ("dim", dim), ("depth", depth)):
            if value <= 0:
                raise ValueError(f"{name}: {arg} must be positive, got {value}")
        if residual and out_channels > in_channels:
            raise ValueError(
                f"{name}: residual=True needs out_channels <= in_channels, got {out_channels} > {in_channels}"
            )
        self.in_channels, self.out_channels, self.pred_len = in_channels, out_channels, pred_len
        self.residual = residual
        self.encoder = nn.Conv2d(in_channels, dim, 3, padding=1)
        self.norm = nn.GroupNorm(1, dim)
        self.head = nn.Conv2d(dim, pred_len * out_channels, 3, padding=1)

    def decode(self, h_last: torch.Tensor, x_last: torch.Tensor) -> torch.Tensor:
        """Last hidden frame ``(B, dim, H, W)`` (+ last input frame) -> ``(B, pred_len, C_out, H, W)``."""
        y = self.head(self.norm(h_last)).unflatten(1, (self.pred_len, self.out_channels))
        if self.residual:
            y = y + x_last[:, None, : self.out_channels]
        return y


class ConvS5(FrameForecaster):
    """ConvS5 forecaster for gridded frames.

    ``forward(x (B, T, C_in, H, W)) -> (B, pred_len, C_out, H, W)``: a 3x3 conv
    encoder per frame, ``depth`` ConvS5 blocks over time, then a 3x3 conv head
    reads all ``pred_len`` future frames off the last time step (direct
    multi-horizon). With ``residual=True`` the head predicts the change from
    the last input frame (so a zero head is persistence), which needs
    ``C_out <= C_in`` with the targets being the first ``C_out`` inputs.

    Args:
        in_channels, out_channels: input and forecast variables per cell.
        pred_len: frames to forecast.
        dim: hidden channels U.
        state_dim: complex state channels P.
        depth: number of blocks.
        kernel_size: spatial kernel of B and C.
        dropout: in each block's output branch.
        residual: forecast the change from the last input frame.
        recompute_states: recompute each layer's states in backward instead of keeping them
            (see :class:`ConvS5Layer`): much less memory for some more time.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        pred_len: int,
        dim: int = 32,
        state_dim: int = 32,
        depth: int = 2,
        kernel_size: int = 3,
        dropout: float = 0.0,
        residual: bool = True,
        recompute_states: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, pred_len, dim, depth, residual)
        self.blocks = nn.ModuleList(
            ConvS5Block(dim, state_dim, kernel_size, dropout, recompute_states) for _ in range(depth))

    def forward_features(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Hidden frames ``(B, T, dim, H, W)`` after the blocks (parallel over time); with
        ``last_only`` the last block reads out only the last frame, ``(B, 1, dim, H, W)``."""
        check_frames("ConvS5", x, self.in_channels)
        batch, length = x.shape[:2]
        # Time-major channels-last frames through every block: each scan step is contiguous.
        # With one input variable the frames are NCHW and channels-last at once, and the
        # convolution reads their strides as NCHW: its output (and its backward's gradient) would
        # be reordered. Frames given channels-last strides explicitly keep it channels-last.
        frames = x.transpose(0, 1).flatten(0, 1)
        frames = torch.empty(frames.shape, dtype=frames.dtype, device=frames.device,
                             memory_format=torch.channels_last).copy_(frames)
        h = self.encoder(frames)
        for k, block in enumerate(self.blocks):
            h, _ = block(h, last_only=last_only and k == len(self.blocks) - 1, length=length)
        return h.unflatten(0, (-1, batch)).transpose(0, 1)

    def init_state(self, x_t: torch.Tensor) -> list[torch.Tensor]:
        """Zero states for frames shaped like ``x_t (B, C_in, H, W)``."""
        batch, _, height, width = x_t.shape
        return [b.ssm.init_state(batch, height, width, x_t.dtype) for b in self.blocks]

    def step(self, x_t: torch.Tensor, states: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One input frame ``(B, C_in, H, W)`` -> hidden frame ``(B, dim, H, W)`` and new states."""
        if x_t.ndim != 4 or x_t.shape[1] != self.in_channels:
            raise ValueError(f"ConvS5.step: x_t must have shape (B, {self.in_channels}, H, W), got {tuple(x_t.shape)}")
        h = self.encoder(x_t)
        new_states = []
        for block, state in zip(self.blocks, states, strict=True):
            h, state = block.step(h, state)
            new_states.append(state)
        return h, new_states

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The head reads only the last frame, so the last block computes only that frame.
        return self.decode(self.forward_features(x, last_only=True)[:, -1], x[:, -1])

    def forward_recurrent(self, x: torch.Tensor) -> torch.Tensor:
        """The same forecast computed frame by frame with ``step`` (streaming inference)."""
        check_frames("ConvS5", x, self.in_channels)
        states = self.init_state(x[:, 0])
        for t in range(x.shape[1]):
            h, states = self.step(x[:, t], states)
        return self.decode(h, x[:, -1])
