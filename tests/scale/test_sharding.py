"""The shared loaders under several processes, without starting any: each rank's
training shard, the global batch, mid-epoch resume and the unpadded evaluation shards.

The rank and world size come from a stand-in trainer; the oracle is the
single-process loader of the same seed with the same global batch.
"""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch.utils.data import Dataset

from omniseq.data.loaders import ResumableDataModuleMixin, ResumableSampler


class Indices(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


class IndexData(ResumableDataModuleMixin):
    def __init__(self, batch_size: int, train: int = 22, val: int = 7, seed: int = 3) -> None:
        super().__init__()
        self.batch_size, self.num_workers, self.seed = batch_size, 0, seed
        self.datasets = {"train": Indices(train), "val": Indices(val), "test": Indices(val)}

    def setup(self, stage: str | None = None) -> None:
        pass  # the splits exist from the start


def on_rank(data: IndexData, rank: int, world: int, strategy=None) -> IndexData:
    data.trainer = SimpleNamespace(global_rank=rank, world_size=world, strategy=strategy)
    return data


def epoch_batches(loader, epoch: int) -> list[list[int]]:
    loader.sampler.set_epoch(epoch)  # what Lightning does at every epoch start
    return [batch.tolist() for batch in loader]


def rank_batches(world: int, batch_size: int, epoch: int, **data_options) -> list[list[list[int]]]:
    return [epoch_batches(on_rank(IndexData(batch_size, **data_options), r, world).train_dataloader(), epoch)
            for r in range(world)]


@pytest.mark.parametrize("world", [2, 3])
def test_rank_batches_together_are_the_single_process_global_batches(world):
    for epoch in (0, 1):
        (single,) = rank_batches(1, 2 * world, epoch)
        ranks = rank_batches(world, 2, epoch)
        assert all(len(r) == len(single) == 22 // (2 * world) for r in ranks)  # same steps per epoch
        for step, global_batch in enumerate(single):
            parts = [ranks[r][step] for r in range(world)]
            assert sorted(sum(parts, [])) == sorted(global_batch)
        seen = [i for r in ranks for b in r for i in b]
        assert len(seen) == len(set(seen))  # shards are disjoint
    assert rank_batches(1, 4, 0) != rank_batches(1, 4, 1)  # reshuffled per epoch


def test_single_process_order_is_unchanged_by_sharding():
    # Old checkpoints and published runs replay the same order: (seed, epoch) -> randperm.
    sampler = ResumableSampler(10, seed=5)
    sampler.set_epoch(2)
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(5 * 1_000_003 + 2)).tolist()
    assert list(sampler) == expected and len(sampler) == 10


def test_resume_mid_epoch_on_every_rank_continues_the_uninterrupted_batches():
    world, batch_size = 2, 2
    straight = rank_batches(world, batch_size, epoch=1)
    for rank in range(world):
        data = on_rank(IndexData(batch_size), rank, world)
        data.load_state_dict({"epoch": 1, "batches_done": 2, "global_batch_size": batch_size * world})
        loader = data.train_dataloader()
        assert len(loader) == len(straight[rank])  # Lightning checks its restored counter against this
        assert [b.tolist() for b in loader] == straight[rank][2:]
        assert epoch_batches(loader, 2) == rank_batches(world, batch_size, epoch=2)[rank]  # skip ends with the epoch


def test_resume_mid_epoch_with_another_global_batch_is_refused():
    data = on_rank(IndexData(batch_size=2), 0, 2)
    data.load_state_dict({"epoch": 0, "batches_done": 1, "global_batch_size": 8})
    with pytest.raises(ValueError, match=r"global batch of 8 .* 2 x 2 = 4"):
        data.train_dataloader()
    # the same global batch from another split of devices is fine: 1 x 4 -> 2 x 2
    data.load_state_dict({"epoch": 0, "batches_done": 1, "global_batch_size": 4})
    assert len(list(data.train_dataloader())) == 22 // 4 - 1


def test_eval_shards_are_unpadded_disjoint_and_cover_an_odd_split():
    shards = [[i for b in on_rank(IndexData(batch_size=2), r, 2).val_dataloader() for i in b.tolist()]
              for r in range(2)]
    assert shards == [[0, 2, 4, 6], [1, 3, 5]]
    with pytest.raises(ValueError, match="val split has 7 sample.*fewer than the 8 processes"):
        on_rank(IndexData(batch_size=1), 0, 8).val_dataloader()
    with pytest.raises(ValueError, match="fewer than one global batch of batch_size=4 x 8"):
        on_rank(IndexData(batch_size=4), 0, 8).train_dataloader()


def test_under_fsdp_every_rank_evaluates_the_whole_set_but_trains_on_its_shard():
    # FSDP gathers parameters in every forward: ranks must run the same evaluation batches.
    for rank in range(2):
        data = on_rank(IndexData(batch_size=2), rank, 2, strategy=FSDPStrategy())
        assert [i for b in data.val_dataloader() for i in b.tolist()] == list(range(7))
        assert len(data.train_dataloader()) == 22 // 4


def test_lightning_keeps_our_samplers_under_ddp():
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    assert trainer._accelerator_connector.is_distributed
    data = on_rank(IndexData(batch_size=2), 0, 2)
    for loader, shuffle in ((data.train_dataloader(), True), (data.val_dataloader(), False)):
        # Without a DistributedSampler of ours Lightning would inject its own (padding eval sets).
        assert trainer._data_connector._prepare_dataloader(loader, shuffle, mode=None) is loader
