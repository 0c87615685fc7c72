"""S4D as a long convolution (Gu et al. 2022, https://arxiv.org/abs/2206.11893).

A diagonal SSM ``x_l = Abar x_{l-1} + Bbar u_l``, ``y_l = 2 Re(C x_l)`` (conjugate pairs
kept once, hence the factor 2) with zero-order-hold ``Abar = exp(dt A)``,
``Bbar = (exp(dt A) - 1) / A`` is a causal convolution of ``u`` with the kernel
``K[l] = 2 Re(sum_n C_n Bbar_n Abar_n^l)``. :func:`ssm_conv_kernel` builds ``K`` from a
two-level Vandermonde product and :func:`fft_conv` applies it in ``O(L log L)`` with a
zero-padded FFT of length ``2L`` (no circular wrap-around).

Precision: the phases ``Im(dt A) * p`` of the powers ``Abar^p`` are formed in float64
from the parameters (only ``O(N sqrt(L))`` numbers) and reduced modulo 2 pi before
cos/sin run in the parameters' dtype: in fp32 the phase of a slowly decaying mode
loses ``|phase| * 6e-8`` radians, 5e-3 relative error of the kernel at L = 65,536
(3e-7 now). The FFT runs in fp32 at least, and
autocast is kept out (:func:`own_precision`).
"""

from __future__ import annotations

import math

import torch

from omniseq.kernels._backend import own_precision, resolve_backend, wide_float

__all__ = ["fft_conv", "fft_conv_reference", "ssm_conv_kernel", "ssm_conv_kernel_reference"]

# Inner length of the two-level Vandermonde product; None means ceil(sqrt(length)).
_VANDERMONDE_BLOCK: int | None = None


def _check_kernel_inputs(
    name: str, log_dt: torch.Tensor, A: torch.Tensor, C: torch.Tensor, length: int
) -> None:
    if log_dt.dim() != 1 or log_dt.is_complex() or not log_dt.is_floating_point():
        raise ValueError(
            f"{name}: log_dt must be a real tensor of shape (H,), got "
            f"{tuple(log_dt.shape)} {log_dt.dtype}"
        )
    heads = log_dt.shape[0]
    for key, tensor in (("A", A), ("C", C)):
        if tensor.dim() != 2 or tensor.shape[0] != heads:
            raise ValueError(
                f"{name}: {key} must have shape (H, N) = ({heads}, N), got {tuple(tensor.shape)}"
            )
        if not tensor.is_complex():
            raise ValueError(f"{name}: {key} must be complex (H, N), got {tensor.dtype}")
    if A.shape != C.shape:
        raise ValueError(
            f"{name}: C must have shape (H, N) = {tuple(A.shape)}, got {tuple(C.shape)}"
        )
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ValueError(f"{name}: length must be a non-negative int, got {length!r}")


def _discretize(
    log_dt: torch.Tensor, A: torch.Tensor, C: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dt * A, C * Bbar) for zero-order hold with B folded into C (as S4D does)."""
    dtype = torch.promote_types(A.dtype, C.dtype)
    dt_a = torch.exp(log_dt).unsqueeze(-1).to(dtype) * A.to(dtype)
    return dt_a, C.to(dtype) * torch.expm1(dt_a) / A.to(dtype)


def _powers(
    decay_rate: torch.Tensor, phase_rate: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts of ``exp((decay_rate + i phase_rate) p)``, (H, N, P), in
    ``decay_rate``'s dtype.

    ``phase_rate`` and ``positions`` are wide (float64): the phase is formed and reduced
    to [-pi, pi] there, then cos/sin run in the narrow dtype (real exp/cos/sin are ~4x
    faster on CPU than complex exp).
    """
    real = decay_rate.dtype
    magnitude = torch.exp(decay_rate.unsqueeze(-1) * positions.to(real))
    phase = phase_rate.unsqueeze(-1) * positions
    phase = (phase - 2 * math.pi * torch.round(phase / (2 * math.pi))).to(real)
    return magnitude * torch.cos(phase), magnitude * torch.sin(phase)


@own_precision
def ssm_conv_kernel(
    log_dt: torch.Tensor,
    A: torch.Tensor,
    C: torch.Tensor,
    length: int,
    backend: str = "auto",
) -> torch.Tensor:
    """S4D convolution kernel ``K[h, l] = 2 Re(sum_n C Bbar Abar^l)``, real ``(H, length)``.

    Args:
        log_dt: log step sizes ``(H,)``.
        A: complex state matrix diagonal ``(H, N)`` (Re < 0 for a stable kernel).
        C: complex output projection ``(H, N)`` (B is folded into C).
        length: number of taps.
        backend: ``"auto" | "torch" | "triton"``; all run the PyTorch form.
    """
    resolve_backend(backend, log_dt, A, C)
    _check_kernel_inputs("ssm_conv_kernel", log_dt, A, C, length)
    dtype = torch.promote_types(A.dtype, C.dtype)
    real = dtype.to_real()
    if length == 0:
        return log_dt.new_zeros(log_dt.shape[0], 0, dtype=real)
    dt_a, weight = _discretize(log_dt, A, C)
    # Im(dt A) again from the parameters in float64, for the phases (module docstring).
    wide = torch.promote_types(wide_float(A.device), real)
    phase_rate = torch.exp(log_dt.to(wide)).unsqueeze(-1) * A.imag.to(wide)
    # Two-level Vandermonde: tap l = j * block + i uses Abar^(j block) * Abar^i, so only
    # O(N sqrt(L)) exponentials are taken and the sum over N becomes one batched matmul
    # (H, L / block, N) @ (H, N, block). A full (H, N, L) exp was 30x slower on CPU than
    # even the step loop. Each power is exp of an exact exponent: no error builds up in l.
    block = _VANDERMONDE_BLOCK or math.isqrt(length - 1) + 1
    blocks = -(-length // block)
    positions = torch.arange(block, device=A.device, dtype=wide)
    inner_re, inner_im = _powers(dt_a.real, phase_rate, positions)
    starts = torch.arange(blocks, device=A.device, dtype=wide) * block
    outer_re, outer_im = _powers(dt_a.real, phase_rate, starts)  # (H, N, blocks)
    w = weight.unsqueeze(-1)
    weighted_re = w.real * outer_re - w.imag * outer_im
    weighted_im = w.real * outer_im + w.imag * outer_re
    # Only the real part is needed: Re(w p) = Re w Re p - Im w Im p, one real matmul
    # with half the flops of the complex product.
    left = torch.cat([weighted_re, -weighted_im], 1).transpose(1, 2)  # (H, blocks, 2N)
    taps = torch.matmul(left, torch.cat([inner_re, inner_im], 1))  # (H, blocks, block)
    return 2 * taps.reshape(taps.shape[0], blocks * block)[:, :length]


@own_precision
def ssm_conv_kernel_reference(
    log_dt: torch.Tensor, A: torch.Tensor, C: torch.Tensor, length: int
) -> torch.Tensor:
    """Impulse response of the discretised recurrence, run step by step; the test oracle."""
    _check_kernel_inputs("ssm_conv_kernel_reference", log_dt, A, C, length)
    dtype = torch.promote_types(A.dtype, C.dtype)
    dt = torch.exp(log_dt).unsqueeze(-1).to(dtype)
    A_, C_ = A.to(dtype), C.to(dtype)
    a_bar = torch.exp(dt * A_)
    b_bar = (a_bar - 1) / A_
    state = b_bar  # x_0 = Bbar * u_0 with the unit impulse u_0 = 1
    taps = []
    for _ in range(length):
        taps.append(2 * (C_ * state).sum(-1).real)
        state = a_bar * state
    if not taps:
        return log_dt.new_zeros(log_dt.shape[0], 0, dtype=A_.real.dtype)
    return torch.stack(taps, -1)


def _check_conv_inputs(name: str, u: torch.Tensor, k: torch.Tensor, D: torch.Tensor | None) -> None:
    if u.dim() != 3 or not u.is_floating_point():
        raise ValueError(
            f"{name}: u must be a real tensor of shape (B, L, H), got {tuple(u.shape)} {u.dtype}"
        )
    heads = u.shape[2]
    if k.dim() != 2 or k.shape[0] != heads or not k.is_floating_point():
        raise ValueError(
            f"{name}: k must be a real tensor of shape (H, Lk) = ({heads}, Lk), got "
            f"{tuple(k.shape)} {k.dtype}"
        )
    if D is not None and tuple(D.shape) != (heads,):
        raise ValueError(f"{name}: D must have shape (H,) = ({heads},), got {tuple(D.shape)}")


@own_precision
def fft_conv(
    u: torch.Tensor,
    k: torch.Tensor,
    D: torch.Tensor | None = None,
    reverse: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Causal convolution ``y_t = sum_{s<=t} k[t-s] u_s (+ D u_t)`` per channel, by FFT.

    Args:
        u: real input ``(B, L, H)``.
        k: real kernel ``(H, Lk)``; only its first ``L`` taps are used, missing taps are 0.
        D: skip connection ``(H,)``.
        reverse: anti-causal ``y_t = sum_{s>=t} k[s-t] u_s`` (the backward direction of a
            bidirectional layer).
        backend: ``"auto" | "torch" | "triton"``; all run the PyTorch FFT.

    Returns:
        ``(B, L, H)`` in the promoted dtype of ``u`` and ``k``.
    """
    resolve_backend(backend, u, k)
    _check_conv_inputs("fft_conv", u, k, D)
    dtype = torch.promote_types(u.dtype, k.dtype)
    # The FFT is computed in fp32 at least: CPU FFTs have no half precision.
    work = torch.promote_types(dtype, torch.float32)
    length = u.shape[1]
    if u.numel() == 0:  # no batch, length or channel: nothing to transform (FFT libraries refuse it)
        return u.to(dtype)
    signal = u.to(work).transpose(1, 2)  # (B, H, L): the FFT runs over the last dim
    if reverse:
        signal = signal.flip(-1)
    n_fft = 2 * length
    spectrum = torch.fft.rfft(signal, n=n_fft) * torch.fft.rfft(k[:, :length].to(work), n=n_fft)
    y = torch.fft.irfft(spectrum, n=n_fft)[..., :length]
    if reverse:
        y = y.flip(-1)
    y = y.transpose(1, 2)
    if D is not None:
        y = y + u.to(work) * D.to(work)
    return y.to(dtype)


@own_precision
def fft_conv_reference(
    u: torch.Tensor,
    k: torch.Tensor,
    D: torch.Tensor | None = None,
    reverse: bool = False,
) -> torch.Tensor:
    """Explicit sum over taps, one output step at a time; the test oracle."""
    _check_conv_inputs("fft_conv_reference", u, k, D)
    dtype = torch.promote_types(u.dtype, k.dtype)
    u_, length = u.to(dtype), u.shape[1]
    taps = torch.zeros(k.shape[0], length, dtype=dtype, device=k.device)
    taps[:, : min(length, k.shape[1])] = k[:, :length].to(dtype)
    y = torch.zeros_like(u_)
    for t in range(length):
        if reverse:  # u_s for s = t..L-1 meets k[0..L-1-t]
            y[:, t] = (u_[:, t:] * taps[:, : length - t].T).sum(1)
        else:  # u_s for s = 0..t meets k[t..0]
            y[:, t] = (u_[:, : t + 1] * taps[:, : t + 1].flip(-1).T).sum(1)
    if D is not None:
        y = y + u_ * D.to(dtype)
    return y
