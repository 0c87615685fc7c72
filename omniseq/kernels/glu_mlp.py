"""``linear(act(a) * b, w2, b2)`` with ``a, b = linear(x, w1, b1).chunk(2, -1)``, at inference on CPU.

The gated MLP of GLA and ViG (SwiGLU, Shazeer 2020, https://arxiv.org/abs/2002.05202) widens
every token to ``2 * hidden`` columns (1024 for ViG-T): at 1024x1024 pixels that activation is
16 MB per block, far beyond a core's L2. Composed from modules, the wide product writes it to
memory, the activation and the product read it back in strided halves and write the gated half,
and the narrow product reads that again. This op runs over blocks of tokens whose hidden block
stays in L2, activates and gates in place there, and writes each block's output straight into
the result: ViG-T's MLP at 1024 px goes from ~33 to ~27 ms per block on one core of this EPYC.

It has no autograd: :func:`glu_mlp_inference` is for ``torch.no_grad()`` forwards (callers
check), and :func:`glu_mlp_reference` (the composed form, timm's ``GluMlp``) is its oracle.
Sums run in the same order per row, so results agree to rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["glu_mlp_inference", "glu_mlp_reference"]

# Hidden elements per block of rows and thread: 512 KB of float32, half a core's L2 here.
BLOCK_ELEMENTS = 1 << 17


def _block_rows(width: int) -> int:
    return max(32, torch.get_num_threads() * BLOCK_ELEMENTS // width)


def glu_mlp_reference(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor | None,
    w2: torch.Tensor,
    b2: torch.Tensor | None,
    act: Callable[[torch.Tensor], torch.Tensor],
    gate_last: bool = False,
) -> torch.Tensor:
    """The composed form (timm's ``GluMlp`` without dropout or norm): the oracle."""
    a, b = torch.nn.functional.linear(x, w1, b1).chunk(2, dim=-1)
    return torch.nn.functional.linear(a * act(b) if gate_last else act(a) * b, w2, b2)


@torch.no_grad()
def glu_mlp_inference(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor | None,
    w2: torch.Tensor,
    b2: torch.Tensor | None,
    act_: Callable[[torch.Tensor], torch.Tensor],
    gate_last: bool = False,
) -> torch.Tensor:
    """:func:`glu_mlp_reference` over blocks of rows, without autograd.

    ``act_`` is the activation applied in place (``torch.nn.functional.silu_`` style: it
    writes into its argument). ``x (..., C_in)`` -> ``(..., C_out)``.
    """
    width, features = w1.shape
    if x.shape[-1] != features or width % 2 or w2.shape[1] != width // 2:
        raise ValueError(
            f"glu_mlp: shapes do not chain: x (..., {x.shape[-1]}), w1 {tuple(w1.shape)}, w2 {tuple(w2.shape)}; "
            f"need w1 (2 * hidden, {x.shape[-1]}) and w2 (C_out, hidden)"
        )
    rows = x.reshape(-1, features)
    out = rows.new_empty(rows.shape[0], w2.shape[0])
    block = _block_rows(width)
    hidden_buffer = rows.new_empty(min(block, rows.shape[0]), width)
    w1_t, w2_t, half = w1.t(), w2.t(), width // 2
    for start in range(0, rows.shape[0], block):
        x_block = rows[start : start + block]
        h = hidden_buffer[: x_block.shape[0]]
        if b1 is None:
            torch.mm(x_block, w1_t, out=h)
        else:
            torch.addmm(b1, x_block, w1_t, out=h)
        first, second = h[:, :half], h[:, half:]
        activated, other = (second, first) if gate_last else (first, second)
        gated = act_(activated).mul_(other)
        out_block = out[start : start + block]
        if b2 is None:
            torch.mm(gated, w2_t, out=out_block)
        else:
            torch.addmm(b2, gated, w2_t, out=out_block)
    return out.view(*x.shape[:-1], w2.shape[0])
