"""ViG's mixer: bidirectional GLA with direction-wise gates and gated 2D locality.

Liao et al. 2024, "ViG: Linear-complexity Visual Sequence Learning with Gated
Linear Attention", https://arxiv.org/abs/2405.18425. Parameter names follow
hustvl/ViG's ``GatedLinearAttention`` so its checkpoints load after renaming
``attn`` to ``mixer``:

    xs = act(dwconv3x3(x on the 2D grid))                      (``in_proj``)
    q, k, v = qkv_proj(xs);  g_f, g_b = logsigmoid(gk_proj(xs)) / 16
    o = (GLA(q, k, v, g_f) + reverse GLA(q, k, v, g_b)) / 2
    gate = sigmoid(g_proj(xs))
    y = o_proj(act_out(g_norm(o) * gate + l_norm(xs) * (1 - gate)))   (per head)

Both directions run in one chunked pass over the shared ``q, k, v``
(:func:`~omniseq.kernels.gla_bidirectional.bidirectional_gated_linear_attention`);
``forward_reference`` runs each direction token by token (the recurrent loop), the test oracle.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from omniseq.backbones.mixers.registry import Mixer, register_mixer
from omniseq.backbones.norms import FastRmsNorm
from omniseq.kernels import bidirectional_gated_linear_attention, gated_linear_attention_recurrent

__all__ = ["ViGMixer"]


@register_mixer("vig")
class ViGMixer(Mixer):
    """ViG's BiGLA over ``(B, L, dim)`` tokens of a 2D ``grid`` (H, W).

    Args:
        dim: token width (also the value width: the locality branch is mixed per head).
        num_heads: heads of q, k, v.
        expand_k: key width as a multiple of ``dim``.
        gate_logit_normalizer: divides the log forget gates (16 in GLA and ViG).
        gate_low_rank: rank of the forget-gate projection.
        norm_eps: eps of the per-head RMSNorms.
        conv_act: SiLU after the depthwise conv (ViG-T: True, ViG-S: False).
        out_act: SiLU before ``o_proj`` (ViG-T: True, ViG-S: False).
        conv_bias: bias of the depthwise conv (False in ViG).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 3,
        expand_k: float = 0.5,
        gate_logit_normalizer: float = 16.0,
        gate_low_rank: int = 16,
        norm_eps: float = 1e-6,
        conv_act: bool = True,
        out_act: bool = False,
        conv_bias: bool = False,
        causal: bool = False,
    ) -> None:
        super().__init__(dim, causal)
        if causal:
            raise ValueError("vig: the 3x3 locality conv and the reverse pass see future tokens; causal=False only")
        self.key_dim = int(dim * expand_k)
        if num_heads <= 0 or self.key_dim % num_heads or dim % num_heads:
            raise ValueError(
                f"vig: dim ({dim}) and key_dim ({self.key_dim}) must be divisible by num_heads ({num_heads})"
            )
        self.num_heads = num_heads
        self.head_k_dim, self.head_v_dim = self.key_dim // num_heads, dim // num_heads
        self.gate_logit_normalizer = gate_logit_normalizer
        self.in_proj = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=conv_bias),
            nn.SiLU() if conv_act else nn.Identity(),
        )
        self.qkv_proj = nn.Linear(dim, 2 * self.key_dim + dim, bias=False)
        self.gk_proj = nn.Sequential(
            nn.Linear(dim, gate_low_rank, bias=False), nn.Linear(gate_low_rank, 2 * self.key_dim)
        )
        self.g_proj = nn.Linear(dim, dim)
        self.g_norm = FastRmsNorm(self.head_v_dim, eps=norm_eps)
        self.l_norm = FastRmsNorm(self.head_v_dim, eps=norm_eps)
        self.out_act = nn.SiLU() if out_act else nn.Identity()
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def _local(self, x: torch.Tensor, grid: Sequence[int] | None) -> torch.Tensor:
        if grid is None or len(grid) != 2 or math.prod(grid) != x.shape[1]:
            raise ValueError(
                f"vig mixer needs grid= the 2D token grid (H, W) with H * W = L = {x.shape[1]}, got {grid}"
            )
        B, L, C = x.shape
        H, W = (int(g) for g in grid)
        # (B, L, C) tokens are a channels-last image: convolve that view and come back
        # without a copy either way (the NCHW round trip cost 7x the conv itself on CPU).
        image = x.reshape(B, H, W, C).permute(0, 3, 1, 2)
        conv, act = self.in_proj
        local = _act_(act, conv(image)) if not torch.is_grad_enabled() else act(conv(image))
        return local.permute(0, 2, 3, 1).reshape(B, L, C)

    def _project(self, x: torch.Tensor, grid):
        xs = self._local(x, grid)
        q, k, v = self.qkv_proj(xs).split([self.key_dim, self.key_dim, self.dim], dim=-1)
        logits = self.gk_proj(xs)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        gates = log_sigmoid(logits, inplace=True).mul_(1.0 / self.gate_logit_normalizer)
        g_f, g_b = gates.chunk(2, dim=-1)
        heads = (self.num_heads, -1)
        return xs, q.unflatten(-1, heads), k.unflatten(-1, heads), v.unflatten(-1, heads), g_f.unflatten(
            -1, heads
        ), g_b.unflatten(-1, heads)

    def _mix(self, xs: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """Gate between the global (GLA) and the local (conv) branch per head, project."""
        heads = (self.num_heads, -1)
        logits = self.g_proj(xs)
        if torch.is_grad_enabled() or not logits.dtype == xs.dtype == o.dtype == self.g_norm.weight.dtype:
            local = self.l_norm(xs.unflatten(-1, heads))
            o = self.g_norm(o.to(self.g_norm.weight.dtype))
            mixed = torch.lerp(local, o.to(local.dtype), torch.sigmoid(logits).unflatten(-1, heads).to(local.dtype))
            return self.o_proj(self.out_act(mixed.flatten(-2)))
        # Inference: norms, gate, mix and activation in place on tensors this mixer made and
        # reads no more (xs, o, the gate logits): five (L, dim) buffers fewer per block.
        local = self.l_norm.normalize_(xs.unflatten(-1, heads))
        mixed = local.lerp_(self.g_norm.normalize_(o), logits.sigmoid_().unflatten(-1, heads)).flatten(-2)
        return self.o_proj(_act_(self.out_act, mixed))

    def forward(self, x: torch.Tensor, grid: Sequence[int] | None = None) -> torch.Tensor:
        self.check_input(x)
        xs, q, k, v, g_f, g_b = self._project(x, grid)
        # Both directions in one chunked pass over the same q, k, v (no flipped copies);
        # o is linear in q: the mean of the two directions is folded into the query scale.
        o = bidirectional_gated_linear_attention(q, k, v, g_f, g_b, scale=0.5 * self.head_k_dim**-0.5)
        return self._mix(xs, o)  # o is a head-major view: g_norm reads it there, with no copy

    def forward_reference(self, x: torch.Tensor, grid: Sequence[int] | None = None) -> torch.Tensor:
        """Each direction token by token (the recurrent GLA loop): the oracle of ``forward``."""
        self.check_input(x)
        xs, q, k, v, g_f, g_b = self._project(x, grid)
        o_f, _ = gated_linear_attention_recurrent(q, k, v, g_f)
        o_b, _ = gated_linear_attention_recurrent(q, k, v, g_b, reverse=True)
        return self._mix(xs, (o_f + o_b) / 2)


def _act_(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(x)``, in place for SiLU (``x`` must be a fresh tensor outside autograd)."""
    return F.silu(x, inplace=True) if isinstance(act, nn.SiLU) else act(x)


# Below this, log sigmoid(z) = z - log1p(exp(z)) is z to the dtype's precision (exp(z) / |z|
# under its epsilon), and sigmoid(z) would soon underflow.
_LOG_SIGMOID_LINEAR_BELOW = {torch.float32: -20.0, torch.float64: -40.0}
# Above this, sigmoid(z) is a normal number and log(sigmoid(z)) is as accurate as the dtype.
_SIGMOID_NORMAL_ABOVE = {torch.float32: -80.0, torch.float64: -700.0}


def log_sigmoid(z: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``F.logsigmoid(z)`` as ``log(sigmoid(z))``, and ``z`` itself where ``z`` is very negative.

    On the CPU ``logsigmoid`` and ``softplus`` run a scalar ``log1p`` per element: 7.8 ms
    for ViG-T's gates at 1024 px, against under 3 ms here (12 per forward). The error is
    absolute, at most an ulp of 1 (``sigmoid`` rounds near 1, where the result is tiny).
    ``inplace`` overwrites ``z`` when autograd is off (``z`` must then be a fresh tensor).
    Half dtypes are computed in float32.
    """
    if z.dtype not in _LOG_SIGMOID_LINEAR_BELOW:
        return log_sigmoid(z.float(), inplace=True).to(z.dtype)
    linear_below = _LOG_SIGMOID_LINEAR_BELOW[z.dtype]
    if torch.is_grad_enabled() and z.requires_grad:
        # clamped, so that log(0) = -inf never meets where's zero gradient (0 * inf = NaN)
        return torch.where(z <= linear_below, z, torch.sigmoid(z.clamp(min=linear_below)).log())
    if z.numel() == 0 or bool(z.amin() > _SIGMOID_NORMAL_ABOVE[z.dtype]):  # the usual case: one pass less
        return (z.sigmoid_() if inplace else torch.sigmoid(z)).log_()
    out = torch.sigmoid(z).log_()
    return torch.where(z <= linear_below, z, out, out=out)
