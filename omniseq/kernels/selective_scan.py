"""Mamba-1 selective scan (Gu & Dao 2023, https://arxiv.org/abs/2312.00752), sequence-major.

Per channel ``d`` and state ``n``::

    dt_t = softplus(delta_t + delta_bias)            (or without softplus)
    h_t  = exp(dt_t * A[d, n]) * h_{t-1} + dt_t * B_t[n] * u_t
    y_t  = sum_n C_t[n] * h_t[d, n] + D[d] * u_t,     y_t *= silu(z_t) if z is given

The fast PyTorch form walks the sequence in chunks; inside a chunk the discretised
decays and inputs ``(B, T, D, N)`` are built and handed to :func:`linear_scan`, and
the chunk's last state seeds the next one, so the full ``(B, L, D, N)`` tensor never
exists. The decays are true products of ``exp(dt * A)``, so any sign of ``A`` is
exact. When gradients are needed for a large problem each chunk is checkpointed:
backward keeps only the inputs and one state per chunk and recomputes the rest.

On the CPU, ``backend="auto"`` runs the fused C kernel of
:mod:`omniseq.kernels.cpu.selective_scan` when a C compiler is present (states in
registers, nothing of size ``B*L*D*N`` in memory; 5x the PyTorch path for Vision
Mamba's shapes). It is once-differentiable: pass ``backend="torch"`` for double
backward.

Precision: with fp16/bf16 inputs (or under autocast, which is kept out of the
kernel by :func:`own_precision`) ``softplus(delta + bias)``, ``exp(dt * A)``, the
states and the ``C``-readout all run in fp32; only ``y`` is cast back to ``u``'s dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from omniseq.kernels._backend import own_precision, resolve_backend
from omniseq.kernels.cpu.selective_scan import selective_scan_cpu_core, softplus_with_bias_cpu
from omniseq.kernels.linear_scan import linear_scan

__all__ = [
    "selective_scan",
    "selective_scan_bidirectional",
    "selective_scan_bidirectional_reference",
    "selective_scan_reference",
]

# Chunk length along L; from a CPU sweep over L in {256, 1024, 4096}, D 128..256, N 16
# (32..512 tried; 64 and 128 tie within noise, 128 is ahead with gradients).
_CHUNK = 128
# Above this many state elements (B * L * D * N) the chunks are recomputed in backward
# instead of keeping ~4 full-size intermediates: 2-2.5x slower backward, O(B*T*D*N) memory.
_RECOMPUTE_ELEMENTS = 1 << 24


def _check_inputs(
    name: str,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    initial_state: torch.Tensor | None,
) -> None:
    if u.dim() != 3:
        raise ValueError(f"{name}: u must have shape (B, L, D), got {tuple(u.shape)}")
    batch, length, dim = u.shape
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"{name}: A must have shape (D, N) = ({dim}, N), got {tuple(A.shape)}")
    if A.is_complex():
        raise ValueError(f"{name}: A must be real, got {A.dtype}")
    nstate = A.shape[1]
    expected = {
        "delta": (delta, (batch, length, dim), "(B, L, D)"),
        "B": (B, (batch, length, nstate), "(B, L, N)"),
        "C": (C, (batch, length, nstate), "(B, L, N)"),
        "D": (D, (dim,), "(D,)"),
        "z": (z, (batch, length, dim), "(B, L, D)"),
        "delta_bias": (delta_bias, (dim,), "(D,)"),
        "initial_state": (initial_state, (batch, dim, nstate), "(B, D, N)"),
    }
    for key, (tensor, shape, names) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(
                f"{name}: {key} must have shape {names} = {shape}, got {tuple(tensor.shape)}"
            )
    for key, tensor in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        if not tensor.is_floating_point():
            raise ValueError(f"{name}: {key} must be a floating tensor, got {tensor.dtype}")


def _work_dtype(u: torch.Tensor) -> torch.dtype:
    return torch.float32 if u.dtype in (torch.float16, torch.bfloat16) else u.dtype


def _time_step(
    delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool
) -> torch.Tensor:
    dt = delta if delta_bias is None else delta + delta_bias
    return F.softplus(dt) if delta_softplus else dt


def _finish(
    y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None
) -> torch.Tensor:
    if D is not None:
        y = y + D * u
    if z is not None:
        y = y * F.silu(z)
    return y


def _scan_chunk(
    u: torch.Tensor,
    dt: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    A: torch.Tensor,
    state: torch.Tensor,
    reverse: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk: (B, T, D) inputs and the (B, D, N) state entering it -> (y, state leaving it)."""
    decay = torch.exp(dt.unsqueeze(-1) * A)
    drive = (dt * u).unsqueeze(-1) * B.unsqueeze(2)
    states = linear_scan(decay, drive, h0=state, reverse=reverse, backend="torch")
    y = torch.einsum("btdn,btn->btd", states, C)
    return y, states[:, 0 if reverse else -1]


def _scan_chunks(
    u: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    state: torch.Tensor,
    reverse: bool,
    recompute: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Walk the chunks in scan order, carrying the state; returns (y before D and z, last state)."""
    starts = list(range(0, u.shape[1], _CHUNK))
    ys: list[torch.Tensor] = []
    for start in reversed(starts) if reverse else starts:
        part = slice(start, start + _CHUNK)
        args = (u[:, part], dt[:, part], B[:, part], C[:, part], A, state, reverse)
        if recompute:
            y_chunk, state = checkpoint(_scan_chunk, *args, use_reentrant=False)
        else:
            y_chunk, state = _scan_chunk(*args)
        ys.append(y_chunk)
    if reverse:
        ys.reverse()
    y = torch.cat(ys, 1) if ys else u.new_zeros(u.shape[0], 0, u.shape[2])
    return y, state


@own_precision
def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    reverse: bool = False,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 selective scan; shapes as in the module docstring.

    Args:
        u, delta, z: ``(B, L, D)``. A: ``(D, N)`` real. B, C: ``(B, L, N)``.
        D, delta_bias: ``(D,)``. initial_state: ``(B, D, N)`` state before the first step
            (after the last one when ``reverse``).
        reverse: scan from the end of the sequence (the backward half of a bidirectional mixer).
        return_last_state: also return the state after the scan, ``(B, D, N)``.

    Returns:
        ``y`` ``(B, L, D)`` in the dtype of ``u``, or ``(y, last_state)``. States are kept in
        fp32 for fp16/bf16 inputs, and ``last_state`` is returned in that precision.
    """
    backend = resolve_backend(backend, u, delta, A, B, C, cpu_kernel="selective_scan")
    _check_inputs("selective_scan", u, delta, A, B, C, D, z, delta_bias, initial_state)
    if u.numel() == 0 or A.numel() == 0:
        backend = "torch"  # empty batch, length or channels: the compiled kernels need work to split
    if backend == "triton":
        from omniseq.kernels.triton.selective_scan import selective_scan_triton

        return selective_scan_triton(
            u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
            delta_softplus=delta_softplus, reverse=reverse, initial_state=initial_state,
            return_last_state=return_last_state,
        )  # fmt: skip
    work = _work_dtype(u)
    batch, length, dim = u.shape
    uw, Aw, Bw, Cw = u.to(work), A.to(work), B.to(work), C.to(work)
    bias = None if delta_bias is None else delta_bias.to(work)
    if backend == "cpu" and delta_softplus:
        dt = softplus_with_bias_cpu(delta.to(work), bias)
    else:
        dt = _time_step(delta.to(work), bias, delta_softplus)
    state = (
        initial_state.to(work)
        if initial_state is not None
        else uw.new_zeros(batch, dim, A.shape[1])
    )
    if backend == "cpu":
        Dw = None if D is None else D.to(work)
        y, state = selective_scan_cpu_core(uw, dt, Aw, Bw, Cw, state, reverse, D=Dw)
        D = None  # added inside the kernel
    else:
        recompute = (
            torch.is_grad_enabled()
            and length > _CHUNK
            and batch * length * dim * A.shape[1] > _RECOMPUTE_ELEMENTS
        ) and any(
            t is not None and t.requires_grad
            for t in (u, delta, A, B, C, delta_bias, initial_state)
        )
        y, state = _scan_chunks(uw, dt, Aw, Bw, Cw, state, reverse, recompute)
    y = _finish(y, uw, D, None if z is None else z.to(work)).to(u.dtype)
    return (y, state) if return_last_state else y


def _check_bidirectional(name: str, u, delta, A, B, C, D, delta_bias) -> None:
    if u.dim() != 4 or u.shape[0] != 2:
        raise ValueError(f"{name}: u must have shape (2, B, L, D) (forward, reverse), got {tuple(u.shape)}")
    for key, tensor, rank in (("delta", delta, 4), ("A", A, 3), ("B", B, 4), ("C", C, 4), ("D", D, 2),
                              ("delta_bias", delta_bias, 2)):
        if tensor is not None and (tensor.dim() != rank or tensor.shape[0] != 2):
            raise ValueError(f"{name}: {key} needs a leading direction axis of 2, got {tuple(tensor.shape)}")


@own_precision
def selective_scan_bidirectional(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Both scan directions of a bidirectional mixer, each with its own parameters.

    Every argument has a leading direction axis of 2 (index 0 scans forward, 1 from
    the end): ``u, delta (2, B, L, D)``, ``A (2, D, N)``, ``B, C (2, B, L, N)``,
    ``D, delta_bias (2, D)``. Returns ``y (2, B, L, D)`` with the ``D`` skip, ungated.
    On the CPU the two directions run as one compiled call over a ``2B`` batch, the
    reverse one by index (no flipped copies).
    """
    _check_bidirectional("selective_scan_bidirectional", u, delta, A, B, C, D, delta_bias)
    backend = resolve_backend(backend, u, delta, A, B, C, cpu_kernel="selective_scan")
    if backend != "cpu":
        return torch.stack([
            selective_scan(u[g], delta[g], A[g], B[g], C[g], D=None if D is None else D[g],
                           delta_bias=None if delta_bias is None else delta_bias[g],
                           delta_softplus=delta_softplus, reverse=bool(g), backend=backend)
            for g in range(2)
        ])  # fmt: skip
    for g in range(2):
        _check_inputs("selective_scan_bidirectional", u[g], delta[g], A[g], B[g], C[g],
                      None if D is None else D[g], None, None if delta_bias is None else delta_bias[g], None)
    work = _work_dtype(u)
    _, batch, length, dim = u.shape
    bias = None if delta_bias is None else delta_bias.to(work)
    if delta_softplus:
        dt = softplus_with_bias_cpu(delta.to(work), bias)
    else:
        dt = delta.to(work) if bias is None else delta.to(work) + bias[:, None, None]
    flat = (2 * batch, length, dim)
    y, _ = selective_scan_cpu_core(
        u.to(work).reshape(flat), dt.reshape(flat), A.to(work), B.to(work).reshape(2 * batch, length, -1),
        C.to(work).reshape(2 * batch, length, -1), None, (False, True), D=None if D is None else D.to(work),
    )  # fmt: skip
    return y.view(2, batch, length, dim).to(u.dtype)


def selective_scan_bidirectional_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """Loop form of :func:`selective_scan_bidirectional`: the reference once per direction."""
    _check_bidirectional("selective_scan_bidirectional_reference", u, delta, A, B, C, D, delta_bias)
    return torch.stack([
        selective_scan_reference(u[g], delta[g], A[g], B[g], C[g], D=None if D is None else D[g],
                                 delta_bias=None if delta_bias is None else delta_bias[g],
                                 delta_softplus=delta_softplus, reverse=bool(g))
        for g in range(2)
    ])  # fmt: skip


@own_precision
def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    reverse: bool = False,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Step-by-step loop form of :func:`selective_scan`; the test oracle."""
    _check_inputs("selective_scan_reference", u, delta, A, B, C, D, z, delta_bias, initial_state)
    # Written out independently of the fast form (no shared helpers) so it stays an oracle.
    work = _work_dtype(u)
    batch, length, dim = u.shape
    u_, A_, B_, C_ = u.to(work), A.to(work), B.to(work), C.to(work)
    h = u_.new_zeros(batch, dim, A.shape[1])
    if initial_state is not None:
        h = h + initial_state.to(work)
    ys: list[torch.Tensor] = [u_[:, 0]] * length
    for t in range(length - 1, -1, -1) if reverse else range(length):
        dt_t = delta[:, t].to(work) + (0 if delta_bias is None else delta_bias.to(work))
        if delta_softplus:  # log(1 + e^x), taken as x where that is exact in fp32
            dt_t = torch.where(dt_t > 20, dt_t, torch.log1p(torch.exp(dt_t.clamp(max=20))))
        dt_t = dt_t[:, :, None]  # (B, D, 1)
        h = torch.exp(dt_t * A_) * h + dt_t * B_[:, t, None, :] * u_[:, t, :, None]
        y_t = (h * C_[:, t, None, :]).sum(-1)
        if D is not None:
            y_t = y_t + D.to(work) * u_[:, t]
        if z is not None:
            z_t = z[:, t].to(work)
            y_t = y_t * z_t / (1 + torch.exp(-z_t))
        ys[t] = y_t
    y = torch.stack(ys, 1) if length else u_.new_zeros(batch, 0, dim)
    y = y.to(u.dtype)
    return (y, h) if return_last_state else y
