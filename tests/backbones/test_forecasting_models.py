"""iTransformer and TSMixer: shapes, mixer swaps, input checks, architectural properties."""

from __future__ import annotations

import pytest
import torch

from omniseq.backbones.itransformer import PAPER_CONFIGS, ITransformer, paper_config
from omniseq.backbones.tsmixer import TSMixer

B, L, H, C, F = 2, 48, 12, 5, 4


def _inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, L, C, generator=g, dtype=dtype)
    mark = torch.rand(B, L, F, generator=g, dtype=dtype) - 0.5
    return x, mark


def _small_itransformer(**kwargs) -> ITransformer:
    options = dict(seq_len=L, pred_len=H, d_model=32, d_ff=24, depth=2, num_heads=4, dropout=0.0)
    options.update(kwargs)
    return ITransformer(**options).eval()


# -- iTransformer ---------------------------------------------------------------------


@pytest.mark.parametrize("mixer", ["attention", "gla", "mamba", "s5", "mlp"])
def test_itransformer_shapes_with_swapped_mixers(mixer):
    model = _small_itransformer(mixer=mixer, num_channels=C, num_time_features=F)
    x, mark = _inputs()
    y = model(x, mark)
    assert y.shape == (B, H, C) and torch.isfinite(y).all()
    y.sum().backward()
    assert model.embedding.weight.grad is not None
    assert all(not block.mixer.causal for block in model.blocks)


def test_itransformer_time_features_are_extra_tokens():
    model = _small_itransformer()
    x, mark = _inputs()
    with_marks = model(x, mark)
    assert with_marks.shape == (B, H, C)
    assert not torch.allclose(with_marks, model(x))  # the calendar tokens do take part
    ignoring = _small_itransformer(use_time_features=False)
    ignoring.load_state_dict(model.state_dict())
    torch.testing.assert_close(ignoring(x, mark), model(x))


@pytest.mark.parametrize("use_marks", [False, True])
def test_itransformer_is_equivariant_to_permuting_variates(use_marks):
    # Attention over variate tokens has no notion of their order.
    model = _small_itransformer().double()
    x, mark = _inputs(torch.float64)
    mark = mark if use_marks else None
    perm = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(model(x[..., perm], mark), model(x, mark)[..., perm], rtol=1e-10, atol=1e-10)
    # A token MLP has per-position weights, so the same check must fail for it.
    ordered = _small_itransformer(mixer="mlp", num_channels=C, num_time_features=F if use_marks else 0)
    ordered = ordered.double()
    assert not torch.allclose(ordered(x[..., perm], mark), ordered(x, mark)[..., perm], atol=1e-6)


def test_itransformer_use_norm_makes_it_scale_and_shift_equivariant():
    model = _small_itransformer().double()
    x, _ = _inputs(torch.float64)
    x = x * 100  # keeps the eps in sqrt(var + eps) negligible
    scale = torch.tensor([1.0, 3.0, 0.5, 10.0, 2.0], dtype=torch.float64)
    shift = torch.tensor([5.0, -20.0, 0.0, 300.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(model(x * scale + shift), model(x) * scale + shift, rtol=1e-6, atol=1e-6)
    raw = _small_itransformer(use_norm=False).double()
    assert not torch.allclose(raw(x + 1000.0), raw(x) + 1000.0, atol=1.0)


def test_itransformer_parameter_count_at_the_etth1_config():
    cfg = paper_config("ETTh1", 96)
    assert cfg == dict(d_model=256, d_ff=256, depth=2)
    model = ITransformer(seq_len=96, pred_len=96, **cfg)
    d, d_ff, depth, L_in, H_out = 256, 256, 2, 96, 96
    embedding = L_in * d + d
    attention = 4 * (d * d + d)  # q, k, v and output projections
    mlp = (d * d_ff + d_ff) + (d_ff * d + d)
    norms = 2 * (2 * d)
    block = attention + mlp + norms
    expected = embedding + depth * block + 2 * d + (d * H_out + H_out)
    assert sum(p.numel() for p in model.parameters()) == expected == 841_568
    assert set(PAPER_CONFIGS) == {"etth1", "etth2", "ettm1", "exchange_rate"}
    assert paper_config("etth1", 720)["d_model"] == 512
    with pytest.raises(ValueError, match="no iTransformer paper config"):
        paper_config("weather", 96)


def test_itransformer_rejects_bad_input():
    model = _small_itransformer(num_channels=C)
    x, mark = _inputs()
    with pytest.raises(ValueError, match=r"x must have shape \(B, 48, 5\), got \(48, 5\)"):
        model(x[0])
    with pytest.raises(ValueError, match=r"x must have shape \(B, 48, 5\), got \(2, 40, 5\)"):
        model(x[:, :40])
    with pytest.raises(ValueError, match=r"got \(2, 48, 4\)"):
        model(x[..., :4])
    bad = x.clone()
    bad[1, 7, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        model(bad)
    with pytest.raises(ValueError, match=r"x_mark must have shape \(B, 48, F\)"):
        model(x, mark[:, :10])
    with pytest.raises(ValueError, match="d_model must be positive"):
        ITransformer(seq_len=L, pred_len=H, d_model=0)


# -- TSMixer ----------------------------------------------------------------------------


@pytest.mark.parametrize("mixer", ["mlp", "attention", "gla", "s4d"])
def test_tsmixer_shapes_with_swapped_mixers(mixer):
    model = TSMixer(seq_len=L, pred_len=H, num_channels=C, ff_dim=16, mixer=mixer).eval()
    x, mark = _inputs()
    y = model(x, mark)
    assert y.shape == (B, H, C) and torch.isfinite(y).all()
    y.sum().backward()
    assert model.temporal_projection.weight.grad is not None


def test_tsmixer_time_mixing_is_the_papers_linear_layer():
    model = TSMixer(seq_len=L, pred_len=H, num_channels=C)
    fc = model.blocks[0].time_mixer.fc1
    assert (fc.in_features, fc.out_features) == (L, L)
    assert model.blocks[0].time_mixer.fc2 is None
    assert model.blocks[0].feature_mlp[0].out_features == 64


def test_tsmixer_revin_undoes_scale_and_shift():
    model = TSMixer(seq_len=L, pred_len=H, num_channels=C, ff_dim=16, dropout=0.0).double().eval()
    x, _ = _inputs(torch.float64)
    x = x * 100
    scale = torch.tensor([1.0, 3.0, 0.5, 10.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(model(x * scale + 7.0), model(x) * scale + 7.0, rtol=1e-6, atol=1e-6)


def test_tsmixer_batchnorm_and_errors():
    model = TSMixer(seq_len=L, pred_len=H, num_channels=C, norm="batchnorm")
    model.train()
    assert model(torch.randn(4, L, C)).shape == (4, H, C)
    with pytest.raises(ValueError, match="norm must be 'layernorm', 'batchnorm' or 'none'"):
        TSMixer(seq_len=L, pred_len=H, num_channels=C, norm="groupnorm")
    with pytest.raises(ValueError, match=r"x must have shape \(B, 48, 5\), got \(2, 48, 6\)"):
        model(torch.randn(2, L, 6))
    with pytest.raises(ValueError, match="NaN or inf"):
        model(torch.full((2, L, C), float("inf")))


def test_tsmixer_in_tslib_layout_equals_tslibs_resblock_formula():
    """``norm="none", use_norm=False, mixer_options={"hidden": d}, hidden_dropout=0`` is TSLib's
    TSMixer: ``x + Drop(W2 relu(W1 x^T))^T`` then ``x + Drop(V2 relu(V1 x))``, then the projection,
    with dropout on the branch outputs only."""
    torch.manual_seed(0)
    model = TSMixer(seq_len=L, pred_len=H, num_channels=C, ff_dim=12, mixer_options={"hidden": 20},
                    norm="none", use_norm=False, hidden_dropout=0.0).double().eval()
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0] == [0.1] * 4
    x, _ = _inputs(torch.float64)
    ref = x
    for block in model.blocks:
        t = block.time_mixer
        ref = ref + t.fc2(torch.relu(t.fc1(ref.transpose(1, 2)))).transpose(1, 2)
        f1, f2 = block.feature_mlp[0], block.feature_mlp[3]
        ref = ref + f2(torch.relu(f1(ref)))
    ref = model.temporal_projection(ref.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(model(x), ref, rtol=1e-12, atol=1e-12)


# -- PatchTST-style patch tokens ---------------------------------------------------------


@pytest.mark.parametrize("mixer", ["attention", "s5", "mlp"])
def test_patch_tokens_are_channel_independent(mixer):
    torch.manual_seed(0)
    model = ITransformer(48, 12, d_model=16, d_ff=16, num_heads=2, dropout=0.0, mixer=mixer,
                         tokens="patch", patch_len=8, patch_stride=4).eval()
    assert model.patches.num_patches == (48 + 4 - 8) // 4 + 1
    x = torch.randn(2, 48, 3)
    y = model(x)
    assert y.shape == (2, 12, 3)
    x2 = x.clone()
    x2[..., 1] = torch.randn(2, 48) * 10  # another channel changes...
    y2 = model(x2)
    torch.testing.assert_close(y2[..., [0, 2]], y[..., [0, 2]])  # ...the others' forecasts do not
    assert not torch.allclose(y2[..., 1], y[..., 1])
    # The same weights serve any channel count (channels fold into the batch).
    assert model(torch.randn(1, 48, 5)).shape == (1, 12, 5)


def test_patch_option_errors():
    with pytest.raises(ValueError, match="tokens must be 'variate' or 'patch'"):
        ITransformer(48, 12, tokens="pixels")
    with pytest.raises(ValueError, match="patch_len <= seq_len"):
        ITransformer(8, 4, tokens="patch", patch_len=16)
