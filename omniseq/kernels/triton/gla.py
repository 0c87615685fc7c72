"""Triton chunked gated linear attention (GLA, Yang et al., https://arxiv.org/abs/2312.06635).

Per head: ``S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t`` and ``o_t = (scale q_t) S_t``.
Organised as flash-linear-attention's ``chunk_gla``: log gates are summed within
chunks of 64 steps; the state is passed between chunks in fp32 by a sequential
kernel; inside a chunk, scores come from 16-step sub-chunks whose decays are
factored through a reference row so no exponent is positive. The backward pass
recomputes the chunk states instead of keeping them from the forward pass.
"""

from __future__ import annotations

import torch
import triton

from omniseq.kernels.gla import _check_inputs
from omniseq.kernels.triton import _gla_bwd as bwd
from omniseq.kernels.triton import _gla_fwd as fwd
from omniseq.kernels.triton._utils import check_same_device, dot_precision

CHUNK = 64
SUB_CHUNK = 16


def _state_blocks(dk: int, dv: int) -> tuple[int, int]:
    """State tile of one sequential program; 32x32 measured best on an H100 for K = V = 64."""

    def block(size: int) -> int:
        return min(32, max(16, triton.next_power_of_2(size)))

    return block(dk), block(dv)


def _chunk_states(k, v, gc, initial_state, store_final: bool):
    """States before each chunk ``(B*H, NT, K, V)`` (input dtype) and the final state (fp32)."""
    batch, length, heads, dk = k.shape
    dv = v.shape[-1]
    n_chunks = triton.cdiv(length, CHUNK)
    acc = gc.dtype
    states = torch.empty(batch * heads, n_chunks, dk, dv, device=k.device, dtype=k.dtype)
    final = torch.empty(batch, heads, dk, dv, device=k.device, dtype=acc) if store_final else None
    bk, bv = _state_blocks(dk, dv)
    grid = (triton.cdiv(dk, bk), triton.cdiv(dv, bv), batch * heads)
    fwd._gla_states_kernel[grid](
        k,
        v,
        gc,
        initial_state if initial_state is not None else gc,
        states,
        final if final is not None else gc,
        length,
        heads,
        dk,
        dv,
        n_chunks,
        HAS_H0=initial_state is not None,
        STORE_FINAL=store_final,
        PREC=dot_precision(k.dtype),
        BT=CHUNK,
        BK=bk,
        BV=bv,
    )
    return states, final


def _forward(q, k, v, g, initial_state, scale):
    batch, length, heads, dk = q.shape
    dv = v.shape[-1]
    n_chunks = triton.cdiv(length, CHUNK)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    prec = dot_precision(q.dtype)
    bk = triton.next_power_of_2(dk)
    gc = torch.empty(g.shape, device=g.device, dtype=acc)
    fwd._gla_cumsum_kernel[(n_chunks, batch * heads)](g, gc, length, heads, dk, BT=CHUNK, BK=bk)
    states, final = _chunk_states(k, v, gc, initial_state, store_final=True)
    scores = torch.empty(batch * heads, length, CHUNK, device=q.device, dtype=acc)
    # Sub-chunks above the diagonal are never written by the kernel; zero them here.
    scores.zero_()
    fwd._gla_intra_kernel[(n_chunks * (CHUNK // SUB_CHUNK), batch * heads)](
        q,
        k,
        gc,
        scores,
        scale,
        length,
        heads,
        dk,
        PREC=prec,
        BT=CHUNK,
        BC=SUB_CHUNK,
        BK=bk,
    )
    o = torch.empty_like(v)
    bv = min(64, triton.next_power_of_2(dv))
    fwd._gla_output_kernel[(triton.cdiv(dv, bv), n_chunks, batch * heads)](
        q,
        v,
        gc,
        states,
        scores,
        o,
        scale,
        length,
        heads,
        dk,
        dv,
        n_chunks,
        PREC=prec,
        BT=CHUNK,
        BK=bk,
        BV=bv,
    )
    return o, final, gc, scores


def _backward(q, k, v, gc, scores, initial_state, scale, grad_o, grad_final):
    batch, length, heads, dk = q.shape
    dv = v.shape[-1]
    n_chunks = triton.cdiv(length, CHUNK)
    prec = dot_precision(q.dtype)
    bk, bv = triton.next_power_of_2(dk), triton.next_power_of_2(dv)
    states, _ = _chunk_states(k, v, gc, initial_state, store_final=False)
    grad_states = torch.empty_like(states)
    grad_h0 = torch.empty(batch, heads, dk, dv, device=q.device, dtype=gc.dtype)
    sk, sv = _state_blocks(dk, dv)
    bwd._gla_bwd_dh_kernel[(triton.cdiv(dk, sk), triton.cdiv(dv, sv), batch * heads)](
        q,
        grad_o,
        gc,
        grad_final if grad_final is not None else gc,
        grad_states,
        grad_h0,
        scale,
        length,
        heads,
        dk,
        dv,
        n_chunks,
        HAS_DHT=grad_final is not None,
        PREC=prec,
        BT=CHUNK,
        BK=sk,
        BV=sv,
    )
    grad_scores = torch.empty_like(scores)
    grad_v = torch.empty_like(v)
    bwd._gla_bwd_dv_kernel[(n_chunks, batch * heads)](
        k,
        v,
        gc,
        grad_o,
        scores,
        grad_states,
        grad_scores,
        grad_v,
        length,
        heads,
        dk,
        dv,
        n_chunks,
        PREC=prec,
        BT=CHUNK,
        BK=bk,
        BV=bv,
    )
    grad_q, grad_k = torch.empty_like(gc), torch.empty_like(gc)
    bwd._gla_bwd_intra_kernel[(n_chunks * (CHUNK // SUB_CHUNK), batch * heads)](
        q,
        k,
        gc,
        grad_scores,
        grad_q,
        grad_k,
        scale,
        length,
        heads,
        dk,
        PREC=prec,
        BT=CHUNK,
        BC=SUB_CHUNK,
        BK=bk,
    )
    grad_g = torch.empty_like(gc)
    bwd._gla_bwd_inter_kernel[(n_chunks, batch * heads)](
        q,
        k,
        v,
        gc,
        grad_o,
        states,
        grad_states,
        grad_q,
        grad_k,
        grad_g,
        scale,
        length,
        heads,
        dk,
        dv,
        n_chunks,
        PREC=prec,
        BT=CHUNK,
        BK=bk,
        BV=bv,
    )
    return grad_q, grad_k, grad_v, grad_g, grad_h0


class _GatedLinearAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, initial_state, scale):
        o, final, gc, scores = _forward(q, k, v, g, initial_state, scale)
        ctx.save_for_backward(q, k, v, gc, scores, initial_state)
        ctx.scale = scale
        ctx.gate_dtype = g.dtype  # fp32 gates under AMP keep fp32 gradients
        return o, final

    @staticmethod
    def backward(ctx, grad_o, grad_final):
        q, k, v, gc, scores, initial_state = ctx.saved_tensors
        grads = _backward(
            q,
            k,
            v,
            gc,
            scores,
            initial_state,
            ctx.scale,
            grad_o.contiguous(),
            None if grad_final is None else grad_final.contiguous(),
        )
        grad_q, grad_k, grad_v, grad_g, grad_h0 = grads
        grad_h0 = grad_h0.to(initial_state.dtype) if initial_state is not None else None
        return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v, grad_g.to(ctx.gate_dtype), grad_h0, None


def _check(q, k, v, g, initial_state) -> None:
    # The shape rules are the torch op's; the head-size cap and devices are Triton's own.
    name = "gated_linear_attention_triton"
    _check_inputs(name, q, k, v, g, initial_state)
    if q.shape[-1] > 256 or v.shape[-1] > 256:
        raise ValueError(f"{name}: head sizes K, V must be <= 256, got K={q.shape[-1]}, V={v.shape[-1]}")
    check_same_device(name, q, k, v, g, initial_state)


def gated_linear_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    reverse: bool = False,
    scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked GLA; returns ``o (B, L, H, V)`` and the final state ``(B, H, K, V)`` in fp32.

    ``reverse=True`` runs the recurrence from the end (the sequence is flipped
    around the kernels, so the backward pass flips too). ``cu_seqlens``
    (``(N + 1,)`` int offsets, as in flash-attn's varlen API) treats a
    ``(1, T, H, *)`` input as N packed sequences; initial and final states are
    then ``(N, H, K, V)``.
    """
    g = g.clamp(min=-1000.0)  # a gate of 0 (log gate -inf) exactly: exp(-1000) is 0; -inf would give NaN
    if cu_seqlens is not None:
        return _varlen(q, k, v, g, initial_state, reverse, scale, cu_seqlens)
    _check(q, k, v, g, initial_state)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if reverse:
        q, k, v, g = (x.flip(1) for x in (q, k, v, g))
    dtype = q.dtype
    k, v = k.to(dtype).contiguous(), v.to(dtype).contiguous()
    h0 = None
    if initial_state is not None:
        h0 = initial_state.to(
            torch.float64 if dtype == torch.float64 else torch.float32
        ).contiguous()
    o, final = _GatedLinearAttentionFunction.apply(
        q.contiguous(), k, v, g.contiguous(), h0, float(scale)
    )
    if reverse:
        o = o.flip(1)
    return o, final


def _varlen(q, k, v, g, initial_state, reverse, scale, cu_seqlens):
    """Packed sequences, padded at their ends with k = v = 0 and g = 0, which leave the state unchanged."""
    name = "gated_linear_attention_triton"
    if q.dim() != 4 or q.shape[0] != 1:
        raise ValueError(
            f"{name}: with cu_seqlens, q must have shape (1, T, H, K), got {tuple(q.shape)}"
        )
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or int(cu_seqlens[-1]) != q.shape[1]:
        raise ValueError(
            f"{name}: cu_seqlens must have shape (N + 1,) and end at T={q.shape[1]}, got {cu_seqlens.tolist()}"
        )
    starts = cu_seqlens[:-1].to(device=q.device, dtype=torch.long)
    lengths = cu_seqlens[1:].to(device=q.device, dtype=torch.long) - starts
    if (lengths < 0).any():
        raise ValueError(f"{name}: cu_seqlens must be non-decreasing, got {cu_seqlens.tolist()}")
    positions = torch.arange(int(lengths.max()), device=q.device)
    valid = positions[None, :] < lengths[:, None]
    index = (starts[:, None] + positions[None, :]).clamp(max=max(q.shape[1] - 1, 0))

    def pad(x: torch.Tensor) -> torch.Tensor:
        return torch.where(valid[..., None, None], x[0, index], 0)

    o, final = gated_linear_attention_triton(
        pad(q), pad(k), pad(v), pad(g), initial_state=initial_state, reverse=reverse, scale=scale
    )
    return o[valid].unsqueeze(0), final
