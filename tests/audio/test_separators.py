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
        MaskSeparator(masker="unet")
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


def _load_torchaudio_mask_generator(masker, generator) -> None:
    """Copy torchaudio's ConvTasNet MaskGenerator weights into a mixer-free TCNMasker."""
    masker.norm.load_state_dict(generator.input_norm.state_dict())
    masker.bottleneck.weight.data.copy_(generator.input_conv.weight[..., 0])
    masker.bottleneck.bias.data.copy_(generator.input_conv.bias)
    ours = [block for stack in masker.convs for block in stack]
    for block, theirs in zip(ours, generator.conv_layers, strict=True):
        layers = theirs.conv_layers
        block.expand.load_state_dict(torch.nn.Sequential(*layers[:3]).state_dict())
        block.depthwise.load_state_dict(torch.nn.Sequential(*layers[3:]).state_dict())
        assert (block.residual is None) == (theirs.res_out is None)
        if block.residual is not None:
            block.residual.load_state_dict(theirs.res_out.state_dict())
        block.skip.load_state_dict(theirs.skip_out.state_dict())
    masker.out[0].load_state_dict(generator.output_prelu.state_dict())
    masker.out[1].weight.data.copy_(generator.output_conv.weight[..., 0])
    masker.out[1].bias.data.copy_(generator.output_conv.bias)


def test_tcn_masker_without_mixer_is_torchaudio_convtasnet_mask_generator():
    from torchaudio.models.conv_tasnet import MaskGenerator

    from omniseq.backbones.separators import TCNMasker

    torch.manual_seed(0)
    generator = MaskGenerator(24, 2, kernel_size=3, num_feats=8, num_hidden=16, num_layers=3, num_stacks=2,
                              msk_activate="sigmoid").double()
    masker = TCNMasker(24, dim=8, hidden=16, layers=3, stacks=2, mixer=None).double()
    for module in generator.modules():  # PReLU slopes and norms start at constants; randomise them
        if isinstance(module, (torch.nn.PReLU, torch.nn.GroupNorm)):
            for param in module.parameters():
                param.data.uniform_(-0.5, 1.5)
    _load_torchaudio_mask_generator(masker, generator)
    masker.norm.eps = generator.input_norm.eps
    feats = torch.randn(3, 57, 24, dtype=torch.float64)
    expected = generator(feats.transpose(1, 2)).transpose(2, 3)  # (B, S, L, N)
    torch.testing.assert_close(masker(feats), expected, rtol=1e-10, atol=1e-12)
    assert sum(p.numel() for p in masker.parameters()) == sum(p.numel() for p in generator.parameters())


@pytest.mark.parametrize("mixer", ["mamba", "attention", "s4d"])
def test_tcn_masker_mixer_blocks_sit_in_front_of_each_stack(mixer):
    """With every mixer block's residual branches zeroed, the hybrid is the plain TCN;
    otherwise the mixer changes the masks and receives gradients."""
    from omniseq.backbones.separators import TCNMasker

    torch.manual_seed(0)
    hybrid = TCNMasker(16, dim=8, hidden=16, layers=2, stacks=2, mixer=mixer, num_heads=2).double()
    plain = TCNMasker(16, dim=8, hidden=16, layers=2, stacks=2, mixer=None).double()
    assert len(hybrid.mixers) == 2 and all(len(stack) == 1 for stack in hybrid.mixers)
    plain.load_state_dict(hybrid.state_dict(), strict=False)
    feats = torch.randn(2, 40, 16, dtype=torch.float64)
    hybrid(feats).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in hybrid.mixers.parameters())
    assert not torch.allclose(hybrid(feats), plain(feats))
    for block in (b for stack in hybrid.mixers for b in stack):
        for branch in (block.mixer, block.mlp):
            branch.register_forward_hook(lambda module, args, out: torch.zeros_like(out))
    torch.testing.assert_close(hybrid(feats), plain(feats), rtol=1e-12, atol=1e-12)


def test_tcn_separator_end_to_end_and_bad_options():
    torch.manual_seed(0)
    model = MaskSeparator(channels=16, masker="tcn", encoder_activation="none",
                          masker_options=dict(dim=8, hidden=16, layers=2, stacks=1, mixer="mamba"))
    assert model(torch.randn(2, 777)).shape == (2, 2, 777)
    from omniseq.backbones.separators import TCNMasker

    with pytest.raises(ValueError, match="kernel_size must be odd"):
        TCNMasker(16, kernel_size=4)


def test_tcn_masker_pooled_mixer_on_frames_constant_within_groups():
    """For frames constant within each group of ``mixer_pool`` (the last group short),
    pooling is exact, so the pooled path is the mixer blocks on the groups, repeated."""
    from omniseq.backbones.separators import TCNMasker

    torch.manual_seed(0)
    masker = TCNMasker(16, dim=8, hidden=16, layers=1, stacks=1, mixer="mamba", mixer_pool=4).double()
    groups = torch.randn(2, 11, 8, dtype=torch.float64)
    frames = groups.repeat_interleave(4, dim=1)[:, :42]
    expected = masker.mixers[0](groups).repeat_interleave(4, dim=1)[:, :42]
    torch.testing.assert_close(masker._mix(masker.mixers[0], frames), expected, rtol=1e-10, atol=1e-12)
    assert masker(torch.randn(2, 42, 16, dtype=torch.float64)).shape == (2, 2, 42, 16)
    with pytest.raises(ValueError, match="mixer_pool >= 1"):
        TCNMasker(16, mixer_pool=0)
