"""Gated linear attention (GLA), chunked and recurrent forms in PyTorch.

Yang et al. 2023, "Gated Linear Attention Transformers with Hardware-Efficient
Training", https://arxiv.org/abs/2312.06635. Convention of
flash-linear-attention: per head a state ``S`` of shape ``(K, V)`` evolves as

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,        o_t = (scale * q_t) S_t,

with ``g`` log forget gates (``<= 0``) and the output including token ``t``.

The chunked form passes the state from chunk to chunk and computes each chunk
internally in parallel. Every exponent is a difference of within-block
cumulative log gates, bounded by construction, so nothing overflows however
strong the gates are and gradients stay finite:
- a block whose per-channel gate range fits the dtype (``_FACTOR_SPAN``; the
  usual case) factors as ``exp(G_i - c) * exp(c - G_j)`` around its mid-range
  ``c``: one masked matmul per chunk;
- a wider block is split into 4 sub-blocks (secondary chunking): cross pairs
  factor through a reference token with both exponents ``<= 0``, and the
  sub-blocks recurse, down to an explicit ``(C, C, K)`` decay on 4-token blocks.

Precision: half inputs (fp16/bf16) run in fp32 and autocast is kept out
(:func:`own_precision`). Chunks whose cumulative log gates reach
beyond ``-32`` are summed in float64 (fp32 on MPS) and cast to the compute dtype
only as the differences that get exponentiated: an fp32 sum near ``-1e3`` has an
ulp of ``6e-5``, so ``G_i - G_j`` between two tokens after a strong gate would
otherwise carry that absolute error into ``exp`` (~1e-1 relative error with
``-1e4`` gates, against ~1e-5 now).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from omniseq.kernels._backend import own_precision, resolve_backend, wide_float

__all__ = [
    "gated_linear_attention",
    "gated_linear_attention_recurrent",
    "gated_linear_attention_reference",
]

_MIN_BLOCK = 4  # blocks this small that still do not factor are formed explicitly
_LOW_PRECISION = (torch.float16, torch.bfloat16)
# Largest per-channel range of cumulative log gates within a block for which
# exp(+-range/2) (times q and k) stays well inside the dtype's normal range.
_FACTOR_SPAN = {torch.float32: 60.0, torch.float64: 600.0}
# Largest |cumulative log gate| within a chunk that an fp32 sum holds to ~4e-6 absolute
# error (its ulp at 32), on par with the matmuls; beyond it the gates are summed in float64.
_NARROW_GATE_SUM = {torch.float32: 32.0}
# Log gates are clamped here: exp(-1000) is exactly 0 in fp16/bf16/fp32/fp64 (a gate of 0).
_GATE_FLOOR = -1000.0


def _check_inputs(
    name: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None,
) -> None:
    if q.dim() != 4:
        raise ValueError(f"{name}: q must have shape (B, L, H, K), got {tuple(q.shape)}")
    B, L, H, K = q.shape
    for label, t in (("k", k), ("g", g)):
        if t.shape != q.shape:
            raise ValueError(
                f"{name}: {label} must have shape (B, L, H, K) = {tuple(q.shape)}, got {tuple(t.shape)}"
            )
    if v.dim() != 4 or v.shape[:3] != (B, L, H):
        raise ValueError(
            f"{name}: v must have shape (B, L, H, V) = ({B}, {L}, {H}, V), got {tuple(v.shape)}"
        )
    V = v.shape[3]
    if initial_state is not None and initial_state.shape != (B, H, K, V):
        raise ValueError(
            f"{name}: initial_state must have shape (B, H, K, V) = {(B, H, K, V)}, "
            f"got {tuple(initial_state.shape)}"
        )
    tensors = [q, k, v, g] + ([] if initial_state is None else [initial_state])
    if not all(t.is_floating_point() for t in tensors):
        raise ValueError(f"{name}: q, k, v, g, initial_state must be floating point tensors")


def _chunking(length: int, chunk_size: int) -> tuple[int, int, int]:
    """Chunk length, number of chunks and zero padding for a sequence of ``length`` steps;
    short inputs need not pay for a whole chunk (rounded up to a multiple of 16 instead)."""
    chunk = chunk_size
    if length < chunk_size and chunk_size % 16 == 0:
        chunk = max(16, -(-length // 16) * 16)
    count = -(-length // chunk)
    return chunk, count, count * chunk - length


def _compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """fp32 for half inputs (states and gate sums must not run in 8-bit mantissas)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return torch.float32 if dtype in _LOW_PRECISION else dtype


@own_precision
def gated_linear_attention_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    reverse: bool = False,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step-by-step GLA recurrence: the oracle, and the ``step`` of causal mixers.

    Args:
        q, k, g: ``(B, L, H, K)``; v: ``(B, L, H, V)``; g are log forget gates.
        initial_state: ``(B, H, K, V)`` or None (zeros).
        reverse: run from position ``L - 1`` down to ``0``.
        scale: query scale, default ``K ** -0.5``.

    Returns:
        ``(o, final_state)``: o ``(B, L, H, V)`` in q's dtype, final state
        ``(B, H, K, V)`` in fp32 for half inputs, else the input dtype.
    """
    _check_inputs("gated_linear_attention_recurrent", q, k, v, g, initial_state)
    B, L, H, K = q.shape
    V = v.shape[-1]
    dtype = _compute_dtype(q, k, v, g, initial_state)
    if 0 in (B, H, K, V):
        return _empty_result(q, v, initial_state, dtype)
    scale = K**-0.5 if scale is None else scale
    if initial_state is None:
        state = torch.zeros(B, H, K, V, dtype=dtype, device=q.device)
    else:
        state = initial_state.to(dtype)
    outputs: list[torch.Tensor] = [q.new_empty(0)] * L
    for t in range(L - 1, -1, -1) if reverse else range(L):
        decay = g[:, t].to(dtype).exp().unsqueeze(-1)
        update = k[:, t].to(dtype).unsqueeze(-1) * v[:, t].to(dtype).unsqueeze(-2)
        state = decay * state + update
        outputs[t] = torch.einsum("bhk,bhkv->bhv", q[:, t].to(dtype) * scale, state)
    if L == 0:
        return v.new_zeros(B, 0, H, V).to(q.dtype), state
    return torch.stack(outputs, dim=1).to(q.dtype), state


gated_linear_attention_reference = gated_linear_attention_recurrent


def _empty_result(
    q: torch.Tensor, v: torch.Tensor, initial_state: torch.Tensor | None, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and state when B, H, K or V is 0: zeros (a sum over an empty K is 0)."""
    B, L, H, K = q.shape
    V = v.shape[-1]
    state = torch.zeros(B, H, K, V, dtype=dtype, device=q.device) if initial_state is None else initial_state.to(dtype)
    return q.new_zeros(B, L, H, V), state


@own_precision
def gated_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    reverse: bool = False,
    scale: float | None = None,
    chunk_size: int = 64,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gated linear attention, chunked-parallel form (Yang et al. 2023).

    Same arguments and returns as :func:`gated_linear_attention_recurrent`, plus
    ``chunk_size`` (tokens per chunk of the torch path; any length works, the
    tail is zero-padded internally) and ``backend`` (``"auto" | "torch" |
    "triton"``; Triton dispatches to ``omniseq.kernels.triton.gla``).
    """
    backend = resolve_backend(backend, q, k, v, g)
    # A gate of 0 (log gate -inf) is legal; its cumulative sums would give -inf - -inf = NaN.
    # Below _GATE_FLOOR exp underflows to exactly 0 in every compute dtype, so clamping is exact.
    g = g.clamp(min=_GATE_FLOOR)
    if backend == "triton":
        from omniseq.kernels.triton.gla import gated_linear_attention_triton

        return gated_linear_attention_triton(
            q, k, v, g, initial_state=initial_state, reverse=reverse, scale=scale
        )
    _check_inputs("gated_linear_attention", q, k, v, g, initial_state)
    if not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(
            f"gated_linear_attention: chunk_size must be a positive int, got {chunk_size!r}"
        )
    if q.shape[1] == 0 or 0 in q.shape or 0 in v.shape:  # nothing to chunk; the loop form handles it exactly
        return gated_linear_attention_recurrent(q, k, v, g, initial_state, reverse, scale)
    if reverse:
        q, k, v, g = (t.flip(1) for t in (q, k, v, g))
    o, state = _chunked_forward(q, k, v, g, initial_state, scale, chunk_size)
    return (o.flip(1) if reverse else o), state


def _chunked_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None,
    scale: float | None,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    B, L, H, K = q.shape
    V = v.shape[-1]
    out_dtype = q.dtype
    dtype = _compute_dtype(q, k, v, g, initial_state)
    scale = K**-0.5 if scale is None else scale
    chunk, num_chunks, pad = _chunking(L, chunk_size)

    def to_chunks(x: torch.Tensor) -> torch.Tensor:
        # Zero padding is exact: k = v = 0 adds nothing and g = 0 keeps the state.
        x = F.pad(x.to(dtype), (0, 0, 0, 0, 0, pad)) if pad else x.to(dtype)
        return x.transpose(1, 2).reshape(B, H, num_chunks, chunk, x.shape[-1])

    q, k, v, g = to_chunks(q), to_chunks(k), to_chunks(v), to_chunks(g)
    if initial_state is None:
        state = torch.zeros(B, H, K, V, dtype=dtype, device=q.device)
    else:
        state = initial_state.to(dtype)
    cum_g = g.cumsum(dim=-2)
    with torch.no_grad():
        lowest, highest = torch.aminmax(cum_g)
        narrow_enough = bool(torch.maximum(-lowest, highest) <= _NARROW_GATE_SUM.get(dtype, float("inf")))
    if not narrow_enough:  # strong gates: sum them in float64 (see the module docstring)
        g = g.to(wide_float(q.device))
        cum_g = g.cumsum(dim=-2)
    with torch.no_grad():
        high, low = cum_g.amax(dim=-2, keepdim=True), cum_g.amin(dim=-2, keepdim=True)
        all_factorable = bool((high - low).amax() <= _FACTOR_SPAN.get(dtype, 0.0))
    if all_factorable:
        o, state = _forward_factored(q, k, v, cum_g, (high + low) / 2, state, scale)
    else:
        o, state = _forward_general(q * scale, k, v, g, cum_g, state)
    o = o.reshape(B, H, num_chunks * chunk, V)[:, :, :L].transpose(1, 2)
    return o.to(out_dtype), state


def _scan_states(
    chunk_decay: torch.Tensor, chunk_update: torch.Tensor, state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """State entering each chunk ``(B, H, N, K, V)`` and the final state.

    chunk_decay ``(B, H, N, K, 1)`` is ``exp`` of the chunk's total log gate,
    chunk_update ``(B, H, N, K, V)`` the chunk's keys and values decayed to its end.
    """
    if not _needs_graph(chunk_decay, chunk_update, state):
        return _scan_states_inplace(chunk_decay, chunk_update, state)
    states_in = []
    for n in range(chunk_update.shape[2]):
        states_in.append(state)
        state = chunk_decay[:, :, n] * state + chunk_update[:, :, n]
    return torch.stack(states_in, dim=2), state


def _needs_graph(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _scan_states_inplace(
    chunk_decay: torch.Tensor, chunk_update: torch.Tensor, state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_scan_states` without autograd: one fused op per chunk, written in place
    into one ``(B, H, N + 1, K, V)`` buffer (no list of states and no final stack)."""
    B, H, N, K, V = chunk_update.shape
    states = chunk_update.new_empty(B, H, N + 1, K, V)
    states[:, :, 0].copy_(state)
    for n in range(N):
        torch.addcmul(chunk_update[:, :, n], chunk_decay[:, :, n], states[:, :, n], out=states[:, :, n + 1])
    return states[:, :, :N], states[:, :, N]


def _forward_factored(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cum_g: torch.Tensor,
    centre: torch.Tensor,
    state: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked GLA when every chunk factors around its mid-range ``centre`` (usual case).

    ``exp(G_i - G_j) = exp(G_i - c) * exp(c - G_j)`` with both factors within
    ``exp(+-span/2)``; one ``exp`` pass serves the intra-chunk matmul, the
    state read ``exp(G_i)`` and the state update ``exp(G_last - G_j)``.
    Tensors are ``(B, H, N, C, *)``; ``cum_g`` and ``centre`` may be wider (float64).
    The query ``scale`` is applied inside the two products that read queries.
    """
    C = q.shape[-2]
    decay = _exp(cum_g - centre, q.dtype)
    q_decayed, k_grown = q * decay, k / decay
    last = cum_g[..., -1:, :]
    to_end = _exp(last - centre, q.dtype).transpose(-1, -2)  # (B, H, N, K, 1), <= 1
    chunk_update = (k_grown.transpose(-1, -2) @ v) * to_end
    states_in, state = _scan_states(_exp(last, q.dtype).transpose(-1, -2), chunk_update, state)
    anticausal = torch.ones(C, C, dtype=torch.bool, device=q.device).triu(1)
    # In place on the fresh product (bmm's backward needs only its inputs), and the
    # inter-chunk part added inside the second matmul: two passes fewer over (C, C).
    scores = (q_decayed @ k_grown.transpose(-1, -2)).masked_fill_(anticausal, 0.0)
    states_read = (states_in * _exp(centre, q.dtype).transpose(-1, -2)).flatten(0, 2)
    # o = scale * (q_decayed @ states_read) + scale * (scores @ v), accumulated in place
    # (the products' backward needs only their inputs); beta = 0 ignores ``unused``.
    unused = q.new_zeros(1, 1, 1).expand(states_read.shape[0], C, v.shape[-1])
    o = torch.baddbmm(unused, q_decayed.flatten(0, 2), states_read, beta=0.0, alpha=scale)
    o.baddbmm_(scores.flatten(0, 2), v.flatten(0, 2), alpha=scale)
    return o.view(*q.shape[:-1], v.shape[-1]), state


def _forward_general(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    cum_g: torch.Tensor,
    state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked GLA for any gates; every exponent is bounded. ``(B, H, N, C, *)``."""
    C = q.shape[-2]
    last = cum_g[..., -1:, :]
    # Both exponents are <= 0: keys decayed to the chunk end, queries from its start.
    chunk_update = (k * _exp(last - cum_g, q.dtype)).transpose(-1, -2) @ v
    states_in, state = _scan_states(_exp(last, q.dtype).transpose(-1, -2), chunk_update, state)
    o = (q * _exp(cum_g, q.dtype)) @ states_in

    def rows(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, C, x.shape[-1])

    o = o + _intra(rows(q), rows(k), rows(v), rows(g), rows(cum_g)).view_as(o)
    return o, state


def _exp(exponent: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``exp`` in the compute dtype of a (possibly float64) difference of gate sums."""
    return exponent.to(dtype).exp()


def _intra(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, cum_g: torch.Tensor
) -> torch.Tensor:
    """Causal GLA inside blocks: ``o_i = sum_{j<=i} (q_i * exp(G_i - G_j) . k_j) v_j``.

    Inputs are rows ``(M, C, *)``, ``g`` and ``cum_g`` (possibly float64) the log gates and
    the inclusive cumulative log gate of each row. A row whose per-channel range of ``G`` is within the dtype's span
    factors as ``exp(G_i - c) * exp(c - G_j)`` around the mid-range ``c``: one
    masked matmul with both factors in range. Other rows are split into
    sub-blocks (:func:`_intra_split`), down to an explicit form on tiny blocks.
    """
    M, C, K = q.shape
    with torch.no_grad():
        high, low = cum_g.amax(dim=-2, keepdim=True), cum_g.amin(dim=-2, keepdim=True)
        factorable = (high - low).amax(dim=(-2, -1)) <= _FACTOR_SPAN.get(q.dtype, 0.0)
        centre = (high + low) / 2  # cancels in the product, so it needs no gradient
    centred = cum_g - centre
    if bool(factorable.all()):
        return _intra_factored(q, k, v, centred)
    # Zeroing the gates of the other rows keeps this branch finite there: an
    # inf in an unused branch would still poison the gradients.
    o = _intra_factored(q, k, v, centred.masked_fill(~factorable[:, None, None], 0.0))
    rows = (~factorable).nonzero().squeeze(1)
    picked = [t.index_select(0, rows) for t in (q, k, v, g, cum_g)]
    exact = _intra_split(*picked) if C > _MIN_BLOCK and C % 4 == 0 else _intra_explicit(*picked)
    return o.index_copy(0, rows, exact)


def _intra_factored(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, centred_g: torch.Tensor
) -> torch.Tensor:
    decay = _exp(centred_g, q.dtype)
    C = q.shape[-2]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    scores = (q * decay) @ (k / decay).transpose(-1, -2)
    return scores.masked_fill(~causal, 0.0) @ v


def _intra_split(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, cum_g: torch.Tensor
) -> torch.Tensor:
    """:func:`_intra` on rows ``(M, C, *)`` split into 4 sub-blocks (secondary chunking).

    A query in sub-block ``a`` and a key in an earlier sub-block factor through
    the first token ``r`` of ``a``: ``exp(G_i - G_r) * exp(G_r - G_j)``, both
    factors <= 1, so that part is two matmuls. Pairs within a sub-block recurse.
    """
    M, C, K = q.shape
    n_sub, sub = 4, C // 4
    q_sub = q.reshape(M, n_sub, sub, K)
    local_g = g.reshape(M, n_sub, sub, K).cumsum(dim=-2)  # small magnitudes, for precision
    ref = cum_g.reshape(M, n_sub, sub, K)[:, :, :1, :]  # (M, n_sub, 1, K)
    q_ref = q_sub * _exp(local_g - local_g[:, :, :1, :], q.dtype)
    starts = torch.arange(n_sub, device=q.device) * sub
    before = torch.arange(C, device=q.device).unsqueeze(0) < starts.unsqueeze(1)
    k_gap = (ref - cum_g.unsqueeze(1)).masked_fill(~before.unsqueeze(-1), float("-inf"))
    k_ref = k.unsqueeze(1) * _exp(k_gap, q.dtype)  # (M, n_sub, C, K): keys seen from each ref
    o = (q_ref @ k_ref.transpose(-1, -2)) @ v.unsqueeze(1)  # (M, n_sub, sub, V)

    def blocks(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(M * n_sub, sub, x.shape[-1])

    o = o + _intra(blocks(q), blocks(k), blocks(v), blocks(g), blocks(local_g)).view_as(o)
    return o.reshape(M, C, v.shape[-1])


def _intra_explicit(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, cum_g: torch.Tensor
) -> torch.Tensor:
    """:func:`_intra` with the per-channel decay ``(C, C, K)`` formed explicitly."""
    C = q.shape[-2]
    diff = cum_g.unsqueeze(-2) - cum_g.unsqueeze(-3)  # (M, i, j, K)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    decay = _exp(diff.masked_fill(~causal.unsqueeze(-1), float("-inf")), q.dtype)
    scores = (decay * (q.unsqueeze(-2) * k.unsqueeze(-3))).sum(-1)
    return scores @ v
