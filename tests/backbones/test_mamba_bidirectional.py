"""The fused bidirectional Mamba forward equals the per-direction branches (flipped conv, reverse scan)."""

from __future__ import annotations

import pytest
import torch

from omniseq.backbones.mixers.mamba import Mamba


def per_direction(mixer: Mamba, x: torch.Tensor) -> torch.Tensor:
    """The unfused definition: each branch on its own, outputs averaged, then out_proj."""
    xs, z = mixer.in_proj(x).chunk(2, dim=-1)
    return mixer.out_proj(0.5 * (mixer._branch(xs, z, backward=False) + mixer._branch(xs, z, backward=True)))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("d_state", [4, 16])
def test_fused_matches_per_direction_with_gradients(dtype, tol, d_state):
    torch.manual_seed(0)
    mixer = Mamba(12, d_state=d_state, d_conv=4).to(dtype)
    with torch.no_grad():  # distinct directions, so a swapped parameter shows
        mixer.A_b_log.add_(0.7)
        mixer.conv1d_b.weight.mul_(-1.3)
        mixer.D_b.mul_(0.2)
    x = torch.randn(3, 23, 12, dtype=dtype)
    grad = torch.randn(3, 23, 12, dtype=dtype)
    results = []
    for fn in (lambda inp: mixer(inp), lambda inp: per_direction(mixer, inp)):
        mixer.zero_grad()
        leaf = x.clone().requires_grad_()
        out = fn(leaf)
        (out * grad).sum().backward()
        results.append((out, leaf.grad, {n: p.grad.clone() for n, p in mixer.named_parameters()}))
    (fused, fused_dx, fused_grads), (ref, ref_dx, ref_grads) = results
    torch.testing.assert_close(fused, ref, rtol=tol, atol=tol)
    torch.testing.assert_close(fused_dx, ref_dx, rtol=tol, atol=tol)
    for name in ref_grads:
        scale = max(ref_grads[name].abs().max().item(), 1.0)
        torch.testing.assert_close(fused_grads[name], ref_grads[name], rtol=tol, atol=tol * scale, msg=name)
