"""Causal and anti-causal depthwise convolutions with SiLU, both at once.

The two short convs of a bidirectional Mamba block (Vision Mamba, Zhu et al. 2024,
https://arxiv.org/abs/2401.09417; Caduceus, Schiff et al. 2024,
https://arxiv.org/abs/2403.03234): per channel ``d`` with ``K`` taps::

    forward[t]  = silu(bias[0, d] + sum_k w[0, d, k] * x[t - (K - 1) + k])   (causal)
    backward[t] = silu(bias[1, d] + sum_k w[1, d, k] * x[t + (K - 1) - k])   (anti-causal)

The anti-causal conv is the causal conv of the reversed sequence, reversed back.
On the CPU, ``backend="auto"`` runs the fused C kernel of
:mod:`omniseq.kernels.cpu.bidirectional_conv`; the PyTorch form is one grouped conv
(both directions as two output channels of every input channel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from omniseq.kernels._backend import own_precision, resolve_backend
from omniseq.kernels.cpu.bidirectional_conv import bidirectional_conv_silu_cpu

__all__ = ["bidirectional_conv_silu", "bidirectional_conv_silu_reference"]


def _check(name: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
    if x.dim() != 3:
        raise ValueError(f"{name}: x must have shape (B, L, D), got {tuple(x.shape)}")
    dim = x.shape[2]
    if weight.dim() != 3 or weight.shape[:2] != (2, dim) or weight.shape[2] < 1:
        raise ValueError(f"{name}: weight must have shape (2, D, K) = (2, {dim}, K), got {tuple(weight.shape)}")
    if tuple(bias.shape) != (2, dim):
        raise ValueError(f"{name}: bias must have shape (2, D) = (2, {dim}), got {tuple(bias.shape)}")


def _grouped_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Both convs as one grouped conv over ``x`` padded by ``K - 1`` on both sides: a kernel of
    ``2K - 1`` taps holding the forward weights in its first ``K`` and the backward weights
    flipped in its last ``K``."""
    batch, length, dim = x.shape
    taps = weight.shape[-1]
    zeros = weight.new_zeros(dim, taps - 1)
    kernel = torch.stack([torch.cat([weight[0], zeros], -1), torch.cat([zeros, weight[1].flip(-1)], -1)], 1)
    h = F.conv1d(F.pad(x.transpose(1, 2), (taps - 1, taps - 1)), kernel.view(2 * dim, 1, 2 * taps - 1),
                 bias.t().reshape(-1), groups=dim)  # fmt: skip
    return F.silu(h.view(batch, dim, 2, length).permute(2, 0, 3, 1).contiguous())


@own_precision
def bidirectional_conv_silu(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, backend: str = "auto"
) -> torch.Tensor:
    """``x (B, L, D)``, ``weight (2, D, K)``, ``bias (2, D)`` -> ``(2, B, L, D)`` (forward, backward)."""
    _check("bidirectional_conv_silu", x, weight, bias)
    backend = resolve_backend(backend, x, weight, bias, cpu_kernel="bidirectional_conv")
    if backend == "cpu" and x.dtype in (torch.float32, torch.float64):
        return bidirectional_conv_silu_cpu(x, weight.to(x.dtype), bias.to(x.dtype))
    return _grouped_conv(x, weight.to(x.dtype), bias.to(x.dtype))


def bidirectional_conv_silu_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Loop form: the causal conv tap by tap, on ``x`` and on ``x`` reversed (then reversed back)."""
    _check("bidirectional_conv_silu_reference", x, weight, bias)
    taps, outs = weight.shape[-1], []
    for g, seq in enumerate((x, x.flip(1))):
        acc = bias[g].expand_as(seq).clone()
        for k in range(taps):
            lag = taps - 1 - k  # tap k reads position t - lag
            acc[:, lag:] = acc[:, lag:] + weight[g, :, k] * seq[:, : seq.shape[1] - lag]
        outs.append(F.silu(acc) if g == 0 else F.silu(acc).flip(1))
    return torch.stack(outs)
