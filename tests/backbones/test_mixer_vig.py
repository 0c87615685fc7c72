"""ViG's mixer: the batched two-direction form equals the token-by-token loop
(float64 and float32, outputs and gradients); bad grids are refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from omniseq.backbones.mixers import build_mixer


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("options", [dict(out_act=True), dict(conv_act=False, out_act=False)])
def test_fast_form_equals_the_loop_reference_with_gradients(dtype, tol, options):
    torch.manual_seed(0)
    mixer = build_mixer("vig", 24, num_heads=3, **options).to(dtype)
    with torch.no_grad():  # strong and varied gates, so that both directions matter
        mixer.gk_proj[1].bias.uniform_(-4.0, 4.0)
    x = torch.randn(2, 7 * 9, 24, dtype=dtype, requires_grad=True)
    grid = (7, 9)
    fast = mixer(x, grid)
    (grad_x_fast, *grad_p_fast) = torch.autograd.grad(fast.square().sum(), [x, *mixer.parameters()])
    ref = mixer.forward_reference(x, grid)
    (grad_x_ref, *grad_p_ref) = torch.autograd.grad(ref.square().sum(), [x, *mixer.parameters()])
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(fast, ref, rtol=tol, atol=tol)
    torch.testing.assert_close(grad_x_fast, grad_x_ref, rtol=tol, atol=tol)
    for fast_p, ref_p in zip(grad_p_fast, grad_p_ref, strict=True):
        torch.testing.assert_close(fast_p, ref_p, rtol=tol, atol=tol)


def test_backward_direction_sees_the_future_and_forward_the_past():
    torch.manual_seed(0)
    mixer = build_mixer("vig", 8, num_heads=2, conv_act=False).double()
    with torch.no_grad():
        mixer.in_proj[0].weight.zero_()
        mixer.in_proj[0].weight[:, 0, 1, 1] = 1.0  # identity conv: no spatial mixing
    x = torch.randn(1, 12, 8, dtype=torch.float64, requires_grad=True)
    out = mixer(x, (1, 12))
    grad = torch.autograd.grad(out[0, 5].sum(), x)[0][0].abs().sum(-1)
    assert (grad[:5] > 0).all() and (grad[6:] > 0).all()


def test_bad_grid_and_causal_are_refused():
    mixer = build_mixer("vig", 8, num_heads=2)
    with pytest.raises(ValueError, match="2D token grid"):
        mixer(torch.randn(1, 12, 8), (3, 3))
    with pytest.raises(ValueError, match="2D token grid"):
        mixer(torch.randn(1, 12, 8), None)
    with pytest.raises(ValueError, match="causal=False"):
        build_mixer("vig", 8, num_heads=2, causal=True)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_fast_rms_norm_equals_timms_and_keeps_gradients(dtype, tol):
    from timm.layers import RmsNorm

    from omniseq.backbones.norms import FastRmsNorm

    torch.manual_seed(0)
    fast, reference = FastRmsNorm(64, eps=1e-6).to(dtype), RmsNorm(64, eps=1e-6).to(dtype)
    with torch.no_grad():
        fast.weight.normal_()
        reference.weight.copy_(fast.weight)
    x = 3 * torch.randn(5, 7, 64, dtype=dtype)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), reference(x), rtol=tol, atol=tol)
    owned = x.clone().transpose(0, 1)  # a strided view, as ViG's mixer passes the GLA output
    assert fast.normalize_(owned) is owned
    torch.testing.assert_close(owned, reference(x).transpose(0, 1), rtol=tol, atol=tol)
    x.requires_grad_(True)
    grad_fast = torch.autograd.grad(fast(x).sum(), [x, fast.weight])
    grad_ref = torch.autograd.grad(reference(x).sum(), [x, reference.weight])
    for a, b in zip(grad_fast, grad_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lowest", [-1e4, -79.0], ids=["with-very-negative", "all-above-the-floor"])
def test_log_sigmoid_equals_torchs_with_gradients(dtype, lowest):
    from omniseq.backbones.mixers.vig import log_sigmoid

    z = torch.cat([torch.linspace(lowest, 1e4, 20001), torch.linspace(-60, 60, 24001), torch.tensor([-20.0, -40.0])])
    z = z.to(dtype)
    exact = F.logsigmoid(z.double())
    with torch.no_grad():
        fast = log_sigmoid(z)
        torch.testing.assert_close(log_sigmoid(z.clone(), inplace=True), fast, rtol=0, atol=0)
    # within a few ulps of 1 absolute (sigmoid rounds near 1), and relative where |z| is large
    tol = 8 * torch.finfo(dtype).eps
    assert ((fast.double() - exact).abs() <= tol * exact.abs().clamp(min=1.0)).all()
    z.requires_grad_(True)
    out = log_sigmoid(z)
    torch.testing.assert_close(out.detach(), fast, rtol=tol, atol=tol)
    (grad,) = torch.autograd.grad(out.sum(), z)
    torch.testing.assert_close(grad.double(), torch.sigmoid(-z.detach().double()), rtol=0, atol=tol)
    half = log_sigmoid(z.detach().to(torch.bfloat16))
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.double(), F.logsigmoid(z.detach().to(torch.bfloat16).double()), rtol=1e-2, atol=1e-2)


def test_inference_path_equals_the_autograd_path():
    """In-place gates, mix and activations at inference against the autograd path (checked
    against the loop above), on a grid of several kernel chunks."""
    torch.manual_seed(2)
    mixer = build_mixer("vig", 24, num_heads=3, out_act=True)
    with torch.no_grad():
        mixer.gk_proj[1].bias.uniform_(-4.0, 4.0)
    x = torch.randn(2, 16 * 20, 24, requires_grad=True)
    with_graph = mixer(x, (16, 20))
    with torch.no_grad():
        torch.testing.assert_close(mixer(x, (16, 20)), with_graph.detach(), rtol=1e-5, atol=1e-5)


def test_many_chunks_without_autograd_equal_the_loop_reference():
    """A 32 x 40 grid (20 chunks of the kernel): the no-grad fast paths (in-place state
    scan, fused products) against the token-by-token loop, fp64 and fp32."""
    torch.manual_seed(1)
    mixer = build_mixer("vig", 24, num_heads=3, out_act=True).double()
    with torch.no_grad():
        mixer.gk_proj[1].bias.uniform_(-4.0, 4.0)
        x = torch.randn(2, 32 * 40, 24, dtype=torch.float64)
        ref = mixer.forward_reference(x, (32, 40))
        torch.testing.assert_close(mixer(x, (32, 40)), ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(mixer.float()(x.float(), (32, 40)), ref.float(), rtol=2e-5, atol=2e-5)
