"""FSDP that shards, and optionally recomputes, omniseq's residual blocks.

Lightning's FSDP with no wrap policy makes the whole model one unit: every
parameter is gathered at once, which saves no memory. ``BlockFSDPStrategy``
names the blocks every backbone is stacked from, so each block is its own
FSDP unit (gathered just before it runs, freed just after) and, with
``checkpoint_blocks=True``, its activations are recomputed in the backward
pass instead of being stored.

    omniseq fit --config ... --trainer.strategy fsdp_blocks --trainer.devices 8
    omniseq fit --config ... --trainer.strategy fsdp_blocks_checkpointed ...
    # or, with options:
    trainer:
      strategy:
        class_path: omniseq.recipes.strategies.BlockFSDPStrategy
        init_args: {checkpoint_blocks: true, sharding_strategy: SHARD_GRAD_OP}
"""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch.strategies import FSDPStrategy, StrategyRegistry
from lightning.pytorch.strategies.fsdp import _setup_activation_checkpointing
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel

from omniseq.backbones.blocks import Block
from omniseq.backbones.convs5 import ConvS5Block
from omniseq.backbones.tsmixer import TSMixerBlock
from omniseq.backbones.vit import MixerOnlyBlock

__all__ = ["BLOCK_CLASSES", "BlockFSDPStrategy"]

# The repeated units of every backbone: Block (iTransformer, ViT/DeiT/ViG, Swin and
# ViG-H stages, DNA models, dual-path separators, SaShiMi), MixerOnlyBlock (Vim),
# ConvS5Block, TSMixerBlock.
BLOCK_CLASSES: tuple[type[nn.Module], ...] = (Block, MixerOnlyBlock, ConvS5Block, TSMixerBlock)

ShardingName = Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD"]


class BlockFSDPStrategy(FSDPStrategy):
    """``FSDPStrategy`` whose auto-wrap policy (and activation-checkpointing policy, when
    ``checkpoint_blocks``) is :data:`BLOCK_CLASSES`.

    Args:
        checkpoint_blocks: recompute each block's activations in backward.
        sharding_strategy: FSDP's (``FULL_SHARD`` = ZeRO-3, ``SHARD_GRAD_OP`` = ZeRO-2, ...).
        state_dict_type: ``full`` (one ordinary checkpoint file, gathered on rank 0)
            or ``sharded`` (a folder of per-rank shards; faster for large models).
        cpu_offload: keep parameters and gradients in CPU memory between uses.
        **kwargs: any other ``FSDPStrategy`` / ``FullyShardedDataParallel`` option.
    """

    def __init__(
        self,
        checkpoint_blocks: bool = False,
        sharding_strategy: ShardingName = "FULL_SHARD",
        state_dict_type: Literal["full", "sharded"] = "full",
        cpu_offload: bool = False,
        **kwargs: Any,
    ) -> None:
        blocks = set(BLOCK_CLASSES)
        super().__init__(
            auto_wrap_policy=blocks,
            activation_checkpointing_policy=blocks if checkpoint_blocks else None,
            sharding_strategy=sharding_strategy,
            state_dict_type=state_dict_type,
            cpu_offload=cpu_offload,
            **kwargs,
        )
        self.checkpoint_blocks = checkpoint_blocks

    def _setup_model(self, model: nn.Module) -> nn.Module:
        if self.root_device.type != "cpu" or any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            return super()._setup_model(model)
        # CPU processes (gloo; tests, debugging): Lightning hands FSDP the device
        # index, None on a CPU, and FSDP then looks for an accelerator and fails;
        # naming the CPU device itself is all FSDP needs.
        model = FullyShardedDataParallel(
            module=model, cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy, device_id=self.root_device, **self.kwargs,
        )
        _setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
        return model


def register_block_strategies() -> None:
    """``--trainer.strategy fsdp_blocks`` / ``fsdp_blocks_checkpointed``."""
    for name, checkpoint, what in (
        ("fsdp_blocks", False, "FSDP with one unit per omniseq block"),
        ("fsdp_blocks_checkpointed", True, "FSDP with one unit per omniseq block, activations recomputed"),
    ):
        if name not in StrategyRegistry:
            StrategyRegistry.register(name, BlockFSDPStrategy, description=what, checkpoint_blocks=checkpoint)


register_block_strategies()
