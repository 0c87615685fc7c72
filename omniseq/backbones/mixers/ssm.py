"""Diagonal complex state space mixers: S4D (convolutional) and S5 (MIMO, scan).

S4D: Gu et al. 2022, https://arxiv.org/abs/2206.11893 — per-channel SISO SSMs
computed as one long convolution (ZOH kernel, FFT), GELU, then a GLU output
projection as in the S4D reference layer.
S5: Smith et al. 2023, https://arxiv.org/abs/2208.04933 — one MIMO diagonal SSM
over all channels, run as a parallel linear scan on complex states.

Both keep complex parameters as real views (``(..., 2)``) so that ``.double()``
and optimisers treat them as ordinary real tensors, and keep ``Re(A) < 0`` by
parametrising ``Re(A) = -exp(.)``. Both use the conjugate-symmetric convention
``y = 2 Re(C x)``: N/2 stored modes stand for N real-valued ones.

Mixed precision: the complex parameters, their discretisation and the states are
at least fp32 (complex64) whatever the module's dtype (bf16 has no complex type),
and autocast never touches complex tensors; outputs return to the input's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from omniseq.backbones.mixers.registry import Mixer, register_mixer
from omniseq.kernels import fft_conv, linear_scan, ssm_conv_kernel

__all__ = ["S4D", "S5"]


def _log_uniform(n: int, low: float, high: float) -> torch.Tensor:
    return torch.rand(n) * (math.log(high) - math.log(low)) + math.log(low)


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _complex_param(real_view: torch.Tensor) -> torch.Tensor:
    return torch.view_as_complex(_at_least_fp32(real_view).contiguous())


def _complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def _no_weight_decay(*params: nn.Parameter) -> None:
    # SSM dynamics are sensitive to decay (the S4/S5 papers exempt them).
    for p in params:
        p._no_weight_decay = True


@register_mixer("s4d")
class S4D(Mixer):
    """S4D layer with S4D-Lin init: ``A_n = -1/2 + i pi n``, ZOH discretisation.

    ``causal=True`` is the convolution with a causal kernel, and has a recurrent
    ``step`` (complex state ``(B, dim, d_state // 2)``). ``causal=False`` adds an
    anti-causal convolution whose kernel shares A and dt but has its own ``C_b``.
    """

    def __init__(
        self,
        dim: int,
        d_state: int = 64,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dropout: float = 0.0,
        causal: bool = False,
    ) -> None:
        super().__init__(dim, causal)
        if d_state < 2 or d_state % 2:
            raise ValueError(
                f"s4d: d_state must be an even number >= 2 (conjugate pairs), got {d_state}"
            )
        modes = d_state // 2
        self.d_state = d_state
        self.log_dt = nn.Parameter(_log_uniform(dim, dt_min, dt_max))
        self.A_real = nn.Parameter(torch.full((dim, modes), math.log(0.5)))
        self.A_imag = nn.Parameter(
            math.pi * torch.arange(modes, dtype=torch.float32).repeat(dim, 1)
        )
        self.C = nn.Parameter(torch.view_as_real(torch.randn(dim, modes, dtype=torch.cfloat)))
        self.C_b = (
            None
            if causal
            else nn.Parameter(torch.view_as_real(torch.randn(dim, modes, dtype=torch.cfloat)))
        )
        self.D = nn.Parameter(torch.randn(dim))
        _no_weight_decay(self.log_dt, self.A_real, self.A_imag)
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.output_linear = nn.Linear(dim, 2 * dim)

    @property
    def A(self) -> torch.Tensor:
        return torch.complex(-torch.exp(_at_least_fp32(self.A_real)), _at_least_fp32(self.A_imag))

    def kernel(self, length: int, backward: bool = False) -> torch.Tensor:
        """Real convolution kernel ``(dim, length)`` of one direction."""
        C = _complex_param(self.C_b if backward else self.C)
        return ssm_conv_kernel(self.log_dt, self.A, C, length)

    def _head(self, y: torch.Tensor) -> torch.Tensor:
        return F.glu(self.output_linear(self.dropout(self.activation(y))), dim=-1)

    def forward(self, x: torch.Tensor, grid: Sequence[int] | None = None) -> torch.Tensor:
        self.check_input(x)
        L = x.shape[1]
        y = fft_conv(x, self.kernel(L), D=self.D)
        if not self.causal:
            y = y + fft_conv(x, self.kernel(L, backward=True), reverse=True)
        return self._head(y.to(x.dtype))

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        self.require_causal()
        ref = self.D
        return torch.zeros(
            batch_size,
            self.dim,
            self.d_state // 2,
            device=device or ref.device,
            dtype=_complex_dtype(dtype or ref.dtype),
        )

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_n <- exp(dt A) x_n + (exp(dt A) - 1) / A u``; the ZOH recurrence of the kernel."""
        self.require_causal()
        self.check_step_input(x_t)
        A = self.A
        decay = torch.exp(torch.exp(_at_least_fp32(self.log_dt))[:, None] * A)
        state = decay * state + ((decay - 1) / A) * x_t[:, :, None]
        y = 2 * (_complex_param(self.C) * state).sum(-1).real + self.D * x_t
        return self._head(y.to(x_t.dtype)), state


@register_mixer("s5")
class S5(Mixer):
    """S5 layer: ``h_t = Lbar h_{t-1} + Bbar u_t``, ``y_t = GELU(2 Re(C h_t) + D u_t)``.

    Lambda has the S4D-Lin init (``-1/2 + i pi n``) with ``Re = -exp(.)``, one
    ``log_dt`` per state, ZOH (``Bbar = (Lbar - 1) / Lambda * B``). ``causal=False``
    adds a reverse-time scan of the same Bbar read out through its own ``C_b``.
    """

    def __init__(
        self,
        dim: int,
        d_state: int = 64,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        causal: bool = False,
    ) -> None:
        super().__init__(dim, causal)
        if d_state < 1:
            raise ValueError(f"s5: d_state must be >= 1, got {d_state}")
        self.d_state = d_state
        self.log_dt = nn.Parameter(_log_uniform(d_state, dt_min, dt_max))
        self.Lambda_re_log = nn.Parameter(torch.full((d_state,), math.log(0.5)))
        self.Lambda_im = nn.Parameter(math.pi * torch.arange(d_state, dtype=torch.float32))
        # Complex normal with unit variance per entry, scaled LeCun-style by fan-in.
        self.B = nn.Parameter(
            torch.view_as_real(torch.randn(d_state, dim, dtype=torch.cfloat) / dim**0.5)
        )
        self.C = nn.Parameter(
            torch.view_as_real(torch.randn(dim, d_state, dtype=torch.cfloat) / d_state**0.5)
        )
        self.C_b = (
            None
            if causal
            else nn.Parameter(
                torch.view_as_real(torch.randn(dim, d_state, dtype=torch.cfloat) / d_state**0.5)
            )
        )
        self.D = nn.Parameter(torch.randn(dim))
        _no_weight_decay(self.log_dt, self.Lambda_re_log, self.Lambda_im)
        self.activation = nn.GELU()

    def discretize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """ZOH: ``(Lbar (P,), Bbar (P, dim))``, complex."""
        Lambda = torch.complex(
            -torch.exp(_at_least_fp32(self.Lambda_re_log)), _at_least_fp32(self.Lambda_im)
        )
        Lbar = torch.exp(Lambda * torch.exp(_at_least_fp32(self.log_dt)))
        Bbar = ((Lbar - 1) / Lambda)[:, None] * _complex_param(self.B)
        return Lbar, Bbar

    def _readout(self, h: torch.Tensor, C: nn.Parameter) -> torch.Tensor:
        return 2 * torch.einsum("...p,dp->...d", h, _complex_param(C)).real

    def forward(self, x: torch.Tensor, grid: Sequence[int] | None = None) -> torch.Tensor:
        self.check_input(x)
        Lbar, Bbar = self.discretize()
        b = torch.einsum("bld,pd->blp", x.to(Bbar.dtype), Bbar)
        a = Lbar.expand_as(b)
        y = self._readout(linear_scan(a, b), self.C) + self.D * x
        if not self.causal:
            y = y + self._readout(linear_scan(a, b, reverse=True), self.C_b)
        return self.activation(y.to(x.dtype))

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        self.require_causal()
        ref = self.D
        return torch.zeros(
            batch_size,
            self.d_state,
            device=device or ref.device,
            dtype=_complex_dtype(dtype or ref.dtype),
        )

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.require_causal()
        self.check_step_input(x_t)
        Lbar, Bbar = self.discretize()
        state = Lbar * state + x_t.to(Bbar.dtype) @ Bbar.T
        y = self._readout(state, self.C) + self.D * x_t
        return self.activation(y.to(x_t.dtype)), state
