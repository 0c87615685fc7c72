"""ConvS5: parallel scan equals a step loop and an explicit per-cell recurrence; ConvLSTM baseline."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from omniseq.backbones.convlstm import ConvLSTM
from omniseq.backbones.convs5 import ConvS5, ConvS5Layer


def _explicit_layer(layer: ConvS5Layer, u: torch.Tensor) -> torch.Tensor:
    """The recurrence written from the paper's equations with complex convolutions, no scan."""
    Lambda = torch.complex(-torch.exp(layer.Lambda_re_log), layer.Lambda_im).to(torch.complex128)
    dt = torch.exp(layer.log_dt).to(torch.float64)
    Abar = torch.exp(Lambda * dt)
    B = torch.complex(layer.B[0], layer.B[1]).to(torch.complex128)
    C = torch.complex(layer.C[0], layer.C[1]).to(torch.complex128)
    Bbar = ((Abar - 1) / Lambda)[:, None, None, None] * B
    pad = layer.padding
    state = torch.zeros(u.shape[0], layer.state_dim, *u.shape[-2:], dtype=torch.complex128)
    outputs = []
    for t in range(u.shape[1]):
        u_t = u[:, t].to(torch.complex128)
        state = Abar[None, :, None, None] * state + F.conv2d(u_t, Bbar, padding=pad)
        y = F.conv2d(state, C, padding=pad).real + layer.D.double()[:, None, None] * u[:, t].double()
        outputs.append(y)
    return torch.stack(outputs, dim=1)


@settings(max_examples=8, deadline=None)
@given(length=st.integers(1, 13), height=st.integers(1, 5), width=st.integers(1, 6), seed=st.integers(0, 99))
def test_layer_parallel_equals_explicit_recurrence_float64(length, height, width, seed):
    torch.manual_seed(seed)
    layer = ConvS5Layer(3, state_dim=4).double()
    u = torch.randn(2, length, 3, height, width, dtype=torch.float64)
    y, last = layer(u)
    torch.testing.assert_close(y, _explicit_layer(layer, u), rtol=1e-9, atol=1e-10)
    assert last.dtype == torch.complex128 and last.shape == (2, 4, height, width)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_model_step_generation_equals_parallel_form(dtype, tol):
    torch.manual_seed(0)
    model = ConvS5(in_channels=3, out_channels=2, pred_len=4, dim=8, state_dim=6, depth=2).to(dtype).eval()
    x = torch.randn(2, 11, 3, 5, 7, dtype=dtype)
    features = model.forward_features(x)
    states = model.init_state(x[:, 0])
    stepped = []
    for t in range(x.shape[1]):
        h, states = model.step(x[:, t], states)
        stepped.append(h)
    torch.testing.assert_close(torch.stack(stepped, 1), features, rtol=tol, atol=tol)
    torch.testing.assert_close(model.forward_recurrent(x), model(x), rtol=tol, atol=tol)


def test_layer_state_carries_over_between_chunks():
    torch.manual_seed(0)
    layer = ConvS5Layer(2, state_dim=3).double()
    u = torch.randn(1, 9, 2, 4, 4, dtype=torch.float64)
    full, last = layer(u)
    first, mid = layer(u[:, :4])
    second, last2 = layer(u[:, 4:], state=mid)
    torch.testing.assert_close(torch.cat([first, second], 1), full)
    torch.testing.assert_close(last2, last)


def test_gradients_match_the_explicit_recurrence():
    torch.manual_seed(0)
    layer = ConvS5Layer(2, state_dim=3).double()
    u = torch.randn(1, 6, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    (g_fast,) = torch.autograd.grad(layer(u)[0].square().sum(), [u])
    (g_ref,) = torch.autograd.grad(_explicit_layer(layer, u).square().sum(), [u])
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-8, atol=1e-10)
    small = ConvS5Layer(1, state_dim=2).double()
    v = torch.randn(1, 3, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: small(t)[0], (v,))


def test_residual_head_starts_from_persistence_and_is_causal():
    torch.manual_seed(0)
    model = ConvS5(3, 2, pred_len=5, dim=8, state_dim=4).eval()
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    x = torch.randn(2, 6, 3, 4, 4)
    expected = x[:, -1:, :2].expand(-1, 5, -1, -1, -1)
    torch.testing.assert_close(model(x), expected)
    # The state after frame t depends on no later frame.
    features = model.forward_features(x)
    x2 = x.clone()
    x2[:, 4:] += 1.0
    torch.testing.assert_close(model.forward_features(x2)[:, :4], features[:, :4])


def test_convlstm_shapes_and_persistence_start():
    torch.manual_seed(0)
    model = ConvLSTM(4, 4, pred_len=3, dim=6)
    x = torch.randn(2, 5, 4, 6, 7)
    assert model(x).shape == (2, 3, 4, 6, 7)
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    torch.testing.assert_close(model(x), x[:, -1:].expand(-1, 3, -1, -1, -1))


def test_bad_inputs_raise_clear_errors():
    model = ConvS5(3, 3, pred_len=2, dim=4, state_dim=2)
    with pytest.raises(ValueError, match=r"x must have shape \(B, T, 3, H, W\), got \(2, 5, 4, 4\)"):
        model(torch.randn(2, 5, 4, 4))
    with pytest.raises(ValueError, match="NaN or inf"):
        model(torch.full((1, 2, 3, 4, 4), float("nan")))
    with pytest.raises(ValueError, match=r"step: x_t must have shape \(B, 3, H, W\)"):
        model.step(torch.randn(1, 2, 4, 4), model.init_state(torch.randn(1, 3, 4, 4)))
    with pytest.raises(ValueError, match="residual=True needs out_channels <= in_channels"):
        ConvS5(2, 3, pred_len=2)
    with pytest.raises(ValueError, match="odd kernel_size"):
        ConvS5Layer(2, 2, kernel_size=2)
    with pytest.raises(ValueError, match=r"ConvLSTM: x must have shape \(B, T, 4, H, W\)"):
        ConvLSTM(4, 4, 1)(torch.randn(1, 2, 3, 4, 4))


def test_forward_reads_out_only_the_last_frame_yet_equals_the_full_features():
    torch.manual_seed(0)
    model = ConvS5(2, 1, 3, dim=8, state_dim=4, depth=2).double().eval()
    x = torch.randn(2, 6, 2, 5, 7, dtype=torch.float64)
    full = model.forward_features(x)
    last = model.forward_features(x, last_only=True)
    assert last.shape == (2, 1, 8, 5, 7)
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model(x), model.decode(full[:, -1], x[:, -1]), rtol=1e-12, atol=1e-12)


def test_last_only_forward_has_the_gradients_of_the_full_features():
    """model(x) skips the last block's unread frames and keeps no state sequence for them;
    its parameter gradients equal those through every frame's features."""
    torch.manual_seed(0)
    model = ConvS5(2, 1, 3, dim=8, state_dim=20, depth=2).double()
    x = torch.randn(2, 5, 2, 4, 6, dtype=torch.float64)
    target = torch.randn(2, 3, 1, 4, 6, dtype=torch.float64)
    fast = torch.autograd.grad(F.mse_loss(model(x), target), list(model.parameters()))
    full = model.decode(model.forward_features(x)[:, -1], x[:, -1])
    slow = torch.autograd.grad(F.mse_loss(full, target), list(model.parameters()))
    for got, want in zip(fast, slow, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_recompute_states_changes_memory_not_results():
    torch.manual_seed(0)
    kept = ConvS5(2, 1, 3, dim=8, state_dim=6, depth=2).double()
    recomputed = ConvS5(2, 1, 3, dim=8, state_dim=6, depth=2, recompute_states=True).double()
    recomputed.load_state_dict(kept.state_dict())
    x = torch.randn(2, 7, 2, 4, 5, dtype=torch.float64)
    grads = []
    for model in (kept, recomputed):
        out = model(x)
        grads.append((out, *torch.autograd.grad(out.square().sum(), list(model.parameters()))))
    for got, want in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
