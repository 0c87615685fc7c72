"""DNAModel's k-mer stem (``patch_size``): the stem and the per-base head against their
convolution oracles, exact RC equivariance for any length (divisible by the stride or
not, padded rows too), and what happens to the bases of a last, partial patch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from omniseq.backbones.dna import CHAR_COMPLEMENT, DNAModel, PatchEmbed, PatchUnembed

COMP = torch.tensor(CHAR_COMPLEMENT)


def rc_ids(ids: torch.Tensor) -> torch.Tensor:
    return COMP[ids].flip(1)


def random_ps_model(patch_size: int, **options) -> DNAModel:
    model = DNAModel(dim=16, depth=2, mixer_options={"d_state": 4}, rc_mode="ps", patch_size=patch_size,
                     **options).double().eval()
    for p in model.parameters():  # random, not init, weights
        torch.nn.init.normal_(p, std=0.3)
    return model


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_patch_embed_is_a_strided_conv_over_one_hot_bases(dtype, tol):
    torch.manual_seed(0)
    vocab, width, size = 10, 6, 3
    stem = PatchEmbed(vocab, width, size).to(dtype)
    torch.nn.init.normal_(stem.table.weight)
    ids = torch.randint(0, vocab, (2, 12))
    # Oracle: Conv1d(vocab -> width, kernel = stride = size) on one-hot; its weight[c, v, j]
    # is the table row of token v at offset j.
    weight = stem.table.weight.detach().view(size, vocab, width).permute(2, 1, 0).clone().requires_grad_(True)
    one_hot = F.one_hot(ids, vocab).to(dtype).transpose(1, 2)
    expected = F.conv1d(one_hot, weight, stride=size).transpose(1, 2)
    out = stem(ids)
    torch.testing.assert_close(out, expected, rtol=tol, atol=tol)
    grad = torch.randn_like(out)
    (out * grad).sum().backward()
    (expected * grad).sum().backward()
    torch.testing.assert_close(stem.table.weight.grad.view(size, vocab, width).permute(2, 1, 0), weight.grad,
                               rtol=tol, atol=tol)


@pytest.mark.parametrize("kernel", [5, 8])
def test_overlapping_patch_embed_is_a_strided_conv_over_padded_one_hot_bases(kernel):
    torch.manual_seed(0)
    vocab, width, size = 10, 6, 3
    stem = PatchEmbed(vocab, width, size, kernel_size=kernel, pad_id=0).double()
    torch.nn.init.normal_(stem.table.weight)
    ids = torch.randint(1, vocab, (2, 12))
    left = (kernel - size) // 2
    # Oracle: the ids padded with pad_id ((k - s) // 2 left, the rest right), one-hot, Conv1d stride s.
    padded = torch.cat([torch.zeros(2, left, dtype=torch.long), ids,
                        torch.zeros(2, kernel - size - left, dtype=torch.long)], 1)
    weight = stem.table.weight.detach().view(kernel, vocab, width).permute(2, 1, 0)
    expected = F.conv1d(F.one_hot(padded, vocab).double().transpose(1, 2), weight, stride=size).transpose(1, 2)
    assert expected.shape == (2, 4, width)
    torch.testing.assert_close(stem(ids), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_patch_unembed_is_a_depthwise_transposed_conv(dtype, tol):
    torch.manual_seed(0)
    width, size = 5, 4
    head = PatchUnembed(width, size).to(dtype)
    torch.nn.init.normal_(head.weight)
    torch.nn.init.normal_(head.bias)
    tokens = torch.randn(2, 3, width, dtype=dtype, requires_grad=True)
    out = head(tokens, 10)  # 12 bases of patches, the last 2 cut off
    # Oracle: ConvTranspose1d(groups=width, kernel = stride = size); the bias differs per offset,
    # which the conv lacks, so it is added per position.
    weight = head.weight.detach().t().unsqueeze(1).clone().requires_grad_(True)  # (width, 1, size)
    conv = F.conv_transpose1d(tokens.transpose(1, 2), weight, stride=size, groups=width).transpose(1, 2)
    expected = (conv + head.bias.detach().repeat(3, 1))[:, :10]
    torch.testing.assert_close(out, expected, rtol=tol, atol=tol)
    grad = torch.randn_like(out)
    token_grad, weight_grad = torch.autograd.grad((out * grad).sum(), (tokens, head.weight))
    token_grad_ref, weight_grad_ref = torch.autograd.grad((expected * grad).sum(), (tokens, weight))
    torch.testing.assert_close(token_grad, token_grad_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(weight_grad, weight_grad_ref[:, 0].t(), rtol=tol, atol=tol)


@pytest.mark.parametrize("patch_size", [2, 3, 4])
@pytest.mark.parametrize("length", [1, 7, 12, 13])
@pytest.mark.parametrize("overlap", [0, 3])
def test_patched_ps_is_exactly_rc_equivariant(patch_size, length, overlap):
    """Per-base features and logits equivariant, pooled invariant, whether or not the
    stride divides the length (each strand is patched from its own 5' end), with or
    without overlapping stem windows."""
    torch.manual_seed(length)
    model = random_ps_model(patch_size, patch_kernel=patch_size + overlap)
    ids = torch.randint(5, 10, (3, length))
    h, h_rc = model.forward_features(ids), model.forward_features(rc_ids(ids))
    assert h.shape == (3, length, 16)
    torch.testing.assert_close(h_rc, h.flip(1).flip(-1), rtol=1e-10, atol=1e-10)
    logits, logits_rc = model(ids), model(rc_ids(ids))
    assert logits.shape == (3, length, 10)
    torch.testing.assert_close(logits_rc, logits.flip(1)[..., COMP], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model.forward_pooled(rc_ids(ids)), model.forward_pooled(ids), rtol=1e-10, atol=1e-10)


def test_partial_patch_is_padded_read_and_pooled_by_its_real_bases():
    torch.manual_seed(0)
    model = DNAModel(dim=16, depth=2, mixer_options={"d_state": 4}, patch_size=4).double().eval()
    ids = torch.randint(5, 9, (2, 10))  # 2 whole patches and one of 2 bases
    padded = torch.cat([ids, torch.zeros(2, 2, dtype=torch.long)], 1)  # [PAD] = pad_id 0
    tokens = model.trunk_tokens(padded)
    torch.testing.assert_close(model.trunk_tokens(ids), tokens)
    weights = torch.tensor([4.0, 4.0, 2.0], dtype=torch.float64)
    expected = (tokens * weights[:, None]).sum(1) / 10
    torch.testing.assert_close(model.forward_pooled(ids), expected)
    # The last bases are read, not dropped: changing one changes the output.
    changed = ids.clone()
    changed[:, -1] = torch.where(ids[:, -1] == 5, 6, 5)
    assert (model.forward_pooled(changed) - model.forward_pooled(ids)).abs().min() > 1e-8
    # Masked (right-padded) rows pool the same: a patch of padding alone weighs nothing.
    mask = padded != 0
    torch.testing.assert_close(model.forward_pooled(padded, mask), expected)


def test_patched_plain_and_ph_models():
    torch.manual_seed(0)
    ids = torch.randint(5, 10, (2, 11))
    ph = DNAModel(dim=16, depth=1, mixer_options={"d_state": 4}, rc_mode="ph", patch_size=2).double().eval()
    torch.testing.assert_close(ph(rc_ids(ids)), ph(ids).flip(1)[..., COMP])
    torch.testing.assert_close(ph.forward_pooled(rc_ids(ids)), ph.forward_pooled(ids))
    plain = DNAModel(dim=16, depth=1, mixer="attention", num_heads=2, pos_embed="learned", max_length=11,
                     patch_size=3)
    assert plain.pos_embed.shape == (1, 4, 16) and plain(ids).shape == (2, 11, 10)
    assert plain.lm_head.weight is not plain.embed.table.weight  # untied with a stem


def test_patch_size_options_are_checked():
    with pytest.raises(ValueError, match="patch_size must be a positive int"):
        DNAModel(dim=8, patch_size=0)
    with pytest.raises(ValueError, match="patch_kernel must be an int >= patch_size > 1"):
        DNAModel(dim=8, patch_size=4, patch_kernel=3)
    with pytest.raises(ValueError, match="causal LM steps one base at a time"):
        DNAModel(dim=8, causal=True, patch_size=2)
