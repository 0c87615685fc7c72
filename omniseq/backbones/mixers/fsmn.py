"""Gated FSMN: a feedforward sequential memory gated by a parallel branch (MossFormer2).

FSMN: Zhang et al. 2015, https://arxiv.org/abs/1512.08301 — a learnable FIR
"memory" over neighbouring positions, one filter per channel:
``m_t = p_t + sum_i a_i * p_{t - i} (+ sum_j c_j * p_{t + j} when bidirectional)``.
MossFormer2: Zhao et al. 2024, https://arxiv.org/abs/2312.11825 — the gated
FSMN block: two SiLU branches ``u`` and ``v`` of the input; ``v`` is projected
and passed through the memory (with a residual), and ``u`` gates the result.

On a CPU the memory is one depthwise convolution, which is why it trains fast
where recurrent or attention mixers do not.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from omniseq.backbones.mixers.registry import Mixer, register_mixer

__all__ = ["GatedFSMN"]


@register_mixer("fsmn")
class GatedFSMN(Mixer):
    """``y = W_o(u * (v + m))``, ``u, v = SiLU(W_in x)``, ``m = p + memory(p)``, ``p = W_p v``.

    Args:
        dim: token width.
        expand: width of the gated branches as a multiple of ``dim``.
        kernel_size: memory taps. Bidirectional (``causal=False``): an odd number,
            ``(kernel_size - 1) / 2`` positions on each side; causal: the current
            position and ``kernel_size - 1`` past ones.
        dilation: spacing of the taps.
        causal: look only at the past; then ``init_state``/``step`` decode one
            position at a time.
    """

    def __init__(
        self, dim: int, expand: float = 1.0, kernel_size: int = 17, dilation: int = 1, causal: bool = False
    ) -> None:
        super().__init__(dim, causal)
        if kernel_size < 1 or (not causal and kernel_size % 2 == 0):
            raise ValueError(
                f"fsmn: kernel_size must be a positive odd number for a bidirectional memory "
                f"(any positive number when causal), got {kernel_size}"
            )
        if dilation < 1:
            raise ValueError(f"fsmn: dilation must be >= 1, got {dilation}")
        hidden = int(round(expand * dim))
        if hidden < 1:
            raise ValueError(f"fsmn: expand * dim must be >= 1, got {expand} * {dim}")
        self.hidden, self.kernel_size, self.dilation = hidden, kernel_size, dilation
        self.in_proj = nn.Linear(dim, 2 * hidden)
        self.proj = nn.Linear(hidden, hidden, bias=False)
        self.memory = nn.Conv1d(hidden, hidden, kernel_size, dilation=dilation, groups=hidden, bias=False)
        self.out_proj = nn.Linear(hidden, dim)

    @property
    def receptive_span(self) -> int:
        """Positions the memory reaches beyond the current one (total, both sides)."""
        return (self.kernel_size - 1) * self.dilation

    def _gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        u, v = F.silu(self.in_proj(x)).chunk(2, dim=-1)
        return u, v, self.proj(v)

    def forward(self, x: torch.Tensor, grid: Sequence[int] | None = None) -> torch.Tensor:
        self.check_input(x)
        u, v, p = self._gates(x)
        span = self.receptive_span
        left, right = (span, 0) if self.causal else (span // 2, span // 2)
        memory = self.memory(F.pad(p.transpose(1, 2), (left, right))).transpose(1, 2)
        return self.out_proj(u * (v + p + memory))

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        """The last ``receptive_span`` projected inputs ``p``, oldest first (zeros = left padding)."""
        self.require_causal()
        ref = self.proj.weight
        return torch.zeros(
            batch_size, self.receptive_span, self.hidden, device=device or ref.device, dtype=dtype or ref.dtype
        )

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.require_causal()
        self.check_step_input(x_t)
        u, v, p = self._gates(x_t)
        window = torch.cat([state, p[:, None]], dim=1)  # (B, span + 1, hidden), oldest first
        taps = window[:, :: self.dilation]  # (B, kernel_size, hidden)
        memory = torch.einsum("bkh,hk->bh", taps, self.memory.weight[:, 0])
        return self.out_proj(u * (v + p + memory)), window[:, 1:]
