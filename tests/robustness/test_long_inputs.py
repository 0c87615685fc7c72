"""Long and extreme inputs: L up to 65,536, gates from "keep everything" to "forget
everything", inputs up to 1e4 in magnitude, fp32 and bf16.

Every output must be finite, and match a reference: a closed form at L = 65,536 (no
decay is a cumulative sum, full forgetting keeps only the current token, a constant
convolution kernel is a cumulative sum) and the float64 loop references at L <= 2048
for random mixtures of extreme gates. Errors are measured against the natural bound of
each sum, the same computation on absolute values (``|q| |k| |v|``, ``|C| |dt B u|``,
...), so a tolerance means "this many ulps of the terms that were added", wherever
cancellation makes the result itself small. Widths are tiny (D = 4-8, H = 1-2) so that
L = 65,536 stays fast; those cases are marked slow.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import omniseq.backbones  # noqa: F401  (registers every mixer, "windowed" included)
from omniseq.backbones.mixers import build_mixer, list_mixers
from omniseq.kernels import (
    fft_conv,
    gated_linear_attention,
    gated_linear_attention_recurrent,
    linear_scan,
    linear_scan_reference,
    selective_scan,
    selective_scan_reference,
    ssm_conv_kernel,
)

LONG = 65_536
DTYPES = st.sampled_from([torch.float32, torch.bfloat16])
MAGNITUDES = st.one_of(st.just(1.0), st.floats(1e3, 1e4))
SEEDS = st.integers(0, 2**16)
LONG_CASES = settings(max_examples=4, deadline=None)
SHORT_CASES = settings(max_examples=10, deadline=None)


def tolerance(dtype: torch.dtype) -> float:
    """Allowed error as a fraction of the bound: fp32 work over ~1e3 chunk steps, plus for
    bf16 the rounding of the returned values (up to 2^-8 relative)."""
    return 2e-4 if dtype == torch.float32 else 8e-3


def randn(gen: torch.Generator, *shape: int, magnitude: float = 1.0, dtype=torch.float32):
    return (magnitude * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(dtype)


def assert_bounded(
    actual: torch.Tensor,
    expected: torch.Tensor,
    bound: torch.Tensor,
    tol: float,
    floor: float = 0.0,
):
    """``|actual - expected| <= tol * bound + floor`` everywhere, and ``actual`` finite."""
    assert torch.isfinite(actual).all(), "non-finite output"
    err = (actual.to(expected.dtype) - expected).abs()
    allowed = tol * bound + max(floor, 1e-300)
    worst = (err / allowed).max().item()
    assert worst <= 1.0, f"error reaches {worst:.3g}x the allowed {tol} of the bound"


def running_sum(x: torch.Tensor, reverse: bool, dim: int = 1) -> torch.Tensor:
    return x.flip(dim).cumsum(dim).flip(dim) if reverse else x.cumsum(dim)


def extreme_log_gates(gen: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """Per element one of: no decay (0), almost none (-1e-6), moderate (-1..0), and
    total forgetting (-100 .. -1e4, gate ~ 0)."""
    choice = torch.randint(0, 4, shape, generator=gen)
    u = torch.rand(shape, generator=gen, dtype=torch.float64)
    options = torch.stack([torch.zeros(shape), -1e-6 * u, -u, -(100 + 1e4 * u)])
    return options.gather(0, choice[None]).squeeze(0)


# ----------------------------------------------------------------------------- GLA


def _gla_bound_reference(q, k, v, S):
    """``o = scale q . S`` for states ``S (B, L, H, K, V)``; q and S float64."""
    return q.shape[-1] ** -0.5 * torch.einsum("blhk,blhkv->blhv", q, S)


@pytest.mark.slow
@LONG_CASES
@given(
    seed=SEEDS,
    magnitude=MAGNITUDES,
    dtype=DTYPES,
    reverse=st.booleans(),
    tiny=st.sampled_from([0.0, 1e-12]),
)
def test_gla_without_decay_is_a_running_sum(seed, magnitude, dtype, reverse, tiny):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (randn(gen, 1, LONG, 2, 4, magnitude=magnitude, dtype=dtype) for _ in range(3))
    g = (-tiny * torch.rand(1, LONG, 2, 4, generator=gen)).to(dtype)  # total decay >= 1 - 7e-8
    o, state = gated_linear_attention(q, k, v, g, reverse=reverse)
    q, k, v = q.double(), k.double(), v.double()
    S = running_sum(torch.einsum("blhk,blhv->blhkv", k, v), reverse)
    S_abs = running_sum(torch.einsum("blhk,blhv->blhkv", k.abs(), v.abs()), reverse)
    assert_bounded(
        o,
        _gla_bound_reference(q, k, v, S),
        _gla_bound_reference(q.abs(), k, v, S_abs),
        tolerance(dtype),
    )
    edge = 0 if reverse else -1
    assert state.dtype == torch.float32  # the state is fp32 for bf16 inputs too
    assert_bounded(state, S[:, edge], S_abs[:, edge], tolerance(torch.float32))


@pytest.mark.slow
@LONG_CASES
@given(seed=SEEDS, magnitude=MAGNITUDES, dtype=DTYPES, strength=st.floats(100, 1e4))
def test_gla_with_full_forgetting_keeps_only_the_current_token(seed, magnitude, dtype, strength):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (randn(gen, 1, LONG, 2, 4, magnitude=magnitude, dtype=dtype) for _ in range(3))
    g = (-strength * (1 + torch.rand(1, LONG, 2, 4, generator=gen))).to(dtype)  # gate <= e^-100
    o, state = gated_linear_attention(q, k, v, g)
    q, k, v = q.double(), k.double(), v.double()
    local = torch.einsum("blhk,blhv->blhkv", k, v)
    local_abs = torch.einsum("blhk,blhv->blhkv", k.abs(), v.abs())
    assert_bounded(
        o,
        _gla_bound_reference(q, k, v, local),
        _gla_bound_reference(q.abs(), k, v, local_abs),
        tolerance(dtype),
    )
    assert_bounded(state, local[:, -1], local_abs[:, -1], tolerance(torch.float32))


@SHORT_CASES
@given(
    L=st.integers(1, 2048), seed=SEEDS, magnitude=MAGNITUDES, dtype=DTYPES, reverse=st.booleans()
)
def test_gla_with_mixed_extreme_gates_matches_the_recurrence(L, seed, magnitude, dtype, reverse):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (randn(gen, 1, L, 2, 4, magnitude=magnitude, dtype=dtype) for _ in range(3))
    g = extreme_log_gates(gen, (1, L, 2, 4)).to(dtype)
    h0 = randn(gen, 1, 2, 4, 4, magnitude=magnitude**2)
    o, state = gated_linear_attention(q, k, v, g, initial_state=h0, reverse=reverse)
    wide = [t.double() for t in (q, k, v, g, h0)]
    o_ref, state_ref = gated_linear_attention_recurrent(*wide, reverse=reverse)
    absolute = [t.abs() for t in wide[:3]] + [wide[3], wide[4].abs()]
    o_bound, state_bound = gated_linear_attention_recurrent(*absolute, reverse=reverse)
    assert_bounded(o, o_ref, o_bound, tolerance(dtype))
    assert_bounded(state, state_ref, state_bound, tolerance(torch.float32))


@pytest.mark.slow
@LONG_CASES
@given(seed=SEEDS, magnitude=MAGNITUDES, dtype=DTYPES)
def test_gla_at_65536_with_extreme_gates_carries_its_state_across_a_split(seed, magnitude, dtype):
    """Finite at full length, and two halves joined by the state equal one pass."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (randn(gen, 1, LONG, 1, 4, magnitude=magnitude, dtype=dtype) for _ in range(3))
    g = extreme_log_gates(gen, (1, LONG, 1, 4)).to(dtype)
    o, state = gated_linear_attention(q, k, v, g)
    half = LONG // 2
    o_a, state_a = gated_linear_attention(q[:, :half], k[:, :half], v[:, :half], g[:, :half])
    o_b, state_b = gated_linear_attention(
        q[:, half:], k[:, half:], v[:, half:], g[:, half:], initial_state=state_a
    )
    o_bound, state_bound = gated_linear_attention(
        *(t.double().abs() for t in (q, k, v)), g.double()
    )
    assert_bounded(o, torch.cat([o_a, o_b], 1).double(), o_bound, tolerance(dtype))
    assert_bounded(state, state_b.double(), state_bound, tolerance(torch.float32))


# ----------------------------------------------------------------------------- linear scan


def _constant_decay_scan(a: torch.Tensor, b: torch.Tensor, reverse: bool) -> torch.Tensor:
    """Closed form for one decay per channel ``a (F,)`` with ``|a| <= 1``, in float64:
    ``h_t = sum_s a^(t-s) b_s = a^t cumsum(a^-s b_s)`` (``|a|^-L`` stays below e^7 here)."""
    log_a = torch.log(a.to(torch.complex128))
    steps = torch.arange(b.shape[1], dtype=torch.float64)[:, None]
    if reverse:
        steps = steps.flip(0)
    return torch.exp(log_a * steps) * running_sum(torch.exp(-log_a * steps) * b, reverse)


@pytest.mark.slow
@LONG_CASES
@given(
    seed=SEEDS,
    magnitude=MAGNITUDES,
    dtype=DTYPES,
    reverse=st.booleans(),
    decay=st.sampled_from(["none", "near_one", "rotation"]),
)
def test_linear_scan_without_decay_is_a_closed_form_sum(seed, magnitude, dtype, reverse, decay):
    gen = torch.Generator().manual_seed(seed)
    b = randn(gen, 1, LONG, 8, magnitude=magnitude, dtype=dtype)
    if decay == "none":
        a = torch.ones(8, dtype=dtype)
    elif decay == "near_one":  # bf16 rounds these to 1: the reference uses what it got
        a = (1 - 1e-4 * torch.rand(8, generator=gen)).to(dtype)
    else:  # |a| = 1: an undamped S5 mode, the state rotates forever
        a = torch.polar(torch.ones(8), 3 * torch.rand(8, generator=gen))
    h = linear_scan(a.expand(1, LONG, 8), b, reverse=reverse)
    expected = _constant_decay_scan(a, b.double(), reverse)
    bound = _constant_decay_scan(a.abs(), b.double().abs(), reverse).real
    if not a.is_complex():
        expected = expected.real
    assert_bounded(h, expected, bound, tolerance(dtype))


@SHORT_CASES
@given(
    L=st.integers(1, 2048), seed=SEEDS, magnitude=MAGNITUDES, dtype=DTYPES, reverse=st.booleans()
)
def test_linear_scan_with_mixed_extreme_decays_matches_the_loop(L, seed, magnitude, dtype, reverse):
    gen = torch.Generator().manual_seed(seed)
    a = torch.exp(extreme_log_gates(gen, (1, L, 8))).to(dtype)  # 1, ~1, (0.37, 1), ~0
    b = randn(gen, 1, L, 8, magnitude=magnitude, dtype=dtype)
    h0 = randn(gen, 1, 8, magnitude=magnitude, dtype=dtype)
    h = linear_scan(a, b, h0=h0, reverse=reverse)
    wide = [t.double() for t in (a, b, h0)]
    bound = linear_scan_reference(wide[0], wide[1].abs(), wide[2].abs(), reverse=reverse)
    assert_bounded(h, linear_scan_reference(*wide, reverse=reverse), bound, tolerance(dtype))


# ----------------------------------------------------------------------------- selective scan


def _scan_inputs(gen, L, magnitude, dtype, D=4, N=4):
    u, B, C = (randn(gen, 1, L, n, magnitude=magnitude, dtype=dtype) for n in (D, N, N))
    return u, B, C, torch.randn(D, generator=gen)


def _running_readout(u, dt, B, C, D):
    """No decay: ``y_t = sum_n C_tn sum_{s<=t} dt_s B_sn u_s + D u_t`` in float64."""
    h = torch.cumsum((dt * u)[..., None] * B[:, :, None, :], 1)  # (1, L, D, N)
    return torch.einsum("bldn,bln->bld", h, C) + D * u


@pytest.mark.slow
@LONG_CASES
@given(seed=SEEDS, magnitude=MAGNITUDES, dtype=DTYPES, a_scale=st.floats(0, 1e-14))
def test_selective_scan_without_decay_is_a_running_sum(seed, magnitude, dtype, a_scale):
    """exp(dt A) ~ 1 (the total decay over 65,536 steps is at most 7e-6, under the
    tolerance); delta up to +-1e4 exercises softplus at both ends (dt = 0, dt = delta)."""
    gen = torch.Generator().manual_seed(seed)
    u, B, C, D = _scan_inputs(gen, LONG, magnitude, dtype)
    delta = randn(gen, 1, LONG, 4, magnitude=magnitude, dtype=dtype)
    A = -a_scale * torch.rand(4, 4, generator=gen)
    y = selective_scan(u, delta, A, B, C, D=D, delta_softplus=True)
    dt = F.softplus(delta.double())
    u_, B_, C_, D_ = (t.double() for t in (u, B, C, D))
    expected = _running_readout(u_, dt, B_, C_, D_)
    bound = _running_readout(u_.abs(), dt, B_.abs(), C_.abs(), D_.abs())
    assert_bounded(y, expected, bound, tolerance(dtype))


@pytest.mark.slow
@LONG_CASES
@given(seed=SEEDS, magnitude=MAGNITUDES, dtype=DTYPES)
def test_selective_scan_with_full_forgetting_is_local(seed, magnitude, dtype):
    """dt >= 100 and A <= -1: exp(dt A) <= e^-100, so y_t = sum_n C_tn dt_t B_tn u_t + D u_t."""
    gen = torch.Generator().manual_seed(seed)
    u, B, C, D = _scan_inputs(gen, LONG, magnitude, dtype)
    delta = (100 + magnitude * torch.rand(1, LONG, 4, generator=gen)).to(dtype)
    A = -1 - 9 * torch.rand(4, 4, generator=gen)
    y = selective_scan(u, delta, A, B, C, D=D, delta_softplus=True)
    u, B, C, dt = u.double(), B.double(), C.double(), F.softplus(delta.double())
    expected = dt * u * (B * C).sum(-1, keepdim=True) + D.double() * u
    bound = dt * u.abs() * (B * C).abs().sum(-1, keepdim=True) + (D.double() * u).abs()
    assert_bounded(y, expected, bound, tolerance(dtype))


@SHORT_CASES
@given(
    L=st.integers(1, 1024), seed=SEEDS, magnitude=MAGNITUDES, dtype=DTYPES, reverse=st.booleans()
)
def test_selective_scan_with_mixed_extremes_matches_the_loop(L, seed, magnitude, dtype, reverse):
    """|delta| from 0.1 to 1e4 of either sign (-1e4: dt = 0, the state is held; +1e4: it is
    forgotten), A from -1e-9 to -1e3."""
    gen = torch.Generator().manual_seed(seed)
    u, B, C, D = _scan_inputs(gen, L, magnitude, dtype)
    sign = torch.randint(0, 2, (1, L, 4), generator=gen) * 2 - 1
    delta = (sign * 10 ** (5 * torch.rand(1, L, 4, generator=gen) - 1)).to(dtype)
    A = -(10 ** (12 * torch.rand(4, 4, generator=gen) - 9))
    z = randn(gen, 1, L, 4, dtype=dtype)
    h0 = randn(gen, 1, 4, 4, magnitude=magnitude)
    kw = dict(delta_softplus=True, reverse=reverse, return_last_state=True)
    y, last = selective_scan(u, delta, A, B, C, D=D, z=z, initial_state=h0, **kw)
    wide = [t.double() for t in (u, delta, A, B, C, D, z, h0)]
    u_, delta_, A_, B_, C_, D_, z_, h0_ = wide
    y_ref, last_ref = selective_scan_reference(
        u_, delta_, A_, B_, C_, D=D_, z=z_, initial_state=h0_, **kw
    )
    y_abs, last_abs = selective_scan_reference(
        u_.abs(), delta_, A_, B_.abs(), C_.abs(), D=D_.abs(), initial_state=h0_.abs(), **kw
    )
    assert_bounded(y, y_ref, y_abs * F.silu(z_).abs(), tolerance(dtype))
    assert_bounded(last, last_ref, last_abs, tolerance(torch.float32))


# ----------------------------------------------------------------------------- S4D convolution


def _direct_kernel(log_dt, A, C, length):
    """``K[h, l] = 2 Re(sum_n C Bbar Abar^l)`` as one (H, N, L) float64 tensor, and its bound."""
    dt_a = torch.exp(log_dt.double())[:, None] * A.to(torch.complex128)
    weight = C.to(torch.complex128) * torch.expm1(dt_a) / A.to(torch.complex128)
    powers = torch.exp(dt_a[..., None] * torch.arange(length, dtype=torch.float64))
    terms = weight[..., None] * powers
    return 2 * terms.sum(1).real, 2 * terms.abs().sum(1)


@pytest.mark.slow
@LONG_CASES
@given(seed=SEEDS, magnitude=MAGNITUDES, log_re=st.floats(-9, 3), frequency=st.floats(0, 100))
def test_ssm_conv_kernel_at_65536_matches_the_direct_sum(seed, magnitude, log_re, frequency):
    """Re(A) from -1e-9 (no decay: phases run to ~1e6 rad) to -1e3 (forget after one tap)."""
    gen = torch.Generator().manual_seed(seed)
    log_dt = torch.log(torch.tensor([1e-3, 1e-2, 1e-1, 1.0]))
    modes = torch.arange(8, dtype=torch.float32).expand(4, 8)
    A = torch.complex(-(10**log_re) * (1 + torch.rand(4, 8, generator=gen)), frequency * modes)
    C = magnitude * torch.randn(4, 8, dtype=torch.cfloat, generator=gen)
    k = ssm_conv_kernel(log_dt, A, C, LONG)
    expected, bound = _direct_kernel(log_dt, A, C, LONG)
    # Taps 30 orders of magnitude below the peak may flush to fp32 denormals or zero.
    assert_bounded(k, expected, bound, 1e-5, floor=1e-30 * bound.max().item())


@pytest.mark.slow
@LONG_CASES
@given(seed=SEEDS, magnitude=MAGNITUDES, dtype=DTYPES, reverse=st.booleans())
def test_fft_conv_with_a_constant_kernel_is_a_running_sum(seed, magnitude, dtype, reverse):
    """A mode that never decays has a constant kernel: y = c cumsum(u) (+ D u). An FFT's
    error is global, so the bound is the norm product ||u|| ||k|| (about L |c| |u|)."""
    gen = torch.Generator().manual_seed(seed)
    u = randn(gen, 1, LONG, 4, magnitude=magnitude, dtype=dtype)
    c, D = torch.randn(4, 1, generator=gen), torch.randn(4, generator=gen)
    y = fft_conv(u, c.expand(4, LONG), D=D, reverse=reverse)
    u_ = u.double()
    expected = c.double().T * running_sum(u_, reverse) + D.double() * u_
    norms = u_.norm(dim=1, keepdim=True) * c.double().abs().T * math.sqrt(LONG)
    assert_bounded(y, expected, norms.expand_as(expected), 1e-5)


# ----------------------------------------------------------------------------- mixers

# Quadratic in L, so capped: attention's softmax scores 4.3e9 pairs per head at 65,536
# (minutes on a CPU core), and the token MLP's Linear(seq_len, seq_len) would hold
# 4.3e9 weights. Every other mixer runs at the full length.
QUADRATIC_CAP = {"attention": 4096, "mlp": 1024}
# Softmax of logits ~ magnitude^2 is ill-conditioned: float32 and float64 may pick
# different near-tied keys, so these are compared with float64 at unit magnitude only.
SOFTMAX_MIXERS = {"attention", "window_attention"}
LONG_OPTIONS = {
    "attention": {"num_heads": 2},
    "window_attention": {"num_heads": 2, "window_size": 8, "shift_size": 4},
    "gla": {"num_heads": 2},
    "mamba": {"d_state": 4},
    "s4d": {"d_state": 8},
    "s5": {"d_state": 8},
    "mlp": {},
    "fsmn": {"kernel_size": 17},
    "windowed": {"inner": "gla", "window_size": 16, "num_heads": 2},
    "vig": {"num_heads": 2},
}


def test_every_registered_mixer_has_long_input_options():
    assert set(list_mixers()) <= set(LONG_OPTIONS), f"add {set(list_mixers()) - set(LONG_OPTIONS)}"


@pytest.mark.slow
@pytest.mark.parametrize("name", list_mixers())
@settings(max_examples=3, deadline=None)
@given(seed=SEEDS, magnitude=MAGNITUDES)
def test_mixer_at_full_length_is_finite_in_fp32_and_bf16_and_matches_float64(name, seed, magnitude):
    L = QUADRATIC_CAP.get(name, LONG)
    side = math.isqrt(L)
    options = {**LONG_OPTIONS[name], **({"seq_len": L} if name == "mlp" else {})}
    torch.manual_seed(seed)
    mixer = build_mixer(name, 8, **options).eval()
    x = randn(torch.Generator().manual_seed(seed), 1, L, 8, magnitude=magnitude)
    with torch.no_grad():
        y = mixer(x, grid=(side, side))
    assert torch.isfinite(y).all(), "fp32 output is not finite"
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16-mixed: forward and backward
        y_half = mixer(x, grid=(side, side))
    y_half.float().square().mean().backward()
    assert torch.isfinite(y_half).all(), "bf16-mixed output is not finite"
    bad = [
        n for n, p in mixer.named_parameters() if p.grad is not None and not p.grad.isfinite().all()
    ]
    assert not bad, f"non-finite bf16-mixed gradients in {bad}"
    if name in SOFTMAX_MIXERS and magnitude > 1:
        return
    with torch.no_grad():
        y_wide = mixer.double()(x.double(), grid=(side, side))
    scale = y_wide.abs().max().item()
    torch.testing.assert_close(y.double(), y_wide, rtol=2e-3, atol=2e-3 * scale)
