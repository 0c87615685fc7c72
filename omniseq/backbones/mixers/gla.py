"""Gated linear attention mixer, causal (GLA) and bidirectional (ViG's BiGLA).

GLA: Yang et al. 2023, https://arxiv.org/abs/2312.06635 — layout and names as in
flash-linear-attention's ``GatedLinearAttention`` (``q_proj``, ``k_proj``,
``v_proj``, low-rank ``gk_proj``, output gate ``g_proj``, per-head RMSNorm with
swish gate, ``o_proj``). ViG: Liao et al. 2024, https://arxiv.org/abs/2405.18425 —
bidirectional GLA with per-direction forget gates and 2D locality injection.

Mixed precision: the log forget gates are computed in fp32 (or wider) from the
gate logits, the kernel keeps its gate sums and states in fp32 or better, and
the per-head RMSNorm runs in its weight's dtype (fp32 under autocast).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from omniseq.backbones.mixers.registry import Mixer, register_mixer
from omniseq.kernels import gated_linear_attention, gated_linear_attention_recurrent

__all__ = ["GatedLinearAttention"]

GATE_LOW_RANK = 16


def _low_rank_gate(dim: int, key_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(dim, GATE_LOW_RANK, bias=False), nn.Linear(GATE_LOW_RANK, key_dim)
    )


@register_mixer("gla")
class GatedLinearAttention(Mixer):
    """Gated linear attention over ``(B, L, dim)``.

    ``causal=True``: one left-to-right GLA with a recurrent ``step`` (state
    ``(B, H, K, V)``). ``causal=False``: a forward and a reverse GLA pass on
    shared q, k, v, summed (BiGLA); with ``direction_gates`` the reverse pass has
    its own forget-gate projection ``gk_proj_b``. ``locality=True`` adds a
    depthwise 3x3 convolution of v over a 2D ``grid`` to v (ViG's locality
    injection; skipped for 1D/3D grids, ValueError without a grid).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 4,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        gate_logit_normalizer: float = 16.0,
        norm_eps: float = 1e-5,
        direction_gates: bool = True,
        locality: bool = False,
        causal: bool = False,
    ) -> None:
        super().__init__(dim, causal)
        self.key_dim = int(dim * expand_k)
        self.value_dim = int(dim * expand_v)
        if num_heads <= 0 or self.key_dim % num_heads or self.value_dim % num_heads:
            raise ValueError(
                f"gla: key_dim ({self.key_dim}) and value_dim ({self.value_dim}) must be "
                f"divisible by num_heads ({num_heads})"
            )
        if causal and locality:
            raise ValueError(
                "gla: locality=True (a 2D 3x3 conv) sees future tokens; it needs causal=False"
            )
        self.num_heads = num_heads
        self.head_k_dim = self.key_dim // num_heads
        self.head_v_dim = self.value_dim // num_heads
        self.gate_logit_normalizer = gate_logit_normalizer
        self.q_proj = nn.Linear(dim, self.key_dim, bias=False)
        self.k_proj = nn.Linear(dim, self.key_dim, bias=False)
        self.v_proj = nn.Linear(dim, self.value_dim, bias=False)
        self.gk_proj = _low_rank_gate(dim, self.key_dim)
        self.gk_proj_b = (
            _low_rank_gate(dim, self.key_dim) if (not causal and direction_gates) else None
        )
        self.locality = locality
        self.local_conv = (
            nn.Conv2d(self.value_dim, self.value_dim, 3, padding=1, groups=self.value_dim)
            if locality
            else None
        )
        self.g_proj = nn.Linear(dim, self.value_dim, bias=False)
        self.g_norm = nn.RMSNorm(self.head_v_dim, eps=norm_eps)
        self.o_proj = nn.Linear(self.value_dim, dim, bias=False)

    def _heads(self, t: torch.Tensor, head_dim: int) -> torch.Tensor:
        return t.reshape(*t.shape[:-1], self.num_heads, head_dim)

    def _forget_gate(self, proj: nn.Module, x: torch.Tensor) -> torch.Tensor:
        logits = proj(x)
        # A bf16 log gate near 0 keeps 8 mantissa bits: -1e-3 would come out 0.4% off.
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        return self._heads(F.logsigmoid(logits) / self.gate_logit_normalizer, self.head_k_dim)

    def _inject_locality(self, v: torch.Tensor, grid: Sequence[int] | None) -> torch.Tensor:
        if grid is None:
            raise ValueError(
                "gla with locality=True needs grid= the 2D token grid (H, W), got None"
            )
        grid = tuple(int(g) for g in grid)
        if math.prod(grid) != v.shape[1]:
            raise ValueError(f"gla: prod(grid) = prod({grid}) must equal L = {v.shape[1]}")
        if len(grid) != 2:
            return v
        B, L, C = v.shape
        # (B, L, C) is a channels-last image: convolve the view, no NCHW round trip.
        image = v.reshape(B, *grid, C).permute(0, 3, 1, 2)
        return v + self.local_conv(image).permute(0, 2, 3, 1).reshape(B, L, C)

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-head RMSNorm, swish output gate, output projection."""
        gate = self._heads(self.g_proj(x), self.head_v_dim)
        # Under autocast o is bf16/fp16 and the norm weight fp32; norm in the weight's dtype.
        o = self.g_norm(o.to(self.g_norm.weight.dtype)) * F.silu(gate)
        return self.o_proj(o.flatten(-2))

    def forward(self, x: torch.Tensor, grid: Sequence[int] | None = None) -> torch.Tensor:
        self.check_input(x)
        q = self._heads(self.q_proj(x), self.head_k_dim)
        k = self._heads(self.k_proj(x), self.head_k_dim)
        v = self.v_proj(x)
        if self.locality:
            v = self._inject_locality(v, grid)
        v = self._heads(v, self.head_v_dim)
        o, _ = gated_linear_attention(q, k, v, self._forget_gate(self.gk_proj, x))
        if not self.causal:
            gate_b = self.gk_proj_b if self.gk_proj_b is not None else self.gk_proj
            o_b, _ = gated_linear_attention(q, k, v, self._forget_gate(gate_b, x), reverse=True)
            o = o + o_b
        return self._output(o, x)

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        self.require_causal()
        ref = self.q_proj.weight
        return torch.zeros(
            batch_size,
            self.num_heads,
            self.head_k_dim,
            self.head_v_dim,
            device=device or ref.device,
            dtype=dtype or ref.dtype,
        )

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.require_causal()
        self.check_step_input(x_t)
        x = x_t[:, None]
        q = self._heads(self.q_proj(x), self.head_k_dim)
        k = self._heads(self.k_proj(x), self.head_k_dim)
        v = self._heads(self.v_proj(x), self.head_v_dim)
        o, state = gated_linear_attention_recurrent(
            q, k, v, self._forget_gate(self.gk_proj, x), initial_state=state
        )
        return self._output(o, x)[:, 0], state
