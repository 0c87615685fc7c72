"""The FSDP wrap policy names the blocks of every backbone, and its activation
checkpointing recomputes them with unchanged results (one process, no FSDP run;
tests/scale/test_ddp.py trains with it on two CPU processes)."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from lightning.pytorch.strategies import StrategyRegistry
from lightning.pytorch.strategies.fsdp import _setup_activation_checkpointing
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

from omniseq.backbones.convs5 import ConvS5
from omniseq.backbones.dna import DNAModel
from omniseq.backbones.itransformer import ITransformer
from omniseq.backbones.separators import MaskSeparator
from omniseq.backbones.tsmixer import TSMixer
from omniseq.recipes.cli import build_cli, resolve_config_args
from omniseq.recipes.strategies import BLOCK_CLASSES, BlockFSDPStrategy

# backbone, and how many blocks its configuration stacks (the oracle)
BACKBONES = {
    "itransformer": (lambda: ITransformer(seq_len=16, pred_len=8, d_model=8, d_ff=8, depth=3, num_heads=2), 3),
    "tsmixer": (lambda: TSMixer(seq_len=16, pred_len=8, num_channels=3, n_block=2, ff_dim=8), 2),
    "convs5": (lambda: ConvS5(in_channels=1, out_channels=1, pred_len=2, dim=4, state_dim=4, depth=2), 2),
    "dna_caduceus": (lambda: DNAModel(dim=8, depth=2, mixer_options={"d_state": 4}, rc_mode="ps"), 2),
    "dualpath": (lambda: MaskSeparator(num_sources=2, channels=8, masker="dualpath", masker_options={
        "dim": 8, "chunk_size": 10, "num_repeats": 2, "depth": 2, "mixer": "attention", "num_heads": 2}), 8),
    "vim": (lambda: timm.create_model("vim_tiny_patch16_224", depth=3, img_size=32, embed_dim=16), 3),
    "swin": (lambda: timm.create_model("omni_swin_tiny_patch4_window7_224", depths=(1, 2), num_heads=(1, 2),
                                       embed_dim=8, img_size=56), 3),
}


def wrapped_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    policy = BlockFSDPStrategy().kwargs["auto_wrap_policy"]
    return [m for m in policy._run_policy(model, ignored_modules=set(), root_kwargs={}) if m is not model]


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_policy_makes_every_block_its_own_fsdp_unit(name):
    build, blocks = BACKBONES[name]
    model = build()
    units = wrapped_units(model)
    assert len(units) == blocks
    assert all(isinstance(u, BLOCK_CLASSES) for u in units)
    # units are disjoint: a block nests no other wrapped block
    assert not any(a is not b and any(m is b for m in a.modules()) for a in units for b in units)


def test_activation_checkpointing_recomputes_blocks_with_unchanged_gradients():
    torch.manual_seed(0)
    model = ITransformer(seq_len=16, pred_len=8, d_model=8, d_ff=8, depth=2, num_heads=2, dropout=0.0)
    checkpointed = copy.deepcopy(model)
    _setup_activation_checkpointing(checkpointed, BlockFSDPStrategy(checkpoint_blocks=True)._activation_checkpointing_kwargs)
    assert [type(b) for b in checkpointed.blocks] == [CheckpointWrapper, CheckpointWrapper]
    assert not any(isinstance(m, CheckpointWrapper) for m in model.modules())

    calls = []
    for block in checkpointed.blocks:
        # a pre-hook: the recomputation stops as soon as it has what backward needs
        block._checkpoint_wrapped_module.register_forward_pre_hook(lambda *_: calls.append(1))
    x = torch.randn(3, 16, 4)
    expected, got = model(x), checkpointed(x)
    assert len(calls) == 2
    expected.square().mean().backward()
    got.square().mean().backward()
    assert len(calls) == 4  # each block ran again in backward instead of keeping its activations
    torch.testing.assert_close(got, expected)
    plain = dict(model.named_parameters())
    for name, param in checkpointed.named_parameters():
        torch.testing.assert_close(param.grad, plain[name.replace("._checkpoint_wrapped_module", "")].grad)


def test_cli_names_the_block_strategies():
    assert {"fsdp_blocks", "fsdp_blocks_checkpointed"} <= set(StrategyRegistry)
    config = resolve_config_args(["--config", "forecasting/demo_itransformer"])[1]
    cpu2 = ["--trainer.accelerator", "cpu", "--trainer.devices", "2"]
    cli = build_cli(["--config", config, *cpu2, "--trainer.strategy", "fsdp_blocks_checkpointed"], run=False)
    strategy = cli.trainer.strategy
    assert isinstance(strategy, BlockFSDPStrategy) and strategy.checkpoint_blocks
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == set(BLOCK_CLASSES)
    cli = build_cli(["--config", config, *cpu2, "--trainer.strategy", "omniseq.recipes.strategies.BlockFSDPStrategy",
                     "--trainer.strategy.sharding_strategy", "SHARD_GRAD_OP"], run=False)
    assert isinstance(cli.trainer.strategy, BlockFSDPStrategy) and not cli.trainer.strategy.checkpoint_blocks
    assert cli.trainer.strategy.sharding_strategy.name == "SHARD_GRAD_OP"
