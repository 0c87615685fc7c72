"""narrow_mlp against the composed modules and a per-row loop: values, dropout masks, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from omniseq.kernels import narrow_mlp as narrow_mlp_module
from omniseq.kernels.narrow_mlp import narrow_mlp, narrow_mlp_reference


def _params(gen, features_in, hidden, features_out, dtype, bias=True):
    w1 = torch.randn(hidden, features_in, generator=gen, dtype=dtype)
    w2 = torch.randn(features_out, hidden, generator=gen, dtype=dtype)
    b1 = torch.randn(hidden, generator=gen, dtype=dtype) if bias else None
    b2 = torch.randn(features_out, generator=gen, dtype=dtype) if bias else None
    return [w1, b1, w2, b2]


@pytest.fixture(params=[1 << 16, 40], ids=["default-blocks", "many-blocks"])
def block_elements(request, monkeypatch):
    """The op's default block size, and one so small that the test rows span many blocks (a ragged last one)."""
    monkeypatch.setattr(narrow_mlp_module, "BLOCK_ELEMENTS", request.param)
    return request.param


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("p, training", [(0.0, True), (0.4, True), (0.4, False)])
@pytest.mark.parametrize("bias", [True, False])
def test_values_masks_and_gradients_match_the_modules(block_elements, dtype, tol, p, training, bias):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 37, 7, generator=gen, dtype=dtype)
    leaves = [x.clone().requires_grad_()] + [t.clone().requires_grad_() if t is not None else None
                                             for t in _params(gen, 7, 24, 5, dtype, bias)]
    refs = [t.detach().clone().requires_grad_() if t is not None else None for t in leaves]
    torch.manual_seed(7)
    out = narrow_mlp(*leaves, p, training)
    after = torch.rand(3)  # the op draws as much from the global stream as the modules
    torch.manual_seed(7)  # the same random stream draws the same mask
    expected = narrow_mlp_reference(*refs, p, training)
    torch.testing.assert_close(torch.rand(3), after, rtol=0, atol=0)
    torch.testing.assert_close(out, expected, rtol=tol, atol=tol)
    assert out.shape == (3, 37, 5) and out.is_contiguous()
    assert "NarrowMLP" in type(out.grad_fn).__name__  # the fast op ran, not the reference
    upstream = torch.randn(out.shape, generator=gen, dtype=dtype)
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    for got, want in zip(leaves, refs, strict=True):
        if got is not None:
            torch.testing.assert_close(got.grad, want.grad, rtol=tol * 10, atol=tol * 10)


def test_matches_a_per_row_loop_and_gradcheck(block_elements):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 9, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    params = [t.requires_grad_() for t in _params(gen, 3, 6, 2, torch.float64)]
    out = narrow_mlp(x, *params)
    xd, (w1, b1, w2, b2), outd = x.detach(), [t.detach() for t in params], out.detach()
    for b in range(2):
        for t in range(9):
            hidden = [max(0.0, float(sum(w1[j, c] * xd[b, t, c] for c in range(3)) + b1[j])) for j in range(6)]
            for o in range(2):
                want = sum(w2[o, j] * hidden[j] for j in range(6)) + b2[o]
                assert abs(float(outd[b, t, o]) - float(want)) < 1e-12
    assert torch.autograd.gradcheck(lambda *t: narrow_mlp(*t), (x, *params))


def test_output_layout_keeps_a_following_dropout_identical():
    """A dropout after the op draws its mask in memory order: a column-major output would move it."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 16, 7, generator=gen)
    params = _params(gen, 7, 32, 7, torch.float32)
    torch.manual_seed(3)
    got = F.dropout(narrow_mlp(x, *params), 0.5, True)
    torch.manual_seed(3)
    want = F.dropout(narrow_mlp_reference(x, *params), 0.5, True)
    assert torch.equal(got == 0, want == 0)
    torch.testing.assert_close(got, want)


def test_input_without_gradient_and_no_grad_mode():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5, 11, 4, generator=gen)
    params = [t.requires_grad_() for t in _params(gen, 4, 16, 4, torch.float32)]
    refs = [t.detach().clone().requires_grad_() for t in params]
    torch.manual_seed(3)
    narrow_mlp(x, *params, 0.2, True).sum().backward()  # only the parameters need gradients
    torch.manual_seed(3)  # the same dropout mask
    narrow_mlp_reference(x, *refs, 0.2, True).sum().backward()
    for got, want in zip(params, refs, strict=True):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(narrow_mlp(x, *params), narrow_mlp_reference(x, *params))


def test_bad_arguments():
    x = torch.randn(2, 3, 7)
    w1, b1, w2, b2 = _params(torch.Generator().manual_seed(5), 7, 8, 7, torch.float32)
    with pytest.raises(ValueError, match=r"shapes do not chain: x \(\.\.\., 7\), w1 \(8, 6\)"):
        narrow_mlp(x, w1[:, :6], b1, w2, b2)
    with pytest.raises(ValueError, match=r"need w1 \(hidden, 7\) and w2 \(C_out, hidden\)"):
        narrow_mlp(x, w1, b1, w2[:, :5], b2)
    with pytest.raises(ValueError, match=r"dropout p must be in \[0, 1\], got 1.5"):
        narrow_mlp(x, w1, b1, w2, b2, 1.5, True)


def test_outside_the_niche_it_is_the_composed_form():
    """Wide features, bfloat16 and autocast take the reference path: the same values and autograd graph."""
    gen = torch.Generator().manual_seed(6)
    wide = torch.randn(2, 5, 40, generator=gen)
    params = _params(gen, 40, 16, 40, torch.float32)
    out = narrow_mlp(wide.requires_grad_(), *params)
    assert "NarrowMLP" not in type(out.grad_fn).__name__
    torch.testing.assert_close(out, narrow_mlp_reference(wide, *params), rtol=0, atol=0)
    x = torch.randn(2, 5, 7, generator=gen)
    narrow = _params(gen, 7, 16, 7, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = narrow_mlp(x, *narrow), narrow_mlp_reference(x, *narrow)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    as_bf16 = [t.bfloat16() for t in narrow]
    torch.testing.assert_close(narrow_mlp(x.bfloat16(), *as_bf16), narrow_mlp_reference(x.bfloat16(), *as_bf16),
                               rtol=0, atol=0)
