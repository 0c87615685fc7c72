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
every product in its fast orientation, and keeps only ``x`` (and the dropout mask as booleans)
for backward, recomputing the hidden block there (a product of depth ``C``: cheap). It computes
the same function as the composed modules: the dropout mask is drawn as
``torch.nn.functional.dropout`` draws it on the CPU (``empty_like(h).bernoulli_(1 - p)`` over
the whole hidden activation, the same random stream) and kept values get the same float scale
``1 / (1 - p)``; sums run in another order, so results agree to rounding.

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


def _hidden(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None) -> torch.Tensor:
    """``relu(x @ w1.T + b1)`` for one block of rows."""
    h = torch.addmm(b1, x, w1.t()) if b1 is not None else torch.mm(x, w1.t())
    return h.relu_()


class _NarrowMLPFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, p):  # type: ignore[override]
        rows = x.reshape(-1, x.shape[-1])
        n, hidden = rows.shape[0], w1.shape[0]
        keep = scale = None
        if p > 0:  # one draw over the whole hidden activation, as F.dropout makes it
            keep = torch.empty(n, hidden, dtype=x.dtype, device=x.device).bernoulli_(1 - p).bool()
            scale = torch.ones((), dtype=x.dtype, device=x.device).div_(1 - p)
        out_t = torch.empty(w2.shape[0], n, dtype=x.dtype, device=x.device)  # the output, transposed
        block = _block_rows(hidden)
        for start in range(0, n, block):
            stop = min(start + block, n)
            h = _hidden(rows[start:stop], w1, b1)
            if keep is not None:
                h.mul_(keep[start:stop]).mul_(scale)
            out_t[:, start:stop] = w2 @ h.t()
        # Row-major like the composed form's output: a later dropout draws its mask in memory order.
        out = torch.empty(n, w2.shape[0], dtype=x.dtype, device=x.device)
        if b2 is not None:
            torch.add(out_t.t(), b2, out=out)
        else:
            out.copy_(out_t.t())
        ctx.save_for_backward(rows, w1, b1, w2, keep)
        ctx.scale, ctx.has_b2, ctx.shape = scale, b2 is not None, x.shape
        return out.view(*x.shape[:-1], w2.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        rows, w1, b1, w2, keep = ctx.saved_tensors
        grad_rows = grad_out.reshape(-1, grad_out.shape[-1])
        n, features = rows.shape
        need_x = ctx.needs_input_grad[0]
        grad_x_t = torch.empty(features, n, dtype=rows.dtype, device=rows.device) if need_x else None
        grad_w1_t = torch.zeros(features, w1.shape[0], dtype=w1.dtype, device=w1.device)
        grad_b1 = torch.zeros_like(b1) if b1 is not None else None
        grad_w2 = torch.zeros_like(w2)
        block = _block_rows(w1.shape[0])
        for start in range(0, n, block):
            stop = min(start + block, n)
            x_block, g_block = rows[start:stop], grad_rows[start:stop]
            h = _hidden(x_block, w1, b1)
            grad_h = g_block @ w2
            if keep is not None:
                grad_w2.addmm_(g_block.t(), h * keep[start:stop] * ctx.scale)
                grad_h.mul_(keep[start:stop]).mul_(ctx.scale)
            else:
                grad_w2.addmm_(g_block.t(), h)
            torch.ops.aten.threshold_backward.grad_input(grad_h, h, 0, grad_input=grad_h)
            grad_w1_t.addmm_(x_block.t(), grad_h)
            if grad_b1 is not None:
                grad_b1.add_(grad_h.sum(0))
            if grad_x_t is not None:
                grad_x_t[:, start:stop] = w1.t() @ grad_h.t()
        grad_x = grad_x_t.t().contiguous().view(ctx.shape) if grad_x_t is not None else None
        grad_b2 = grad_rows.sum(0) if ctx.has_b2 else None
        return grad_x, grad_w1_t.t().contiguous(), grad_b1, grad_w2, grad_b2, None


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
