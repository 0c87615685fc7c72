"""Every domain's recipe, SIGKILLed mid-epoch and resumed with ``--ckpt_path last``,
ends with the same validation and test metrics as an uninterrupted fit.

Each recipe is its built-in synthetic demo shrunk to seconds; the kill lands in
the second epoch, after a step checkpoint written inside that epoch, so the
resumed fit depends on the restored sampler position, RNG states and every
per-sample random draw of the data pipeline (crops, flips, mixtures, masks).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from omniseq.data.segmentation import SegmentationDataModule
from tests.recipes.resume_helpers import assert_resume_is_exact


def recipe(name: str, *overrides: str):
    """CLI arguments of recipe ``name`` writing under a root, with short-run settings."""

    def args(root: Path) -> list[str]:
        return ["--config", name, "--trainer.default_root_dir", str(root), "--trainer.max_time", "null",
                "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                "--trainer.log_every_n_steps", "1", *overrides]

    return args


def test_segmentation_crops_are_drawn_from_seed_epoch_and_index():
    def data(num_workers: int = 0) -> SegmentationDataModule:
        return SegmentationDataModule(synthetic={"n": 4, "size": 32}, crop_size=(16, 16), samples_per_epoch=8,
                                      batch_size=4, elastic=True, num_workers=num_workers)

    crops = data().split_dataset("train")
    # Fresh augmentation every epoch, the same for a given (epoch, index) whatever was drawn before.
    assert not torch.equal(crops[(0, 3)]["image"], crops[(1, 3)]["image"])
    assert torch.equal(crops[(1, 3)]["image"], data().split_dataset("train")[(1, 3)]["image"])
    # Persistent workers see the epoch too: epoch 1's batches equal those items drawn directly.
    loader = data(num_workers=2).train_dataloader()
    loader.sampler.set_epoch(1)
    order, batches = list(loader.sampler), list(loader)
    assert all(epoch == 1 for epoch, _ in order)
    expected = torch.stack([crops[item]["image"] for item in order[:4]])
    assert torch.equal(batches[0]["image"], expected)


@pytest.mark.slow
def test_segmentation_resumes_exactly(tmp_path):
    # 6 crop batches per epoch (flips, rotations and elastic warps on): checkpoint at 8, kill at 10.
    args = recipe(
        "segmentation/demo_synthetic_vig", "--trainer.max_epochs", "2",
        "--data.synthetic", "{n: 6, size: 48}", "--data.crop_size", "[32, 32]", "--data.samples_per_epoch", "12",
        "--data.batch_size", "2", "--data.elastic", "true",
        "--model.backbone.backbone_options", "{depth: 2}",  # window and img_size follow the 32x32 crop
    )
    metrics = assert_resume_is_exact(tmp_path, args, kill_step=10, checkpoint_every=4)
    assert {"val/miou", "test/miou", "test/dice"} <= set(metrics)


@pytest.mark.slow
def test_separation_resumes_exactly(tmp_path):
    # On-the-fly mixtures of the synthetic voices: 8 batches per epoch, checkpoint at 12, kill at 14.
    args = recipe(
        "separation/demo_dualpath", "--trainer.max_epochs", "2", "--data.segment_seconds", "0.25",
        "--data.eval_segment_seconds", "0.25", "--data.num_train", "16", "--data.num_val", "4",
        "--data.num_test", "4", "--data.batch_size", "2",
        "--model.backbone.channels", "16", "--model.backbone.masker_options",
        "{dim: 16, chunk_size: 25, num_repeats: 1, depth: 1, mixer: attention, num_heads: 2}",
    )
    metrics = assert_resume_is_exact(tmp_path, args, kill_step=14, checkpoint_every=6)
    assert {"val/loss", "test/si_snri", "test/sdri"} <= set(metrics)


@pytest.mark.slow
def test_dna_pretraining_resumes_exactly(tmp_path):
    # Masked-LM with reverse-complement augmentation: 8 batches per epoch, checkpoint at 12, kill at 14.
    args = recipe(
        "genomics/demo_pretrain", "--trainer.max_epochs", "2", "--data.synthetic_length", "8000",
        "--data.seq_len", "64", "--data.train_windows", "32", "--data.val_windows", "8", "--data.batch_size", "4",
        "--model.backbone.dim", "16", "--trainer.val_check_interval", "8",  # the recipe's 25 > these 16 steps
    )
    metrics = assert_resume_is_exact(tmp_path, args, kill_step=14, checkpoint_every=6)
    assert {"val/loss", "test/ppl"} <= set(metrics)


@pytest.mark.slow
def test_dna_classification_resumes_exactly(tmp_path):
    # Motif task with reverse-complement augmentation and head dropout: 8 batches per epoch.
    args = recipe(
        "genomics/demo_classify", "--trainer.max_epochs", "2", "--data.synthetic", "{n: 32, length: 40}",
        "--data.batch_size", "4", "--model.rc_augment", "true", "--model.backbone.dim", "16",
    )
    metrics = assert_resume_is_exact(tmp_path, args, kill_step=14, checkpoint_every=6)
    assert {"val/mcc", "test/mcc", "test/f1"} <= set(metrics)


@pytest.mark.slow
def test_spatiotemporal_convs5_resumes_exactly(tmp_path):
    # ConvS5 (dropout on) on the synthetic gridded fields, 8 batches per epoch.
    args = recipe(
        "spatiotemporal/demo_convs5", "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "8",
        "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2", "--data.seq_len", "8",
        "--data.pred_len", "2", "--data.batch_size", "4", "--model.backbone.dim", "8",
        "--model.backbone.state_dim", "8",
    )
    metrics = assert_resume_is_exact(tmp_path, args, kill_step=14, checkpoint_every=6)
    assert {"val/loss", "test/mse"} <= set(metrics)
