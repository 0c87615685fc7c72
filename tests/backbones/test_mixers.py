"""Contract tests for every registered mixer: shapes, errors, causality, step == parallel, grads."""

from __future__ import annotations

import math

import pytest
import torch

from omniseq.backbones.mixers import build_mixer, list_mixers

DIM = 16
EXPECTED = {"attention", "window_attention", "gla", "mamba", "s4d", "s5", "mlp", "fsmn"}
# Small options per mixer so every test runs in milliseconds.
SMALL = {
    "attention": {"num_heads": 4},
    "window_attention": {"num_heads": 4, "window_size": 4, "shift_size": 2},
    "gla": {"num_heads": 2},
    "mamba": {"d_state": 4},
    "s4d": {"d_state": 8},
    "s5": {"d_state": 8},
    "mlp": {},
    "fsmn": {"kernel_size": 5, "dilation": 2},
}
CAUSAL_CAPABLE = ["attention", "gla", "mamba", "s4d", "s5", "mlp", "fsmn"]
CONFIGS = [(name, False) for name in sorted(EXPECTED)] + [(name, True) for name in CAUSAL_CAPABLE]


def grid_for(L: int) -> tuple[int, int]:
    """A 2D grid with L tokens: (3, 11) for 33, else (1, L)."""
    return (3, L // 3) if L % 3 == 0 and L > 3 else (1, L)


def make(name: str, causal: bool, L: int, dtype=torch.float64, seed: int = 0, **extra):
    torch.manual_seed(seed)
    options = {**SMALL[name], **extra}
    if name == "mlp":
        options.setdefault("seq_len", L)
    mixer = build_mixer(name, DIM, causal=causal, **options).to(dtype).eval()
    return mixer


def run(mixer, x):
    grid = grid_for(x.shape[1]) if mixer.__class__.__name__ == "WindowAttention" else None
    return mixer(x, grid=grid)


def test_all_mixers_registered():
    assert EXPECTED <= set(list_mixers())


@pytest.mark.parametrize("name,causal", CONFIGS)
@pytest.mark.parametrize("L", [1, 7, 33])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_and_dtype(name, causal, L, dtype):
    mixer = make(name, causal, L, dtype)
    x = torch.randn(2, L, DIM, dtype=dtype)
    y = run(mixer, x)
    assert y.shape == x.shape and y.dtype == dtype
    assert torch.isfinite(y).all()


def test_unknown_option_and_name():
    with pytest.raises(TypeError, match="no_such_option"):
        build_mixer("attention", DIM, no_such_option=1)
    with pytest.raises(ValueError, match="unknown mixer"):
        build_mixer("no_such_mixer", DIM)
    # Context options a mixer does not take are dropped, not errors.
    build_mixer("mamba", DIM, num_heads=4, seq_len=8, causal=True)


@pytest.mark.parametrize("name,causal", CONFIGS)
def test_bad_input_names_expected_shape(name, causal):
    mixer = make(name, causal, 7)
    for bad in (
        torch.randn(7, DIM, dtype=torch.float64),
        torch.randn(2, 7, DIM + 1, dtype=torch.float64),
    ):
        with pytest.raises(ValueError, match=r"\(B, L, 16\)"):
            run(mixer, bad)


@pytest.mark.parametrize("name", CAUSAL_CAPABLE)
def test_step_matches_parallel(name):
    L = 9
    mixer = make(name, True, L)
    x = torch.randn(2, L, DIM, dtype=torch.float64)
    y = mixer(x)
    state = mixer.init_state(2, dtype=torch.float64)
    steps = []
    for t in range(L):
        y_t, state = mixer.step(x[:, t], state)
        steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps, 1), y, rtol=1e-9, atol=1e-10)
    with pytest.raises(ValueError, match=r"\(B, 16\)"):
        mixer.step(x, state)


@pytest.mark.parametrize("name", CAUSAL_CAPABLE)
def test_non_causal_has_no_step(name):
    mixer = make(name, False, 7)
    with pytest.raises(RuntimeError, match="causal=True"):
        mixer.init_state(2)


@pytest.mark.parametrize("name", CAUSAL_CAPABLE)
def test_causal_ignores_future(name):
    L, t = 11, 5
    mixer = make(name, True, L)
    x = torch.randn(2, L, DIM, dtype=torch.float64)
    x2 = x.clone()
    x2[:, t + 1 :] += torch.randn_like(x2[:, t + 1 :])
    y, y2 = mixer(x), mixer(x2)
    torch.testing.assert_close(y2[:, : t + 1], y[:, : t + 1], rtol=1e-12, atol=1e-12)
    assert (y2[:, t + 1 :] - y[:, t + 1 :]).abs().max() > 1e-6


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bidirectional_depends_on_future(name):
    L = 12
    mixer = make(name, False, L)
    x = torch.randn(2, L, DIM, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 1:] += torch.randn_like(x2[:, 1:])
    # Token 0 must see the perturbed future; a silently causal mixer would not.
    assert (run(mixer, x2)[:, 0] - run(mixer, x)[:, 0]).abs().max() > 1e-6


@pytest.mark.parametrize("name,causal", CONFIGS + [("gla_locality", False)])
def test_gradients_reach_every_parameter(name, causal):
    L = 12
    if name == "gla_locality":
        mixer, grid = make("gla", causal, L, locality=True), (3, 4)
    else:
        mixer, grid = make(name, causal, L), (grid_for(L) if name == "window_attention" else None)
    x = torch.randn(2, L, DIM, dtype=torch.float64, requires_grad=True)
    mixer(x, grid=grid).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in mixer.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient for {pname}"


@pytest.mark.parametrize("name", ["s4d", "s5"])
def test_ssm_bidirectional_differs_from_causal(name):
    L = 10
    causal, bidir = make(name, True, L), make(name, False, L)
    x = torch.randn(2, L, DIM, dtype=torch.float64)
    assert (causal(x) - bidir(x)).abs().max() > 1e-4
    # Shared parameters are identical by seed; the extra ones are the backward readout.
    extra = set(dict(bidir.named_parameters())) - set(dict(causal.named_parameters()))
    assert extra == {"C_b"}


def test_mamba_bidirectional_matches_two_causal_branches():
    """Vim v2 oracle: mean of the causal block on x and, with the backward
    parameters, on flip(x) flipped back (out_proj is linear without bias)."""
    L = 13
    bi = make("mamba", False, L)
    fwd, bwd = make("mamba", True, L), make("mamba", True, L)
    fwd.load_state_dict({k: v for k, v in bi.state_dict().items() if not _is_backward(k)})
    renamed = {_forward_name(k): v for k, v in bi.state_dict().items() if _is_backward(k)}
    shared = {
        k: v for k, v in bi.state_dict().items() if k in ("in_proj.weight", "out_proj.weight")
    }
    bwd.load_state_dict({**renamed, **shared})
    x = torch.randn(2, L, DIM, dtype=torch.float64)
    expected = 0.5 * (fwd(x) + bwd(x.flip(1)).flip(1))
    torch.testing.assert_close(bi(x), expected, rtol=1e-10, atol=1e-12)


def _is_backward(key: str) -> bool:
    return key.split(".")[0] in ("conv1d_b", "x_proj_b", "dt_proj_b", "A_b_log", "D_b")


def _forward_name(key: str) -> str:
    head, *rest = key.split(".")
    head = {"A_b_log": "A_log", "D_b": "D"}.get(head, head.removesuffix("_b"))
    return ".".join([head, *rest])


def test_mlp_errors_and_masked_gradient():
    with pytest.raises(ValueError, match="seq_len"):
        build_mixer("mlp", DIM)
    mixer = make("mlp", True, 5)
    with pytest.raises(ValueError, match=r"seq_len=5.*L=6"):
        mixer(torch.randn(1, 6, DIM, dtype=torch.float64))
    x = torch.randn(2, 5, DIM, dtype=torch.float64)
    mixer(x).sum().backward()
    upper = torch.ones(5, 5, dtype=torch.bool).triu(1)
    assert (mixer.fc1.weight.grad[upper] == 0).all() and (mixer.fc1.weight.grad[~upper] != 0).any()
    state = mixer.init_state(2)
    for t in range(5):
        _, state = mixer.step(x[:, t], state)
    with pytest.raises(ValueError, match="past seq_len"):
        mixer.step(x[:, 0], state)
    with pytest.raises(ValueError, match="hidden"):
        build_mixer("mlp", DIM, seq_len=5, hidden=8, causal=True)
    two_layer = make("mlp", False, 5, hidden=8)
    assert two_layer(x).shape == x.shape


def test_gla_locality_needs_grid_and_uses_it():
    mixer = make("gla", False, 12, locality=True)
    x = torch.randn(2, 12, DIM, dtype=torch.float64)
    with pytest.raises(ValueError, match="grid"):
        mixer(x)
    with pytest.raises(ValueError, match="causal"):
        build_mixer("gla", DIM, causal=True, locality=True)
    # The 3x3 conv depends on the 2D layout, so two factorisations of L differ.
    assert (mixer(x, grid=(3, 4)) - mixer(x, grid=(4, 3))).abs().max() > 1e-6


def test_gla_direction_gates():
    with_gates = make("gla", False, 8)
    shared = make("gla", False, 8, direction_gates=False)
    assert hasattr(with_gates, "gk_proj_b") and with_gates.gk_proj_b is not None
    assert shared.gk_proj_b is None
    assert not any("gk_proj_b" in n for n, _ in make("gla", True, 8).named_parameters())
    # num_heads arrives from the Block context and must change the head split.
    assert build_mixer("gla", DIM, num_heads=4).num_heads == 4
    assert math.isclose(with_gates.key_dim, DIM * 0.5)


def test_gla_bidirectional_matches_two_recurrences():
    """BiGLA oracle: a left-to-right recurrence with gk_proj plus a right-to-left
    one (run as a causal recurrence on the flipped sequence) with gk_proj_b."""
    import torch.nn.functional as F

    from omniseq.kernels import gated_linear_attention_recurrent

    L = 11
    mixer = make("gla", False, L)
    x = torch.randn(2, L, DIM, dtype=torch.float64)
    H = mixer.num_heads

    def heads(t):
        return t.reshape(2, L, H, -1)

    q, k, v = heads(mixer.q_proj(x)), heads(mixer.k_proj(x)), heads(mixer.v_proj(x))
    g_f = heads(F.logsigmoid(mixer.gk_proj(x)) / 16)
    g_b = heads(F.logsigmoid(mixer.gk_proj_b(x)) / 16)
    o_f, _ = gated_linear_attention_recurrent(q, k, v, g_f)
    o_b, _ = gated_linear_attention_recurrent(*(t.flip(1) for t in (q, k, v, g_b)))
    o = mixer.g_norm(o_f + o_b.flip(1)) * F.silu(heads(mixer.g_proj(x)))
    torch.testing.assert_close(mixer(x), mixer.o_proj(o.flatten(-2)), rtol=1e-10, atol=1e-12)


def test_s5_bidirectional_matches_loop():
    """S5 oracle: both scans written as plain loops over the discretised system."""
    L = 9
    mixer = make("s5", False, L)
    x = torch.randn(2, L, DIM, dtype=torch.float64)
    Lbar, Bbar = mixer.discretize()
    C = torch.view_as_complex(mixer.C.contiguous())
    C_b = torch.view_as_complex(mixer.C_b.contiguous())
    bu = x.to(Bbar.dtype) @ Bbar.T  # (2, L, P)
    h_f, h_b = [], [None] * L
    h = torch.zeros(2, mixer.d_state, dtype=Bbar.dtype)
    for t in range(L):
        h = Lbar * h + bu[:, t]
        h_f.append(h)
    h = torch.zeros_like(h)
    for t in reversed(range(L)):
        h = Lbar * h + bu[:, t]
        h_b[t] = h
    pre = (
        2 * (torch.stack(h_f, 1) @ C.T).real + 2 * (torch.stack(h_b, 1) @ C_b.T).real + mixer.D * x
    )
    torch.testing.assert_close(mixer(x), torch.nn.functional.gelu(pre), rtol=1e-10, atol=1e-12)


def test_s4d_bidirectional_matches_direct_convolution():
    """S4D oracle: y_t = sum_s K_f[t-s] u_s + sum_{s>=t} K_b[s-t] u_s + D u_t with the
    kernels built by hand from the ZOH formula, then GELU and the GLU projection."""
    L = 8
    mixer = make("s4d", False, L)
    x = torch.randn(2, L, DIM, dtype=torch.float64)
    dtA = torch.exp(mixer.log_dt)[:, None] * mixer.A  # (H, N/2)
    powers = torch.exp(dtA[:, :, None] * torch.arange(L))  # (H, N/2, L)

    def kernel(C):
        C = torch.view_as_complex(C.contiguous())
        return 2 * torch.einsum("hn,hnl->hl", C * (torch.exp(dtA) - 1) / mixer.A, powers).real

    K_f, K_b = kernel(mixer.C), kernel(mixer.C_b)
    y = torch.zeros_like(x)
    for t in range(L):
        for s in range(L):
            if s <= t:
                y[:, t] += K_f[:, t - s] * x[:, s]
            if s >= t:
                y[:, t] += K_b[:, s - t] * x[:, s]
    y = y + mixer.D * x
    expected = torch.nn.functional.glu(mixer.output_linear(torch.nn.functional.gelu(y)), dim=-1)
    torch.testing.assert_close(mixer(x), expected, rtol=1e-10, atol=1e-12)
