"""TSMixer's feature mixing through narrow_mlp equals the block's former module forward:
outputs, dropout masks (the same random stream) and gradients, in training and evaluation."""

from __future__ import annotations

import pytest
import torch

from omniseq.backbones.tsmixer import TSMixer, TSMixerBlock

L, H, C = 24, 8, 7


def _module_forward(block: TSMixerBlock, x: torch.Tensor) -> torch.Tensor:
    """The block's forward before narrow_mlp: every layer of ``feature_mlp`` called as a module."""
    x = x + block.time_drop(block.time_mixer(block.time_norm(x)))
    return x + block.feature_mlp(block.feature_norm(x))


def _run(model: TSMixer, x: torch.Tensor, blockwise, seed: int):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    h, stats = model.normalizer.normalize(x) if model.normalizer is not None else (x, None)
    for block in model.blocks:
        h = blockwise(block, h)
    y = model.temporal_projection(h.transpose(1, 2)).transpose(1, 2)
    if stats is not None:
        y = model.normalizer.denormalize(y, stats)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    return [y.detach()] + [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("options", [
    {"norm": "none", "use_norm": False, "mixer_options": {"hidden": 32}, "hidden_dropout": 0.0},  # TSLib's
    {},  # the paper's: layer norm, RevIN, dropout in the hidden layer too
    {"norm": "batchnorm", "dropout": 0.5},
], ids=["tslib-layout", "paper", "batchnorm"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-11), (torch.float32, 2e-5)])
def test_block_forward_equals_the_module_forward(options, training, dtype, tol):
    torch.manual_seed(0)
    model = TSMixer(seq_len=L, pred_len=H, num_channels=C, ff_dim=48, dropout=options.pop("dropout", 0.3),
                    **options).to(dtype).train(training)
    x = torch.randn(5, L, C, dtype=dtype) * 3 + 1
    fast = _run(model, x, TSMixerBlock.__call__, seed=11)
    after_fast = torch.rand(4)
    modules = _run(model, x, _module_forward, seed=11)
    after_modules = torch.rand(4)
    assert torch.equal(after_fast, after_modules)  # both drew the same amount of randomness
    assert torch.equal(fast[0] == 0, modules[0] == 0)
    for got, want in zip(fast, modules, strict=True):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    # and the model's own forward is the fast one
    torch.manual_seed(11)
    torch.testing.assert_close(model(x), fast[0], rtol=tol, atol=tol)


def test_state_dict_keys_are_unchanged():
    """Checkpoints saved before the fast path load: the feature MLP keeps its Sequential keys."""
    keys = TSMixer(seq_len=L, pred_len=H, num_channels=C).blocks[0].state_dict().keys()
    assert {"feature_mlp.0.weight", "feature_mlp.0.bias", "feature_mlp.3.weight", "feature_mlp.3.bias"} <= set(keys)
