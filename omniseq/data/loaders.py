"""The loaders every DataModule shares: resumable mid-epoch, and sharded across processes.

Resuming: Lightning restores the loop counters from a mid-epoch checkpoint but
replays a plain DataLoader from its first batch. The DataModule records how
many batches of the current epoch were done (``ResumableDataModuleMixin.state_dict``)
and the sampler skips exactly those samples on resume. The per-epoch shuffle
order is derived from ``(seed, epoch)``, never from global RNG, so it is the
same in a resumed run as in an uninterrupted one.

Distributed (DDP/FSDP, any number of devices and nodes): the samplers shard by
the trainer's ``global_rank`` / ``world_size`` themselves. They are
``DistributedSampler`` subclasses, which is how Lightning recognises a loader
that is already sharded and leaves it alone (it would otherwise swap in its own
``DistributedSampler``, losing the resume position for training and padding the
evaluation sets with duplicated samples).

Evaluation under DDP takes unpadded shards (``rank::world_size``), so ranks may
run a different number of batches; that is safe because a DDP forward in
evaluation talks to no other process. Under strategies that gather parameters
inside every forward (FSDP, DeepSpeed, ModelParallel) uneven batch counts would
hang, so there every rank evaluates the whole set: the metrics (sums of counts
and errors, synced by torchmetrics) are then the same multiple of every
numerator and denominator, and their ratios exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def private_generator(seed: int) -> torch.Generator:
    """A DataLoader generator of its own: every new iterator draws a worker base
    seed, and drawing it from the global RNG would shift dropout masks whenever
    a resumed run creates iterators at other moments than the original run."""
    return torch.Generator().manual_seed(seed)


class ResumableSampler(DistributedSampler):
    """This process's share of a seeded per-epoch shuffle, with ``set_epoch`` (called
    by Lightning) and ``resume_at``.

    Every process draws the same permutation of ``(seed, epoch)``, cuts its tail to a
    multiple of ``num_replicas`` and takes positions ``rank::num_replicas``. Batch
    ``b`` of size ``B`` on every rank together are then exactly batch ``b`` of size
    ``B * num_replicas`` of a single process: the same global batches, the same
    number of steps per epoch (``N // (B * num_replicas)``), on any world size.
    """

    def __init__(
        self, num_samples: int, shuffle: bool = True, seed: int = 0, num_replicas: int = 1, rank: int = 0
    ) -> None:
        # drop_last: every rank gets N // num_replicas samples, none repeated.
        super().__init__(range(num_samples), num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=True)
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self._resume is not None and self._resume[0] != epoch:
            self._resume = None

    def resume_at(self, epoch: int, samples_done: int) -> None:
        """Skip the first ``samples_done`` samples (all ranks together) of epoch ``epoch`` only.

        The skip holds for every iterator made during that epoch: Lightning
        creates (and discards) more than one before training starts.
        """
        if samples_done % self.num_replicas:
            raise ValueError(f"samples_done={samples_done} must be a multiple of num_replicas={self.num_replicas}")
        self.epoch, self._resume = epoch, (epoch, samples_done)

    # __len__ is DistributedSampler's: this rank's full epoch, even while resuming,
    # because Lightning compares its restored batch counter against the loader's length.

    def __iter__(self) -> Iterator[int]:
        count = len(self.dataset)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(count, generator=generator).tolist()
        else:
            order = list(range(count))
        skip = self._resume[1] if self._resume and self._resume[0] == self.epoch else 0
        return iter(order[skip + self.rank : self.total_size : self.num_replicas])


class ResumableDataModuleMixin(L.LightningDataModule):
    """The loaders every omniseq DataModule shares, and the checkpointed position
    inside the training epoch.

    Subclasses set ``batch_size``, ``num_workers`` and ``seed`` and fill
    ``self.datasets`` (``"train"``, ``"val"``, ``"test"``) in an idempotent
    ``setup``. Training batches are shuffled per ``(seed, epoch)`` and drop the
    incomplete last batch; ``batch_size`` is per process, so the global batch is
    ``batch_size * world_size``. Evaluation loaders keep every sample, in order;
    under DDP each process takes the unpadded shard ``rank::world_size``, so no
    sample is counted twice or dropped (under FSDP each evaluates them all).
    """

    # Their forward is a collective: every rank must run the same evaluation batches.
    GATHERING_STRATEGIES = (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)

    _resume_position: dict[str, int] | None = None
    # A subclass may yield richer indices, e.g. ``(epoch, index)`` for per-epoch augmentation.
    train_sampler_class: type[ResumableSampler] = ResumableSampler
    eval_batch_size: int | None = None  # None: the training batch size
    test_split: str = "test"

    def split_dataset(self, name: str) -> Dataset:
        self.setup()
        return self.datasets[name]

    def process_grid(self) -> tuple[int, int]:
        """``(global_rank, world_size)`` of the attached trainer; ``(0, 1)`` without one."""
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        dataset = self.split_dataset("train")
        rank, world = self.process_grid()
        if len(dataset) < self.batch_size * world:
            raise ValueError(
                f"{type(self).__name__}: the training split has {len(dataset)} samples, fewer than one global "
                f"batch of batch_size={self.batch_size} x {world} process(es) (incomplete training batches are "
                f"dropped); lower batch_size"
            )
        return DataLoader(
            dataset, sampler=self.train_sampler(len(dataset), rank, world), batch_size=self.batch_size,
            drop_last=True, num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
            generator=private_generator(self.seed),
        )

    def eval_dataloader(self, name: str) -> DataLoader:
        dataset = self.split_dataset(name)
        rank, world = self.process_grid()
        if isinstance(getattr(self.trainer, "strategy", None), self.GATHERING_STRATEGIES):
            rank, world = 0, 1  # the whole set on every rank (see the module docstring)
        if len(dataset) < world:
            raise ValueError(
                f"{type(self).__name__}: the {name} split has {len(dataset)} sample(s), fewer than the {world} "
                f"processes; every process needs at least one (use fewer devices for this split)"
            )
        return DataLoader(
            dataset, sampler=UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False),
            batch_size=self.eval_batch_size or self.batch_size, drop_last=False,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
            generator=private_generator(self.seed),
        )

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader(self.test_split)

    def predict_dataloader(self) -> DataLoader:
        return self.eval_dataloader(self.test_split)

    def train_sampler(self, num_samples: int, rank: int = 0, world: int = 1) -> ResumableSampler:
        sampler = self.train_sampler_class(num_samples, shuffle=True, seed=self.seed, num_replicas=world, rank=rank)
        position, self._resume_position = self._resume_position, None
        if position is not None and position["batches_done"]:
            global_batch = self.batch_size * world
            saved = position.get("global_batch_size", global_batch)
            if saved != global_batch:
                raise ValueError(
                    f"{type(self).__name__}: the checkpoint stopped mid-epoch with a global batch of {saved} "
                    f"samples (batch_size x processes) but this run has {self.batch_size} x {world} = "
                    f"{global_batch}; resume with the same batch_size x devices x num_nodes, or from an "
                    f"end-of-epoch checkpoint"
                )
            sampler.resume_at(position["epoch"], position["batches_done"] * global_batch)
        elif position is not None:
            sampler.set_epoch(position["epoch"])
        return sampler

    def state_dict(self) -> dict[str, Any]:
        trainer = self.trainer
        if trainer is None:
            return {}
        # `processed` already counts the batch whose on_train_batch_end wrote this
        # checkpoint (`completed` does not yet); Lightning resumes after it too.
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        global_batch = self.batch_size * trainer.world_size
        # A checkpoint written at the end of an epoch starts the next one afresh.
        if done >= trainer.num_training_batches:
            return {"epoch": trainer.current_epoch + 1, "batches_done": 0, "global_batch_size": global_batch}
        return {"epoch": trainer.current_epoch, "batches_done": done, "global_batch_size": global_batch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self._resume_position = dict(state_dict)
