"""Both directions of gated linear attention in one chunked pass: ``GLA(g_f) + reverse GLA(g_b)``.

ViG's mixer (Liao et al. 2024, https://arxiv.org/abs/2405.18425) sums a forward and a
backward GLA (:mod:`omniseq.kernels.gla`) over the same ``q, k, v`` with different
gates. Run as two sequences (the backward one flipped) it copies and flips every input
and the output. Here both directions share the chunking of ``q, k, v``; per chunk

    o = scale * (tril(S_f) + triu(S_b)) @ v + q_f @ H_f + q_b @ H_b

with ``S_f, S_b`` the within-chunk scores of each direction (the diagonal, token ``t``
itself, belongs to both) and ``H_f, H_b`` the states entering the chunk from the past and
from the future: one product with ``v`` for both directions, no flipped copies of the
inputs, and the two state scans run as one.

The backward direction's within-chunk decays use the exclusive forward sum ``E`` of its
gates: the reverse cumulative gate is ``T - E`` with ``T`` the chunk total, and ``T``
cancels in every difference. Chunks whose gate sums do not fit the factored form (see
:mod:`omniseq.kernels.gla`: ``_NARROW_GATE_SUM``, ``_FACTOR_SPAN``, and any ``-inf`` gate)
run the two directions through :func:`gated_linear_attention`, which handles them exactly.
:func:`bidirectional_gated_linear_attention_reference` (the two recurrent loops) is the oracle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from omniseq.kernels._backend import own_precision, resolve_backend
from omniseq.kernels.gla import (
    _FACTOR_SPAN,
    _NARROW_GATE_SUM,
    _check_inputs,
    _chunking,
    _compute_dtype,
    _scan_states,
    gated_linear_attention,
    gated_linear_attention_recurrent,
)

__all__ = ["bidirectional_gated_linear_attention", "bidirectional_gated_linear_attention_reference"]


def bidirectional_gated_linear_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g_forward: torch.Tensor, g_backward: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """The forward and the reverse recurrence, token by token, summed: the oracle."""
    forward, _ = gated_linear_attention_recurrent(q, k, v, g_forward, scale=scale)
    backward, _ = gated_linear_attention_recurrent(q, k, v, g_backward, reverse=True, scale=scale)
    return forward + backward


@own_precision
def bidirectional_gated_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g_forward: torch.Tensor,
    g_backward: torch.Tensor,
    scale: float | None = None,
    chunk_size: int = 64,
    backend: str = "auto",
) -> torch.Tensor:
    """``GLA(q, k, v, g_forward) + reverse GLA(q, k, v, g_backward)``, zero initial states.

    Args:
        q, k, g_forward, g_backward: ``(B, L, H, K)``; v: ``(B, L, H, V)`` (any strides).
        scale: query scale, default ``K ** -0.5`` (ViG passes half of it for the mean).
        chunk_size: tokens per chunk; backend: as :func:`gated_linear_attention`.

    Returns:
        ``o (B, L, H, V)`` in q's dtype, a view of a head-major tensor.
    """
    _check_inputs("bidirectional_gated_linear_attention", q, k, v, g_forward, None)
    _check_inputs("bidirectional_gated_linear_attention", q, k, v, g_backward, None)
    if not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"bidirectional_gated_linear_attention: chunk_size must be a positive int, got {chunk_size!r}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    fused = None
    if resolve_backend(backend, q, k, v, g_forward, g_backward) == "torch" and 0 not in q.shape + v.shape:
        fused = _fused(q, k, v, g_forward, g_backward, scale, chunk_size)
    if fused is not None:
        return fused
    forward, _ = gated_linear_attention(q, k, v, g_forward, scale=scale, chunk_size=chunk_size, backend=backend)
    backward, _ = gated_linear_attention(
        q, k, v, g_backward, reverse=True, scale=scale, chunk_size=chunk_size, backend=backend
    )
    return forward + backward


def _fused(q, k, v, g_forward, g_backward, scale: float, chunk_size: int) -> torch.Tensor | None:
    """The one-pass form on ``(B, H, N, C, *)`` chunks, or None where a chunk does not factor."""
    B, L, H, K = q.shape
    V = v.shape[-1]
    out_dtype, dtype = q.dtype, _compute_dtype(q, k, v, g_forward, g_backward)
    chunk, N, pad = _chunking(L, chunk_size)

    def to_chunks(x: torch.Tensor) -> torch.Tensor:
        # Zero padding is exact in both directions: k = v = 0 adds nothing, g = 0 keeps the state.
        x = F.pad(x.to(dtype), (0, 0, 0, 0, 0, pad)) if pad else x.to(dtype)
        return x.unflatten(1, (N, chunk)).permute(0, 3, 1, 2, 4)  # a view; (B, H, N, C, *)

    # The cumulative sums come out head-major from the (strided) gate views. A -inf or huge
    # gate fails the range checks below and takes the exact path (which clamps it).
    g_b = to_chunks(g_backward)
    cum_f, cum_b = to_chunks(g_forward).cumsum(dim=-2), g_b.cumsum(dim=-2)
    excl_b = cum_b - g_b
    with torch.no_grad():
        highs = [c.amax(dim=-2, keepdim=True) for c in (cum_f, excl_b)]
        lows = [c.amin(dim=-2, keepdim=True) for c in (cum_f, excl_b)]
        widest = torch.stack([torch.maximum(h.abs(), lo.abs()).amax() for h, lo in zip(highs, lows, strict=True)]).amax()
        span = torch.stack([(h - lo).amax() for h, lo in zip(highs, lows, strict=True)]).amax()
        fits = bool(widest <= _NARROW_GATE_SUM.get(dtype, float("inf"))) and bool(span <= _FACTOR_SPAN.get(dtype, 0.0))
    if not fits:
        return None
    q, k, v = (to_chunks(t).contiguous() for t in (q, k, v))
    centres = [(h + lo) / 2 for h, lo in zip(highs, lows, strict=True)]  # they cancel: no gradient needed
    o = _chunk_products(q, k, v, (cum_f, excl_b), centres, cum_b[..., -1:, :], scale)
    return o.view(B, H, N * chunk, V)[:, :, :L].transpose(1, 2).to(out_dtype)


def _chunk_products(q, k, v, sums, centres, total_b, scale: float) -> torch.Tensor:
    """Scores, states and outputs of both directions on ``(B, H, N, C, *)`` chunks.

    Forward: ``exp(G_i - G_j) = exp(G_i - c) exp(c - G_j)`` with ``G`` the inclusive sum
    (as :func:`omniseq.kernels.gla._forward_factored`). Backward: with ``E`` the exclusive
    sum, the decay from ``j`` back to ``i <= j`` is ``exp(E_j - E_i)``; with ``R = -E`` it is
    ``exp(R_i - c) exp(c - R_j)``, the forward form with the triangle transposed.
    ``total_b`` is the backward gates' chunk total ``T``; every exponent below is <= 0 or
    within ``exp(+-span/2)``.
    """
    B, H, N, C, _ = q.shape
    (cum_f, excl_b), (centre_f, centre_e) = sums, centres
    rev_b, centre_r = excl_b.neg(), centre_e.neg()
    decay_f, decay_b = (cum_f - centre_f).exp(), (rev_b - centre_r).exp()
    q_f, k_f, q_b, k_b = q * decay_f, k / decay_f, q * decay_b, k / decay_b
    # Chunk-end updates: the forward state at the chunk's last token, the backward at its first.
    to_end_f = (cum_f[..., -1:, :] - centre_f).exp().transpose(-1, -2)  # (B, H, N, K, 1)
    to_start_b = centre_r.neg().exp().transpose(-1, -2)  # exp(E_j) = exp(c - R_j) * exp(-c)
    update_f = (k_f.transpose(-1, -2) @ v) * to_end_f
    update_b = (k_b.transpose(-1, -2) @ v) * to_start_b
    decay_f, decay_b = (t.exp().transpose(-1, -2) for t in (cum_f[..., -1:, :], total_b))
    state_f, state_b = _scan_both(decay_f, update_f, decay_b, update_b)
    read_f = state_f * centre_f.exp().transpose(-1, -2)
    read_b = state_b * (centre_r + total_b).exp().transpose(-1, -2)
    # tril(S_f) + triu(S_b), in place on the fresh products (their backward needs only
    # their inputs): token t itself is in both directions.
    scores = (q_f @ k_f.transpose(-1, -2)).tril_().add_((q_b @ k_b.transpose(-1, -2)).triu_())

    def rows(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(0, 2)

    # beta = 0 ignores ``unused``; the products' backward needs only their inputs.
    unused = q.new_zeros(1, 1, 1).expand(B * H * N, C, v.shape[-1])
    o = torch.baddbmm(unused, rows(q_f), rows(read_f), beta=0.0, alpha=scale)
    o.baddbmm_(rows(q_b), rows(read_b), alpha=scale)
    return o.baddbmm_(rows(scores), rows(v), alpha=scale)


def _scan_both(
    decay_f: torch.Tensor, update_f: torch.Tensor, decay_b: torch.Tensor, update_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """States entering each chunk ``(B, H, N, K, V)``: from the past (forward) and from the future.

    Without autograd each direction's states are written in place, the backward one from the
    last chunk down (no flipped copies); with it, both run as one batch of ``2B`` through
    :func:`omniseq.kernels.gla._scan_states`, the backward one flipped.
    """
    B, H, N, K, V = update_f.shape
    if torch.is_grad_enabled() and any(t.requires_grad for t in (decay_f, update_f, decay_b, update_b)):
        zeros = update_f.new_zeros(2 * B, H, K, V)
        states, _ = _scan_states(torch.cat([decay_f, decay_b.flip(2)]), torch.cat([update_f, update_b.flip(2)]), zeros)
        return states[:B], states[B:].flip(2)
    forward, backward = update_f.new_empty(B, H, N + 1, K, V), update_f.new_empty(B, H, N + 1, K, V)
    forward[:, :, 0].zero_()
    backward[:, :, N].zero_()
    for n in range(N):
        torch.addcmul(update_f[:, :, n], decay_f[:, :, n], forward[:, :, n], out=forward[:, :, n + 1])
        m = N - 1 - n
        torch.addcmul(update_b[:, :, m], decay_b[:, :, m], backward[:, :, m + 1], out=backward[:, :, m])
    return forward[:, :, :N], backward[:, :, 1:]
