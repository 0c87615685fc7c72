"""Mamba-1 selective state space mixer, causal and bidirectional (Vim "v2").

Mamba: Gu & Dao 2023, https://arxiv.org/abs/2312.00752. Parameter names follow
``mamba_ssm``'s ``Mamba`` block; the bidirectional form follows Vision Mamba
(Zhu et al. 2024, https://arxiv.org/abs/2401.09417): a backward branch with its
own ``conv1d_b``, ``x_proj_b``, ``dt_proj_b``, ``A_b_log``, ``D_b`` runs over the
reversed sequence and the two branch outputs are averaged before ``out_proj``.

The bidirectional forward is fused for short, overhead-dominated inputs (Caduceus
on 70-300 bp): one call gives the causal and the anti-causal conv with their SiLU
(:func:`~omniseq.kernels.depthwise_conv.bidirectional_conv_silu`, reversal by index,
no flipped copies), one batched matmul per projection serves both branches, one
scan call runs both directions (the reverse by index), and the shared ``silu(z)``
gate is applied once to the averaged branches. ``_branch`` keeps the
per-direction form (the causal mixer, and the oracle of the fused one).

Mixed precision: ``softplus(delta + dt_bias)``, ``exp(dt A)`` and the SSM state run
in fp32 inside :func:`~omniseq.kernels.selective_scan` (``step`` included), whatever
the dtype of the projections around them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from omniseq.backbones.mixers.registry import Mixer, register_mixer
from omniseq.kernels import selective_scan
from omniseq.kernels.depthwise_conv import bidirectional_conv_silu
from omniseq.kernels.selective_scan import selective_scan_bidirectional

__all__ = ["Mamba"]


class _SSMBranch(nn.Module):
    """Conv, projections and SSM parameters of one scan direction."""

    def __init__(
        self,
        d_inner: int,
        d_state: int,
        d_conv: int,
        dt_rank: int,
        dt_min: float,
        dt_max: float,
        dt_init_floor: float,
    ) -> None:
        super().__init__()
        # Applied through F.conv1d with explicit one-sided padding (see _conv).
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner)
        nn.init.uniform_(self.dt_proj.weight, -(dt_rank**-0.5), dt_rank**-0.5)
        # dt log-uniform in [dt_min, dt_max]; the bias is softplus^-1(dt) so that
        # softplus(dt_proj(.)) starts there.
        dt = torch.exp(
            torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        )
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True
        # S4D-real: A_n = -(n + 1), the same for every channel.
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(d_inner))
        self.D._no_weight_decay = True


@register_mixer("mamba")
class Mamba(Mixer):
    """Mamba-1 block: gated selective scan with a short causal depthwise conv.

    ``causal=True``: one left-to-right branch, with ``init_state``/``step``
    (state: conv window ``(B, d_inner, d_conv)`` and SSM state ``(B, d_inner, d_state)``).
    ``causal=False``: Vim v2, forward branch plus a backward branch (anti-causal
    conv, reverse scan) with separate parameters, averaged.
    """

    def __init__(
        self,
        dim: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        causal: bool = False,
    ) -> None:
        super().__init__(dim, causal)
        self.d_state, self.d_conv = d_state, d_conv
        self.d_inner = int(expand * dim)
        self.dt_rank = math.ceil(dim / 16) if dt_rank == "auto" else int(dt_rank)
        if d_conv < 1 or d_state < 1 or self.dt_rank < 1:
            raise ValueError(
                f"mamba: d_conv, d_state and dt_rank must be >= 1, got {d_conv}, {d_state}, {dt_rank}"
            )
        self.in_proj = nn.Linear(dim, 2 * self.d_inner, bias=False)
        args = (self.d_inner, d_state, d_conv, self.dt_rank, dt_min, dt_max, dt_init_floor)
        forward = _SSMBranch(*args)
        # Flat names as in mamba_ssm / Vim (conv1d, x_proj, ..., conv1d_b, A_b_log, ...).
        self.conv1d, self.x_proj, self.dt_proj = forward.conv1d, forward.x_proj, forward.dt_proj
        self.A_log, self.D = forward.A_log, forward.D
        if not causal:
            backward = _SSMBranch(*args)
            self.conv1d_b, self.x_proj_b, self.dt_proj_b = (
                backward.conv1d,
                backward.x_proj,
                backward.dt_proj,
            )
            self.A_b_log, self.D_b = backward.A_log, backward.D
        self.out_proj = nn.Linear(self.d_inner, dim, bias=False)

    def _branch_params(self, backward: bool):
        if backward:
            return self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b
        return self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D

    def _conv(self, conv: nn.Conv1d, x: torch.Tensor, anti_causal: bool) -> torch.Tensor:
        """Depthwise conv over time of ``x (B, L, d_inner)``: causal, or anti-causal
        (the causal conv applied to the time-reversed sequence)."""
        h = x.transpose(1, 2)
        if anti_causal:
            h = h.flip(-1)
        h = F.conv1d(F.pad(h, (self.d_conv - 1, 0)), conv.weight, conv.bias, groups=self.d_inner)
        if anti_causal:
            h = h.flip(-1)
        return h.transpose(1, 2)

    def _branch(self, x: torch.Tensor, z: torch.Tensor, backward: bool) -> torch.Tensor:
        """One scan direction on ``x, z (B, L, d_inner)``; returns the gated scan output."""
        conv, x_proj, dt_proj, A_log, D = self._branch_params(backward)
        u = F.silu(self._conv(conv, x, anti_causal=backward))
        dt_low, B, C = x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt_low, dt_proj.weight)  # bias is added inside the scan
        return selective_scan(
            u,
            delta,
            -torch.exp(A_log),
            B,
            C,
            D=D,
            z=z,
            delta_bias=dt_proj.bias,
            delta_softplus=True,
            reverse=backward,
        )

    def _bidirectional(self, xs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Both branches fused, averaged and gated: ``(B, L, d_inner)``."""
        batch, length, _ = xs.shape
        u = bidirectional_conv_silu(
            xs,
            torch.stack([self.conv1d.weight[:, 0], self.conv1d_b.weight[:, 0]]),
            torch.stack([self.conv1d.bias, self.conv1d_b.bias]),
        )
        x_proj = torch.stack([self.x_proj.weight, self.x_proj_b.weight]).transpose(1, 2)
        dbc = torch.bmm(u.view(2, batch * length, self.d_inner), x_proj)
        dt_low, B, C = dbc.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt_proj = torch.stack([self.dt_proj.weight, self.dt_proj_b.weight]).transpose(1, 2)
        delta = torch.bmm(dt_low, dt_proj)  # biases are added inside the scan
        y = selective_scan_bidirectional(
            u,
            delta.view(2, batch, length, self.d_inner),
            -torch.exp(torch.stack([self.A_log, self.A_b_log])),
            B.reshape(2, batch, length, self.d_state),
            C.reshape(2, batch, length, self.d_state),
            D=torch.stack([self.D, self.D_b]),
            delta_bias=torch.stack([self.dt_proj.bias, self.dt_proj_b.bias]),
            delta_softplus=True,
        )
        return (y[0] + y[1]) * (0.5 * F.silu(z))

    def forward(self, x: torch.Tensor, grid: Sequence[int] | None = None) -> torch.Tensor:
        self.check_input(x)
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        y = self._branch(xs, z, backward=False) if self.causal else self._bidirectional(xs, z)
        return self.out_proj(y)

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict[str, torch.Tensor]:
        self.require_causal()
        ref = self.in_proj.weight
        kw = {"device": device or ref.device, "dtype": dtype or ref.dtype}
        return {
            "conv": torch.zeros(batch_size, self.d_inner, self.d_conv, **kw),
            "ssm": torch.zeros(batch_size, self.d_inner, self.d_state, **kw),
        }

    def step(self, x_t: torch.Tensor, state: dict[str, torch.Tensor]):
        """One token; the conv window holds the last ``d_conv`` inputs, newest last.

        The SSM update is the kernel's own on a length-1 sequence, so it keeps the
        state in fp32 under autocast exactly as the parallel form does.
        """
        self.require_causal()
        self.check_step_input(x_t)
        xs, z = self.in_proj(x_t).chunk(2, dim=-1)
        window = torch.cat([state["conv"][:, :, 1:], xs[:, :, None].to(state["conv"].dtype)], -1)
        u = F.silu((window * self.conv1d.weight[:, 0]).sum(-1) + self.conv1d.bias)
        dt_low, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        y, h = selective_scan(
            u[:, None],
            F.linear(dt_low, self.dt_proj.weight)[:, None],
            -torch.exp(self.A_log),
            B[:, None],
            C[:, None],
            D=self.D,
            z=z[:, None],
            delta_bias=self.dt_proj.bias,
            delta_softplus=True,
            initial_state=state["ssm"],
            return_last_state=True,
        )
        return self.out_proj(y[:, 0]), {"conv": window, "ssm": h}
