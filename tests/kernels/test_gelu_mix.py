"""gelu_mix_dropout against the composed modules: values, dropout masks, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from omniseq.kernels import gelu_mix
from omniseq.kernels.cpu import cpu_kernels_available
from omniseq.kernels.cpu import dropout as cpu_dropout
from omniseq.kernels.gelu_mix import (
    dropout_key,
    gelu_mix_dropout,
    gelu_mix_dropout_reference,
    keep_mask,
    philox_words,
)

needs_compiled = pytest.mark.skipif(not cpu_kernels_available("dropout"), reason="no C compiler for the CPU kernels")


def _mask_of_seed(like, p, seed):
    torch.manual_seed(seed)
    return keep_mask(like, p, dropout_key())


def _composed_with_the_same_mask(v, weight, bias, p, training, seed):
    """The modules' composition with dropout's mask drawn as the op draws it (same seed)."""
    out = F.conv2d(F.gelu(v), weight, bias)
    if p == 0 or not training:
        return out
    return out * _mask_of_seed(out, p, seed) * torch.ones((), dtype=out.dtype).div_(1 - p)


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
    their own dtype, and only ``v`` kept for backward (the mask is drawn again from its key)."""
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
        expected = expected * _mask_of_seed(expected, p, 7) * torch.ones((), dtype=expected.dtype).div_(1 - p)
    assert out.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    big = [t for t in saved if t.numel() >= out.numel()]
    assert [t.dtype for t in big] == [torch.bfloat16]
    weight_out = torch.randn(out.shape, generator=gen).bfloat16()
    (out * weight_out).float().sum().backward()
    (expected * weight_out).float().sum().backward()
    for got, want in zip(leaves, refs, strict=True):
        assert got.grad.dtype == want.grad.dtype
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_mask_keeps_one_minus_p_independently_and_follows_the_layout(p):
    """Known answer: the keep rate, and the rates of kept pairs of neighbours (the two 16-bit
    halves of one word) and of elements 2048 apart (two words of one Philox block), within 5
    standard deviations of 1 - p and (1 - p)^2."""
    like = torch.empty(64, 32, 33, 49).contiguous(memory_format=torch.channels_last)
    keep = _mask_of_seed(like, p, 0)
    assert keep.dtype == torch.bool and keep.shape == like.shape and keep.stride() == like.stride()
    flat = keep.as_strided((keep.numel(),), (1,)).double()
    n, q = flat.numel(), 1 - p
    assert abs(flat.mean().item() - q) < 5 * (q * p / n) ** 0.5
    for pairs in (flat[0::2] * flat[1::2], flat[:-2048] * flat[2048:]):
        assert abs(pairs.mean().item() - q * q) < 5 * (q * q * (1 - q * q) / (pairs.numel() / 2)) ** 0.5
    assert torch.equal(_mask_of_seed(like, p, 0), keep)  # the seed decides the mask
    assert not torch.equal(keep_mask(like, p, dropout_key()), keep)  # the next key does not repeat it


# Random123's known answers for Philox4x32-10: (counter, key) -> the four output words.
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter, key, words", PHILOX_KAT)
def test_philox_matches_random123s_known_answers(counter, key, words):
    if counter[2:] == (0, 0):  # the PyTorch generator runs counters (block, 0, 0, 0)
        block = counter[0] | counter[1] << 32
        assert tuple(philox_words(torch.tensor([block]), key)[:, 0].tolist()) == words
    if cpu_kernels_available("dropout"):
        assert cpu_dropout.philox4x32_10(counter, key) == words


@needs_compiled
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_compiled_dropout_equals_the_pytorch_mask_bit_for_bit(dtype, channels_last):
    """Several tiles and a partial one, both layouts, in place and not: ``keep ? x * scale : 0``
    with the mask of :func:`keep_mask`, rounded as PyTorch rounds."""
    x = torch.randn(3, 7, 33, 49, dtype=torch.float32).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    key, p = (0x12345678, 0x9ABCDEF0), 0.3
    scale = torch.ones((), dtype=dtype).div_(1 - p)
    expected = torch.where(keep_mask(x, p, key), x * scale, torch.zeros((), dtype=dtype))
    out = torch.empty_like(x)
    cpu_dropout.philox_dropout(x, out, key, gelu_mix.keep_threshold(p), scale.item())
    assert torch.equal(out, expected)
    cpu_dropout.philox_dropout(x, x, key, gelu_mix.keep_threshold(p), scale.item())
    assert torch.equal(x, expected)


@needs_compiled
def test_op_without_the_compiled_kernel_gives_the_same_output_and_gradients(monkeypatch):
    gen = torch.Generator().manual_seed(5)
    v = torch.randn(4, 8, 9, 11, generator=gen).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(6, 8, 1, 1, generator=gen), torch.randn(6, generator=gen)
    results = []
    for compiled in (True, False):
        if not compiled:
            monkeypatch.setattr(cpu_dropout, "supports", lambda *args: False)
        leaves = [t.clone().requires_grad_() for t in (v, weight, bias)]
        torch.manual_seed(11)
        out = gelu_mix_dropout(*leaves, 0.4, True)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(6)))
        results.append([out.detach(), *(t.grad for t in leaves)])
    for got, want in zip(*results, strict=True):
        assert torch.equal(got, want)
