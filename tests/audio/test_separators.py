"""Separators: shapes for every mixer, front-end round trips, dual-path chunking, bad input."""

from __future__ import annotations

import pytest
import torch

from omniseq.backbones.separators import (
    ConvDecoder,
    ConvEncoder,
    DualPathMasker,
    MaskSeparator,
    STFTFrontEnd,
    TorchaudioConvTasNet,
)


@pytest.mark.parametrize("mixer", ["attention", "mamba", "gla", "s5", "s4d", "fsmn"])
def test_dualpath_separator_every_mixer(mixer):
    torch.manual_seed(0)
    model = MaskSeparator(num_sources=3, channels=16, masker_options=dict(mixer=mixer, dim=16, chunk_size=10, num_heads=2))
    x = torch.randn(2, 403)
    y = model(x)
    assert y.shape == (2, 3, 403)
    y.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_sashimi_and_stft_separators():
    x = torch.randn(2, 1000)
    assert MaskSeparator(channels=16, masker="sashimi", masker_options=dict(dim=8, depth=1)).eval()(x).shape == (2, 2, 1000)
    assert MaskSeparator(channels=16, masker="singlepath", masker_options=dict(dim=8, depth=2)).eval()(x).shape == (2, 2, 1000)
    assert MaskSeparator(front_end="stft", kernel_size=64, masker_options=dict(dim=8, chunk_size=8)).eval()(x).shape == (2, 2, 1000)


def test_batch_entries_do_not_interact():
    torch.manual_seed(0)
    model = MaskSeparator(channels=16, masker_options=dict(dim=16, chunk_size=10)).double().eval()
    x = torch.randn(3, 500, dtype=torch.float64)
    with torch.no_grad():
        alone = model(x[1:2])
        together = model(x)
    torch.testing.assert_close(together[1:2], alone, rtol=1e-10, atol=1e-12)


def test_stft_front_end_reconstructs_exactly():
    front = STFTFrontEnd(128)
    x = torch.randn(2, 1234, dtype=torch.float64)
    magnitude, context = front.encode(x)
    assert magnitude.shape[-1] == 65 and (magnitude >= 0).all()
    torch.testing.assert_close(front.decode(magnitude, context), x, rtol=1e-9, atol=1e-10)


def test_conv_front_end_is_linear_overlap_add_and_covers_every_sample():
    encoder, decoder = ConvEncoder(8, 16), ConvDecoder(8, 16)
    for length in (16, 17, 23, 100):
        feats, context = encoder(torch.randn(1, length))
        assert (feats.shape[1] - 1) * 8 + 16 >= length
        assert decoder(feats, context).shape == (1, length)
    # with the identity filterbank (and positive input) encode->decode is 2x (50% overlap) inside
    encoder, decoder = ConvEncoder(16, 16), ConvDecoder(16, 16)
    with torch.no_grad():
        encoder.conv.weight.copy_(torch.eye(16)[:, None])
        decoder.deconv.weight.copy_(torch.eye(16)[:, None])
    x = torch.rand(1, 64)
    y = decoder(*encoder(x))
    torch.testing.assert_close(y[:, 8:-8], 2 * x[:, 8:-8])


def test_dualpath_chunk_merge_roundtrip():
    masker = DualPathMasker(4, chunk_size=6)
    for length in (1, 5, 6, 13, 40):
        x = torch.randn(2, length, 4)
        chunks, n = masker._chunk(x)
        assert chunks.shape[2] == 6
        # every frame lies in exactly two half-overlapping chunks
        torch.testing.assert_close(masker._merge(chunks, n), 2 * x)


def test_bad_inputs_are_named():
    model = MaskSeparator(channels=16, kernel_size=16, masker_options=dict(dim=8, chunk_size=4))
    with pytest.raises(ValueError, match="shorter than the encoder kernel"):
        model(torch.randn(1, 10))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model(torch.randn(1, 2, 100))
    with pytest.raises(ValueError, match="masker must be one of"):
        MaskSeparator(masker="tcn")
    with pytest.raises(ValueError, match="front_end"):
        MaskSeparator(front_end="mel")


def test_torchaudio_convtasnet_baseline_interface():
    model = TorchaudioConvTasNet(enc_num_feats=16, msk_num_feats=8, msk_num_hidden_feats=16, msk_num_layers=2, msk_num_stacks=1)
    assert model(torch.randn(2, 333)).shape == (2, 2, 333)
    with pytest.raises(ValueError, match="encoder kernel"):
        model(torch.randn(2, 8))


def test_singlepath_fsmn_masker_reaches_exactly_its_summed_dilations():
    """A TCN-style stack: each fsmn block reaches (kernel_size - 1) / 2 * dilation frames per side."""
    from omniseq.backbones.separators import SinglePathMasker

    torch.manual_seed(0)
    dilations = [1, 2, 4]
    masker = SinglePathMasker(
        8, dim=8, depth=4, mixer="fsmn", mixer_options={"kernel_size": 3},
        block_mixer_options=[{"dilation": d} for d in dilations],
    ).double()
    assert [b.mixer.dilation for b in masker.blocks] == [1, 2, 4, 1]
    # GroupNorm(1) couples all frames; take gradients after it to see the stack's own reach.
    x = torch.randn(1, 41, 8, dtype=torch.float64, requires_grad=True)
    masker.out(masker.blocks(x))[0, 20].sum().backward()
    touched = (x.grad[0].abs().sum(-1) > 0).nonzero().flatten()
    reach = 1 + 2 + 4 + 1
    assert touched.min().item() == 20 - reach and touched.max().item() == 20 + reach
    assert masker(torch.randn(2, 41, 8, dtype=torch.float64)).shape == (2, 2, 41, 8)


def test_linear_conv_front_end_keeps_negative_features():
    torch.manual_seed(0)
    wav = torch.randn(2, 400)
    linear, rectified = ConvEncoder(8, 16, activation="none"), ConvEncoder(8, 16)
    rectified.load_state_dict(linear.state_dict())
    feats, _ = linear(wav)
    assert (feats < 0).any()
    torch.testing.assert_close(rectified(wav)[0], feats.clamp_min(0))
    with pytest.raises(ValueError, match="'relu' or 'none'"):
        ConvEncoder(8, 16, activation="tanh")
