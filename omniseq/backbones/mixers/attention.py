"""Softmax attention mixers: global multi-head self-attention and Swin window attention.

Parameter names follow timm's ``Attention`` and ``WindowAttention`` so that timm
ViT / Swin checkpoints map onto these modules by renaming the parent module.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from omniseq.backbones.mixers.registry import Mixer, register_mixer
from omniseq.kernels import attention, window_attention_mask, window_merge, window_partition

__all__ = ["Attention", "WindowAttention", "relative_position_index"]


def _head_dim(name: str, dim: int, num_heads: int) -> int:
    if num_heads <= 0 or dim % num_heads:
        raise ValueError(f"{name}: dim ({dim}) must be divisible by num_heads ({num_heads})")
    return dim // num_heads


def _dropout_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    causal: bool,
    dropout: nn.Dropout,
) -> torch.Tensor:
    """Explicit softmax path, needed only when attention dropout is active in training."""
    scores = torch.einsum("blhk,bshk->bhls", q, k) * q.shape[-1] ** -0.5
    if bias is not None:
        scores = scores + bias
    if causal:
        L, S = scores.shape[-2:]
        future = torch.ones(L, S, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    probs = dropout(scores.softmax(dim=-1))
    return torch.einsum("bhls,bshv->blhv", probs, v)


@register_mixer("attention")
class Attention(Mixer):
    """Multi-head self-attention (Vaswani et al. 2017, https://arxiv.org/abs/1706.03762).

    With ``causal=True`` the recurrent form keeps a KV cache
    ``{"k": (B, t, H, Dh), "v": (B, t, H, Dh)}`` that grows by one token per step.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        causal: bool = False,
    ) -> None:
        super().__init__(dim, causal)
        self.num_heads = num_heads
        self.head_dim = _head_dim("attention", dim, num_heads)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x (B, L, dim)`` -> q, k, v each ``(B, L, H, Dh)``."""
        B, L, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, L, 3, self.num_heads, self.head_dim).unbind(2)
        return self.q_norm(q), self.k_norm(k), v

    def _attend(self, q, k, v, causal: bool) -> torch.Tensor:
        if self.training and self.attn_drop.p > 0:
            return _dropout_attention(q, k, v, None, causal, self.attn_drop)
        return attention(q, k, v, causal=causal)

    def forward(self, x: torch.Tensor, grid: Sequence[int] | None = None) -> torch.Tensor:
        self.check_input(x)
        B, L, _ = x.shape
        q, k, v = self._qkv(x)
        out = self._attend(q, k, v, self.causal).reshape(B, L, self.dim)
        return self.proj_drop(self.proj(out))

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict[str, torch.Tensor]:
        self.require_causal()
        ref = self.qkv.weight
        shape = (batch_size, 0, self.num_heads, self.head_dim)
        empty = functools.partial(
            torch.zeros, shape, device=device or ref.device, dtype=dtype or ref.dtype
        )
        return {"k": empty(), "v": empty()}

    def step(self, x_t: torch.Tensor, state: dict[str, torch.Tensor]):
        self.require_causal()
        self.check_step_input(x_t)
        q, k, v = self._qkv(x_t[:, None])
        # The cache follows the projections' dtype (bf16 under autocast), as the parallel form.
        k = torch.cat([state["k"].to(k.dtype), k], dim=1)
        v = torch.cat([state["v"].to(v.dtype), v], dim=1)
        # The query is the newest token, so every cached key is in its past.
        out = self._attend(q, k, v, causal=False).reshape(x_t.shape[0], self.dim)
        return self.proj_drop(self.proj(out)), {"k": k, "v": v}


def relative_position_index(window: Sequence[int], table_window: Sequence[int] | None = None):
    """Swin's index ``(N, N)`` into a relative position bias table.

    ``table_window`` is the window the table was sized for (default ``window``);
    a smaller ``window`` (clamped to a small grid) indexes the central sub-table,
    so the same learned biases serve both. Matches timm for 2D and Video Swin for 3D.
    """
    window = tuple(window)
    table_window = window if table_window is None else tuple(table_window)
    axes = [torch.arange(w) for w in window]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij")).flatten(1)  # (rank, N)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (N, N, rank)
    index = torch.zeros(relative.shape[:2], dtype=torch.long)
    for axis, tw in enumerate(table_window):
        stride = math.prod(2 * w - 1 for w in table_window[axis + 1 :])
        index += (relative[..., axis] + tw - 1) * stride
    return index


def _as_tuple(value: int | Sequence[int], rank: int, what: str) -> tuple[int, ...]:
    out = (int(value),) * rank if isinstance(value, int) else tuple(int(v) for v in value)
    if len(out) != rank:
        raise ValueError(f"window_attention: {what} must be an int or a {rank}-tuple, got {value}")
    return out


def _padded_grid(grid: Sequence[int], window: Sequence[int]) -> tuple[int, ...]:
    return tuple(math.ceil(g / w) * w for g, w in zip(grid, window, strict=True))


def _pad_amounts(grid: Sequence[int], padded: Sequence[int]) -> list[int]:
    """``F.pad`` amounts (last axis first) that pad ``grid`` at its end to ``padded``."""
    pairs = zip(reversed(tuple(grid)), reversed(tuple(padded)), strict=True)
    return [p for g, pg in pairs for p in (0, pg - g)]


@functools.lru_cache(maxsize=64)
def _window_keep_mask(
    grid: tuple[int, ...], window: tuple[int, ...], shift: tuple[int, ...], device: torch.device
) -> torch.Tensor:
    """Bool ``(nW, N, N)``: Swin's shift mask, minus padded keys, plus the diagonal."""
    padded = _padded_grid(grid, window)
    real = F.pad(torch.ones(grid, device=device), _pad_amounts(grid, padded))
    real_keys = window_partition(real[None, ..., None], window, shift)[..., 0] > 0.5  # (nW, N)
    N = real_keys.shape[1]
    keep = real_keys[:, None, :].expand(-1, N, -1)
    allowed = window_attention_mask(padded, window, shift, device=device)
    if allowed is not None:
        keep = keep & allowed
    return keep | torch.eye(N, dtype=torch.bool, device=device)


@register_mixer("window_attention")
class WindowAttention(Mixer):
    """Swin (shifted) window attention over a 2D or 3D token grid.

    Swin: https://arxiv.org/abs/2103.14030; Video Swin (3D): https://arxiv.org/abs/2106.13230.

    ``window_size`` as an int means a 2D window; give a 3-tuple for ``(T, H, W)``
    grids. Where the grid is not larger than the window along an axis the window
    clamps to the grid and that axis is not shifted (as timm does).

    Padding: the grid is zero-padded at its end up to a multiple of the window,
    then rolled. Unlike timm, padded tokens are masked out as keys, so they never
    change the outputs of real tokens (each padded query attends only to itself,
    which keeps every softmax row non-empty; their outputs are discarded).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        window_size: int | Sequence[int] = 7,
        shift_size: int | Sequence[int] = 0,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        causal: bool = False,
    ) -> None:
        if causal:
            raise ValueError(
                "window_attention is bidirectional within windows; causal=True is not supported"
            )
        super().__init__(dim, causal)
        rank = 2 if isinstance(window_size, int) else len(tuple(window_size))
        if rank not in (2, 3):
            raise ValueError(
                f"window_attention: window_size must be an int, 2-tuple or 3-tuple, got {window_size}"
            )
        self.window_size = _as_tuple(window_size, rank, "window_size")
        self.shift_size = _as_tuple(shift_size, rank, "shift_size")
        if any(w <= 0 for w in self.window_size):
            raise ValueError(
                f"window_attention: window_size must be positive, got {self.window_size}"
            )
        if any(not 0 <= s < w for s, w in zip(self.shift_size, self.window_size, strict=True)):
            raise ValueError(
                f"window_attention: need 0 <= shift_size < window_size, got {self.shift_size} vs {self.window_size}"
            )
        self.num_heads = num_heads
        self.head_dim = _head_dim("window_attention", dim, num_heads)
        table_size = math.prod(2 * w - 1 for w in self.window_size)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table_size, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer(
            "relative_position_index", relative_position_index(self.window_size), persistent=False
        )
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def resolve_window(self, grid: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Window and shift actually used for ``grid`` (clamped as in timm)."""
        window = tuple(min(w, g) for w, g in zip(self.window_size, grid, strict=True))
        shift = tuple(
            0 if g <= w else s
            for g, w, s in zip(grid, self.window_size, self.shift_size, strict=True)
        )
        return window, shift

    def position_bias(self, window: Sequence[int]) -> torch.Tensor:
        """Relative position bias ``(H, N, N)`` for ``window`` (<= the configured one)."""
        window = tuple(window)
        if window == self.window_size:
            index = self.relative_position_index
        else:
            index = relative_position_index(window, self.window_size).to(
                self.relative_position_index.device
            )
        N = math.prod(window)
        bias = self.relative_position_bias_table[index.reshape(-1)].reshape(N, N, self.num_heads)
        return bias.permute(2, 0, 1)

    def attention_bias(self, grid: Sequence[int], device=None, dtype=None) -> torch.Tensor:
        """Additive bias ``(num_windows, H, N, N)``: position bias, -inf where masked.

        ``grid`` is the unpadded grid; the mask combines Swin's shift mask with
        the padded-key mask (every query may still attend to itself).
        """
        window, shift = self.resolve_window(grid)
        keep = _window_keep_mask(tuple(grid), window, shift, torch.device(device or "cpu"))
        bias = self.position_bias(window).to(dtype)[None]  # (1, H, N, N)
        return torch.where(keep[:, None], bias, torch.full_like(bias, float("-inf")))

    def _check_grid(self, x: torch.Tensor, grid: Sequence[int] | None) -> tuple[int, ...]:
        rank = len(self.window_size)
        if grid is None:
            raise ValueError(f"window_attention needs grid= a {rank}D token grid, got None")
        grid = tuple(int(g) for g in grid)
        if len(grid) != rank:
            raise ValueError(
                f"window_attention was built for {rank}D grids (window_size {self.window_size}), got grid {grid}"
            )
        if math.prod(grid) != x.shape[1]:
            raise ValueError(
                f"window_attention: prod(grid) = prod({grid}) must equal L = {x.shape[1]}"
            )
        return grid

    def forward(self, x: torch.Tensor, grid: Sequence[int] | None = None) -> torch.Tensor:
        self.check_input(x)
        grid = self._check_grid(x, grid)
        B, C, H = x.shape[0], self.dim, self.num_heads
        window, shift = self.resolve_window(grid)
        padded = _padded_grid(grid, window)
        x = F.pad(x.reshape(B, *grid, C), [0, 0, *_pad_amounts(grid, padded)])
        windows = window_partition(x, window, shift)  # (B * nW, N, C)
        Bw, N, _ = windows.shape
        nW = Bw // B
        # Fold windows into the head axis, (B, N, nW * H, Dh), so the per-window
        # bias broadcasts over the batch instead of being copied B times.
        qkv = self.qkv(windows).reshape(B, nW, N, 3, H, self.head_dim).permute(3, 0, 2, 1, 4, 5)
        q, k, v = qkv.reshape(3, B, N, nW * H, self.head_dim).unbind(0)
        bias = self.attention_bias(grid, device=x.device, dtype=x.dtype).reshape(1, nW * H, N, N)
        if self.training and self.attn_drop.p > 0:
            out = _dropout_attention(q, k, v, bias, False, self.attn_drop)
        else:
            out = attention(q, k, v, mask=bias)
        out = out.reshape(B, N, nW, C).transpose(1, 2).reshape(Bw, N, C)
        out = window_merge(self.proj_drop(self.proj(out)), window, padded, shift)
        crop = (slice(None), *(slice(0, g) for g in grid))
        return out[crop].reshape(B, -1, C)
