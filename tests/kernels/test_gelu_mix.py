"""gelu_mix_dropout against the composed modules: values, dropout masks, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from omniseq.kernels.gelu_mix import gelu_mix_dropout, gelu_mix_dropout_reference, keep_mask


def _composed_with_the_same_mask(v, weight, bias, p, training, seed):
    """The modules' composition with dropout's mask drawn as the op draws it (same seed)."""
    out = F.conv2d(F.gelu(v), weight, bias)
    if p == 0 or not training:
        return out
    torch.manual_seed(seed)
    return out * keep_mask(out, p) * torch.ones((), dtype=out.dtype).div_(1 - p)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("p, training", [(0.0, True), (0.3, True), (0.3, False)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_values_masks_and_gradients_match_the_modules(dtype, tol, p, training, channels_last):
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(6, 5, 4, 7, generator=gen, dtype=dtype)
    if channels_last:
        v = v.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(3, 5, 1, 1, generator=gen, dtype=dtype)
    bias = torch.randn(3, generator=gen, dtype=dtype)
    leaves = [t.clone().requires_grad_() for t in (v, weight, bias)]
    refs = [t.clone().requires_grad_() for t in (v, weight, bias)]
    torch.manual_seed(7)
    out = gelu_mix_dropout(*leaves, p, training)
    expected = _composed_with_the_same_mask(*refs, p, training, seed=7)
    torch.testing.assert_close(out, expected, rtol=tol, atol=tol)
    assert torch.equal(out == 0, expected == 0)
    if p and training:
        assert 0 < (out == 0).float().mean() < 2 * p  # some dropped, not all
    weight_out = torch.randn(out.shape, generator=gen, dtype=dtype)
    (out * weight_out).sum().backward()
    (expected * weight_out).sum().backward()
    for got, want in zip(leaves, refs, strict=True):
        torch.testing.assert_close(got.grad, want.grad, rtol=tol * 10, atol=tol * 10)


def test_gradcheck_and_bad_arguments():
    gen = torch.Generator().manual_seed(1)
    args = [torch.randn(2, 3, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True),
            torch.randn(2, 3, 1, 1, generator=gen, dtype=torch.float64, requires_grad=True),
            torch.randn(2, generator=gen, dtype=torch.float64, requires_grad=True)]
    assert torch.autograd.gradcheck(lambda *t: gelu_mix_dropout(*t, 0.0, True), tuple(args))
    with pytest.raises(ValueError, match=r"weight must be a 1x1 kernel"):
        gelu_mix_dropout(args[0], torch.randn(2, 3, 3, 3), None, 0.1, True)
    with pytest.raises(ValueError, match=r"dropout p must be in \[0, 1\), got 1.0"):
        gelu_mix_dropout(args[0], args[1], args[2], 1.0, True)


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_bf16_input_under_autocast_runs_as_autocast_runs_the_modules(p):
    """bf16 ``v`` under bf16 autocast: the same output and gradients as autocast's run of the
    composed form (GELU and the convolution in bf16) with the same mask, the parameters' gradients in
    their own dtype, and only ``v`` and a bool mask kept for backward."""
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(6, 16, 9, 7, generator=gen).bfloat16().contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(8, 16, 1, 1, generator=gen), torch.randn(8, generator=gen)
    leaves = [t.clone().requires_grad_() for t in (v, weight, bias)]
    refs = [t.clone().requires_grad_() for t in (v, weight, bias)]
    saved = []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(7)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out = gelu_mix_dropout(*leaves, p, True)
        expected = gelu_mix_dropout_reference(*refs, 0.0, True)
    if p:  # autocast's composition, with the op's mask
        torch.manual_seed(7)
        expected = expected * keep_mask(expected, p) * torch.ones((), dtype=expected.dtype).div_(1 - p)
    assert out.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    big = [t for t in saved if t.numel() >= out.numel()]
    assert [t.dtype for t in big] == [torch.bfloat16] + ([torch.bool] if p else [])
    weight_out = torch.randn(out.shape, generator=gen).bfloat16()
    (out * weight_out).float().sum().backward()
    (expected * weight_out).float().sum().backward()
    for got, want in zip(leaves, refs, strict=True):
        assert got.grad.dtype == want.grad.dtype
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_mask_keeps_one_minus_p_independently_and_follows_the_layout(p):
    """Known answer: the keep rate, and the rate of kept pairs of neighbours (the two 16-bit
    halves of one draw), within 5 standard deviations of 1 - p and (1 - p)^2."""
    like = torch.empty(64, 32, 33, 49).contiguous(memory_format=torch.channels_last)
    torch.manual_seed(0)
    keep = keep_mask(like, p)
    assert keep.dtype == torch.bool and keep.shape == like.shape and keep.stride() == like.stride()
    flat = keep.as_strided((keep.numel(),), (1,)).double()
    n, q = flat.numel(), 1 - p
    assert abs(flat.mean().item() - q) < 5 * (q * p / n) ** 0.5
    pairs = (flat[0::2] * flat[1::2]).mean().item()
    assert abs(pairs - q * q) < 5 * (q * q * (1 - q * q) / (n // 2)) ** 0.5
    torch.manual_seed(0)
    assert torch.equal(keep_mask(like, p), keep)  # the seed decides the mask
    assert not torch.equal(keep_mask(like, p), keep)  # the next draw does not repeat it
