"""The shared residual block: branch structure and recurrent stepping."""

from __future__ import annotations

import pytest
import torch

from omniseq.backbones.blocks import Block


@pytest.mark.parametrize("prenorm", [True, False])
def test_mixer_only_block_is_one_residual_branch(prenorm):
    block = Block(16, mixer="gla", channel_mixer="none", prenorm=prenorm).double().eval()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    if prenorm:
        expected = x + block.mixer(block.norm1(x))
    else:
        expected = block.norm1(x + block.mixer(x))
    torch.testing.assert_close(block(x), expected, rtol=0, atol=0)
    assert not hasattr(block, "norm2") and not hasattr(block, "mlp")


def test_prenorm_block_matches_its_definition():
    block = Block(16, mixer="attention", num_heads=4, mlp_ratio=2.0).double().eval()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    h = x + block.mixer(block.norm1(x))
    torch.testing.assert_close(block(x), h + block.mlp(block.norm2(h)))


@pytest.mark.parametrize("mixer", ["gla", "mamba", "s4d", "s5", "attention"])
@pytest.mark.parametrize("channel_mixer", ["glu", "none"])
@pytest.mark.parametrize("prenorm", [True, False])
def test_causal_block_steps_equal_parallel(mixer, channel_mixer, prenorm):
    block = Block(
        16, mixer=mixer, causal=True, num_heads=4, channel_mixer=channel_mixer, prenorm=prenorm
    ).double().eval()
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    state = block.init_state(2, dtype=torch.float64)
    steps = []
    for t in range(x.shape[1]):
        y_t, state = block.step(x[:, t], state)
        steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps, 1), block(x), rtol=1e-9, atol=1e-10)


def test_unknown_channel_mixer_is_refused():
    with pytest.raises(ValueError, match="'mlp', 'glu' or 'swiglu'"):
        Block(8, mixer="gla", channel_mixer="conv")
