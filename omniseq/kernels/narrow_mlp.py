"""``linear(dropout(relu(linear(x, w1, b1))), w2, b2)`` for narrow inputs and outputs, fast on CPU.

TSMixer's feature mixing runs a ``C -> hidden -> C`` MLP on every time step, with ``C`` the
channel count (7 for ETT) and ``hidden`` up to 512. Composed from modules on the CPU this costs
far more than its FLOPs (ETTh1, batch 32, hidden 512, one thread: ~15 ms per call, forward and
backward), for two reasons:

* the ``(rows, hidden)`` activation (6 MB at 3072 rows) does not fit in cache, and ReLU, its
  backward and four matrix products each stream it through memory;
* MKL is slow at products whose row-major result has only ``C`` columns (``h @ w2.T`` in
  forward; ``grad_h @ w1`` and ``grad_h.T @ x`` in backward): 4-5x slower than the same
  product computed transposed, ``C`` rows by many columns.

This op runs over blocks of rows small enough for the hidden block to stay in cache, computes
every product in its fast orientation, carries ``b1`` as a column of ``w1`` against a column of
ones in ``x`` (its gradient comes out of the weight gradient's product, no per-block sums), and
keeps only ``x`` (and the dropout noise) for backward, recomputing the hidden block there (a
product of depth ``C``: cheap). It computes the same function as the composed modules: the
dropout noise is made as ``torch.nn.functional.dropout`` makes it on the CPU
(``empty_like(h).bernoulli_(1 - p).div_(1 - p)`` over the whole hidden activation: the same
random stream, the same values); sums run in another order, so results agree to rounding.

:func:`narrow_mlp_reference` (the composed functional form) is the test oracle. Outside its
niche (not on the CPU, under autocast, wide inputs or outputs) the op runs the reference; the
fast path has no double backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["narrow_mlp", "narrow_mlp_reference"]

# Widest input/output for the fast path: beyond a few dozen columns MKL's own layout is fine.
MAX_NARROW_FEATURES = 32
# Hidden elements per block of rows and thread (256 KB of float32 at 64Ki: within a core's L2).
BLOCK_ELEMENTS = 1 << 16


def _block_rows(hidden: int) -> int:
    return max(32, torch.get_num_threads() * BLOCK_ELEMENTS // hidden)


def _with_bias_column(rows: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None):
    """``rows`` with a column of ones and ``w1`` with ``b1`` as its last column: the bias becomes part of
    the product, and its gradient a row of the weight gradient's (no per-block sums)."""
    if b1 is None:
        return rows, w1
    return torch.cat([rows, rows.new_ones(rows.shape[0], 1)], 1), torch.cat([w1, b1[:, None]], 1)


class _NarrowMLPFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, p):  # type: ignore[override]
        rows, w1_in = _with_bias_column(x.reshape(-1, x.shape[-1]), w1, b1)
        n, hidden = rows.shape[0], w1.shape[0]
        block = _block_rows(hidden)
        noise = None
        noise_blocks: list[torch.Tensor | None] = [None] * -(-n // block)
        if p > 0:  # F.dropout's noise: one draw over the whole hidden activation, kept values 1 / (1 - p)
            noise = torch.empty(n, hidden, dtype=x.dtype, device=x.device).bernoulli_(1 - p).div_(1 - p)
            noise_blocks = list(noise.split(block))
        out_t = torch.empty(w2.shape[0], n, dtype=x.dtype, device=x.device)  # the output, transposed
        w1_in_t = w1_in.t()
        for x_block, out_block, noise_block in zip(rows.split(block), out_t.split(block, 1), noise_blocks, strict=True):
            h = torch.mm(x_block, w1_in_t).relu_()
            if noise_block is not None:
                h.mul_(noise_block)
            torch.mm(w2, h.t(), out=out_block)
        # Row-major like the composed form's output: a later dropout draws its mask in memory order.
        out = torch.empty(n, w2.shape[0], dtype=x.dtype, device=x.device)
        if b2 is not None:
            torch.add(out_t.t(), b2, out=out)
        else:
            out.copy_(out_t.t())
        ctx.save_for_backward(rows, w1_in, w2, noise)
        ctx.has_b1, ctx.has_b2, ctx.shape = b1 is not None, b2 is not None, x.shape
        return out.view(*x.shape[:-1], w2.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        rows, w1_in, w2, noise = ctx.saved_tensors
        grad_rows = grad_out.reshape(-1, grad_out.shape[-1])
        n, features = grad_rows.shape[0], ctx.shape[-1]
        block = _block_rows(w1_in.shape[0])
        blocks = -(-n // block)
        need_x = ctx.needs_input_grad[0]
        # The input's gradient, transposed (only when asked for).
        grad_x_t = torch.empty(features, n, dtype=rows.dtype, device=rows.device) if need_x else None
        grad_x_blocks = grad_x_t.split(block, 1) if need_x else [None] * blocks
        noise_blocks = noise.split(block) if noise is not None else [None] * blocks
        grad_w1_in_t = torch.zeros(w1_in.shape[1], w1_in.shape[0], dtype=rows.dtype, device=rows.device)
        grad_w2 = torch.zeros_like(w2)
        w1_in_t, w1_t = w1_in.t(), w1_in[:, :features].t()
        for x_block, x_block_t, g_block, g_block_t, grad_x_block, noise_block in zip(
            rows.split(block), rows.t().split(block, 1), grad_rows.split(block), grad_rows.t().split(block, 1),
            grad_x_blocks, noise_blocks, strict=True,
        ):
            h = torch.mm(x_block, w1_in_t).relu_()
            grad_h = torch.mm(g_block, w2)
            if noise_block is not None:
                grad_w2.addmm_(g_block_t, h * noise_block)
                grad_h.mul_(noise_block)
            else:
                grad_w2.addmm_(g_block_t, h)
            torch.ops.aten.threshold_backward.grad_input(grad_h, h, 0, grad_input=grad_h)
            grad_w1_in_t.addmm_(x_block_t, grad_h)
            if grad_x_block is not None:
                torch.mm(w1_t, grad_h.t(), out=grad_x_block)
        grad_x = grad_x_t.t().contiguous().view(ctx.shape) if need_x else None
        grad_w1 = grad_w1_in_t[:features].t().contiguous()
        grad_b1 = grad_w1_in_t[features].clone() if ctx.has_b1 else None
        grad_b2 = grad_rows.sum(0) if ctx.has_b2 else None
        return grad_x, grad_w1, grad_b1, grad_w2, grad_b2, None


def narrow_mlp(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
               b2: torch.Tensor | None, p: float = 0.0, training: bool = False) -> torch.Tensor:
    """``linear(dropout(relu(linear(x, w1, b1)), p, training), w2, b2)``; ``x (..., C_in)`` ->
    ``(..., C_out)``. See the module docstring."""
    if w1.dim() != 2 or w2.dim() != 2 or x.shape[-1] != w1.shape[1] or w2.shape[1] != w1.shape[0]:
        raise ValueError(
            f"narrow_mlp: shapes do not chain: x (..., {x.shape[-1]}), w1 {tuple(w1.shape)}, w2 {tuple(w2.shape)}; "
            f"need w1 (hidden, {x.shape[-1]}) and w2 (C_out, hidden)"
        )
    if not 0 <= p <= 1:
        raise ValueError(f"narrow_mlp: dropout p must be in [0, 1], got {p}")
    p = p if training else 0.0
    fast = (
        x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.numel() > 0 and p < 1
        and not torch.is_autocast_enabled("cpu") and max(w1.shape[1], w2.shape[0]) <= MAX_NARROW_FEATURES
        and all(t is None or t.dtype == x.dtype for t in (w1, b1, w2, b2))
    )
    if not fast:
        return narrow_mlp_reference(x, w1, b1, w2, b2, p, training)
    return _NarrowMLPFn.apply(x, w1, b1, w2, b2, p)


def narrow_mlp_reference(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
                         b2: torch.Tensor | None, p: float = 0.0, training: bool = False) -> torch.Tensor:
    """The composed functional form: the test oracle (and the path outside the fast op's niche)."""
    return F.linear(F.dropout(F.relu(F.linear(x, w1, b1)), p, training), w2, b2)
