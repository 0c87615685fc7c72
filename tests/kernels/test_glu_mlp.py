"""glu_mlp_inference (token blocks kept in cache) against the composed GluMlp form and a per-row loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.layers import SwiGLUPacked

from omniseq.backbones.blocks import PackedSwiGLU, make_channel_mixer
from omniseq.kernels import glu_mlp as glu_mlp_module
from omniseq.kernels.glu_mlp import glu_mlp_inference, glu_mlp_reference


def _silu_(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x, inplace=True)


@pytest.fixture(params=[1 << 17, 64], ids=["default-blocks", "many-blocks"])
def block_elements(request, monkeypatch):
    """The default block size, and one so small that the rows span many blocks (a ragged last one)."""
    monkeypatch.setattr(glu_mlp_module, "BLOCK_ELEMENTS", request.param)
    return request.param


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("gate_last", [False, True])
def test_blocks_equal_the_composed_form_and_a_row_loop(block_elements, dtype, tol, bias, gate_last):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 37, 7, generator=gen, dtype=dtype)
    w1, w2 = torch.randn(2 * 12, 7, generator=gen, dtype=dtype), torch.randn(5, 12, generator=gen, dtype=dtype)
    b1 = torch.randn(2 * 12, generator=gen, dtype=dtype) if bias else None
    b2 = torch.randn(5, generator=gen, dtype=dtype) if bias else None
    out = glu_mlp_inference(x, w1, b1, w2, b2, _silu_, gate_last)
    expected = glu_mlp_reference(x, w1, b1, w2, b2, F.silu, gate_last)
    torch.testing.assert_close(out, expected, rtol=tol, atol=tol)
    rows = x.reshape(-1, 7)
    for i in (0, 17, rows.shape[0] - 1):  # the loop oracle, row by row
        h = w1 @ rows[i] + (b1 if bias else 0)
        a, b = h[:12], h[12:]
        gated = a * F.silu(b) if gate_last else F.silu(a) * b
        torch.testing.assert_close(out.reshape(-1, 5)[i], w2 @ gated + (b2 if bias else 0), rtol=tol, atol=tol)


def test_shapes_that_do_not_chain_are_refused():
    with pytest.raises(ValueError, match="do not chain"):
        glu_mlp_inference(torch.randn(4, 7), torch.randn(24, 6), None, torch.randn(5, 12), None, _silu_)
    with pytest.raises(ValueError, match="do not chain"):
        glu_mlp_inference(torch.randn(4, 7), torch.randn(24, 7), None, torch.randn(5, 11), None, _silu_)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_packed_swiglu_is_timms_module_in_every_mode(block_elements, dtype, tol, monkeypatch):
    """Same keys and outputs as timm's SwiGLUPacked: fast at inference, timm's form with
    autograd (gradients too) and with dropout in training."""
    from omniseq.backbones import blocks

    fast_calls = []
    monkeypatch.setattr(blocks, "glu_mlp_inference", lambda *a: fast_calls.append(1) or glu_mlp_inference(*a))
    torch.manual_seed(0)
    ours = make_channel_mixer("swiglu", 16, 24, torch.nn.GELU, 0.0).to(dtype)
    assert isinstance(ours, PackedSwiGLU)
    timms = SwiGLUPacked(16, 48, bias=False).to(dtype)
    assert ours.state_dict().keys() == timms.state_dict().keys()
    timms.load_state_dict(ours.state_dict())
    x = torch.randn(2, 300, 16, dtype=dtype)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), timms(x), rtol=tol, atol=tol)
    assert len(fast_calls) == 1
    x.requires_grad_(True)
    got = torch.autograd.grad(ours(x).square().sum(), [x, *ours.parameters()])
    want = torch.autograd.grad(timms(x).square().sum(), [x, *timms.parameters()])
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    dropping = PackedSwiGLU(16, 48, bias=False, drop=0.5).to(dtype).train()
    timms_dropping = SwiGLUPacked(16, 48, bias=False, drop=0.5).to(dtype).train()
    dropping.load_state_dict(ours.state_dict())
    timms_dropping.load_state_dict(ours.state_dict())
    with torch.no_grad():  # the same random stream draws the same dropout masks
        torch.manual_seed(3)
        noisy = dropping(x)
        torch.manual_seed(3)
        torch.testing.assert_close(noisy, timms_dropping(x), rtol=tol, atol=tol)
    assert len(fast_calls) == 1  # neither autograd nor dropout took the fast path
