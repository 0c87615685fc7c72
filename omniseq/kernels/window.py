"""Window partition / merge for 2D and 3D token grids, with shifted windows.

Swin (Liu et al. 2021, https://arxiv.org/abs/2103.14030) and Video Swin
(https://arxiv.org/abs/2106.13230) attend inside non-overlapping windows and
alternate with windows shifted by half a window, implemented by cyclically
rolling the grid by ``-shift`` and masking token pairs that the roll brought
together from opposite borders. The same grouping serves any mixer that runs
per window (LION-style local grouping).

Layout matches timm's Swin ``window_partition``: windows batch-major, then in
raster order over the window grid; tokens inside a window in raster order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["window_attention_mask", "window_merge", "window_partition"]

IntOrTuple = int | Sequence[int]


def _as_tuple(name: str, what: str, value: IntOrTuple, rank: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * rank
    out = tuple(int(v) for v in value)
    if len(out) != rank:
        raise ValueError(f"{name}: {what} must be an int or a {rank}-tuple, got {tuple(value)}")
    return out


def _resolve(
    name: str,
    grid: tuple[int, ...],
    window_size: IntOrTuple,
    shift_size: IntOrTuple | None,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Validate grid/window/shift; return (window, shift) as tuples."""
    rank = len(grid)
    if rank not in (2, 3):
        raise ValueError(f"{name}: grid must have 2 or 3 dims ((H, W) or (T, H, W)), got {grid}")
    window = _as_tuple(name, "window_size", window_size, rank)
    shift = (0,) * rank if shift_size is None else _as_tuple(name, "shift_size", shift_size, rank)
    if any(w <= 0 for w in window):
        raise ValueError(f"{name}: window_size must be positive, got {window}")
    if any(g % w for g, w in zip(grid, window, strict=True)):
        raise ValueError(
            f"{name}: grid {grid} must be divisible by window {window}; pad the grid first"
        )
    if any(not 0 <= s < w for s, w in zip(shift, window, strict=True)):
        raise ValueError(
            f"{name}: shift_size must satisfy 0 <= shift < window {window}, got {shift}"
        )
    return window, shift


def _split_perm(rank: int) -> tuple[int, ...]:
    """Permutation of ``(B, n0, w0, n1, w1, ..., C)`` to ``(B, n0, n1, ..., w0, w1, ..., C)``."""
    outer = tuple(1 + 2 * i for i in range(rank))
    inner = tuple(2 + 2 * i for i in range(rank))
    return (0, *outer, *inner, 1 + 2 * rank)


def window_partition(
    x: torch.Tensor, window_size: IntOrTuple, shift_size: IntOrTuple | None = None
) -> torch.Tensor:
    """Split ``x`` ``(B, *grid, C)`` into windows ``(B * num_windows, prod(window), C)``.

    With ``shift_size`` the grid is first rolled by ``-shift`` along each axis.
    """
    if x.dim() not in (4, 5):
        raise ValueError(
            f"window_partition: x must have shape (B, H, W, C) or (B, T, H, W, C), got {tuple(x.shape)}"
        )
    B, *grid_list, C = x.shape
    grid = tuple(grid_list)
    window, shift = _resolve("window_partition", grid, window_size, shift_size)
    rank = len(grid)
    if any(shift):
        x = torch.roll(x, shifts=tuple(-s for s in shift), dims=tuple(range(1, rank + 1)))
    split = [B]
    for g, w in zip(grid, window, strict=True):
        split += [g // w, w]
    x = x.reshape(*split, C).permute(_split_perm(rank))
    return x.reshape(B * math.prod(split[1::2]), math.prod(window), C)  # no -1: C may be 0


def window_merge(
    windows: torch.Tensor,
    window_size: IntOrTuple,
    grid: Sequence[int],
    shift_size: IntOrTuple | None = None,
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * num_windows, N, C)`` -> ``(B, *grid, C)``."""
    grid = tuple(int(g) for g in grid)
    window, shift = _resolve("window_merge", grid, window_size, shift_size)
    rank = len(grid)
    counts = tuple(g // w for g, w in zip(grid, window, strict=True))
    num_windows, tokens = math.prod(counts), math.prod(window)
    if windows.dim() != 3 or windows.shape[1] != tokens or windows.shape[0] % num_windows:
        raise ValueError(
            f"window_merge: windows must have shape (B * {num_windows}, {tokens}, C) "
            f"for grid {grid} and window {window}, got {tuple(windows.shape)}"
        )
    B, C = windows.shape[0] // num_windows, windows.shape[2]
    x = windows.reshape(B, *counts, *window, C)
    inverse = [0] * (2 * rank + 2)
    for position, axis in enumerate(_split_perm(rank)):
        inverse[axis] = position
    x = x.permute(inverse).reshape(B, *grid, C)
    if any(shift):
        x = torch.roll(x, shifts=shift, dims=tuple(range(1, rank + 1)))
    return x


def window_attention_mask(
    grid: Sequence[int],
    window_size: IntOrTuple,
    shift_size: IntOrTuple | None,
    device: torch.device | str | None = None,
) -> torch.Tensor | None:
    """Swin's shifted-window mask, bool ``(num_windows, N, N)``; None without shift.

    True where two tokens of a (rolled) window were neighbours in the unrolled
    grid, i.e. the roll did not wrap one of them around a border. Convert to an
    additive bias with ``torch.zeros(...).masked_fill(~mask, -inf)`` if needed.
    """
    grid = tuple(int(g) for g in grid)
    window, shift = _resolve("window_attention_mask", grid, window_size, shift_size)
    if not any(shift):
        return None
    # After rolling by -s, positions >= g - s hold tokens wrapped from the start
    # of the axis; give each combination of wrapped/not-wrapped axes its own label.
    label = torch.zeros(grid, dtype=torch.long, device=device)
    for axis, (g, s) in enumerate(zip(grid, shift, strict=True)):
        wrapped = (torch.arange(g, device=device) >= g - s).long()  # none when s == 0
        view = [1] * len(grid)
        view[axis] = g
        label = label + wrapped.view(view) * (2**axis)
    label = window_partition(label[None, ..., None], window).squeeze(-1)
    return label[:, :, None] == label[:, None, :]
