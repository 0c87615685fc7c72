"""Two CPU processes (DDP or FSDP over gloo) give the results of one process.

Each recipe runs through the real CLI (``python -m omniseq.recipes.cli``; Lightning
starts the second process itself) with the same seed and the same global batch:
one process with batch 4 against two with batch 2 each. The configs have no
dropout, no random augmentation and no random masking (those draw different
numbers in each process) and losses that are means over equal-sized per-rank
batches, so both runs take the same steps up to float32 summation order.
Validation and test sets have odd sizes (7, 37, 3, 5, 21), so a sample padded
in twice or dropped would move a metric far beyond the tolerance.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ddp_cpu")]

ONE = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--data.batch_size", "4"]
DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
       "--data.batch_size", "2"]
FSDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "fsdp_blocks_checkpointed",
        "--data.batch_size", "2"]
QUIET = ["--trainer.max_time", "null", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "1", "--trainer.max_epochs", "1"]
RTOL = 2e-4  # float32 sums taken in another order, through three optimiser steps


def omniseq(subcommand: str, root: Path, recipe: list[str], *extra: str) -> dict:
    """Run the CLI; return ``{"train/loss": [per step], key: last value}`` from its CSV log."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    args = [*recipe, *QUIET, "--trainer.default_root_dir", str(root), *extra]
    # A session of its own, so a hang takes the second rank down with the first.
    proc = subprocess.Popen([sys.executable, "-m", "omniseq.recipes.cli", subcommand, *args], cwd=root.parent,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"omniseq {subcommand} {' '.join(extra)} did not finish in 240 s")
    assert proc.returncode == 0, stderr[-4000:]
    logged: dict = {"train/loss": []}
    for path in sorted(root.glob("logs/*/metrics.csv")):
        for row in csv.DictReader(open(path)):
            for key, value in row.items():
                if value and key == "train/loss":
                    logged[key].append(float(value))
                elif value and key.split("/")[0] in ("val", "test"):
                    logged[key] = float(value)
    return logged


def weights(root: Path) -> torch.Tensor:
    state = torch.load(root / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    return torch.cat([state[k].flatten().double() for k in sorted(state)])


def assert_same_run(one: dict, many: dict, root_one: Path, root_many: Path) -> None:
    assert set(many) == set(one) and len(one["train/loss"]) >= 2
    for key in one:  # the loss of every step (the global batch's), validation and test metrics
        assert many[key] == pytest.approx(one[key], rel=RTOL, abs=1e-6), key
    # The weights as a whole: element by element would not do, because Adam scales
    # gradients that are zero up to rounding (attention key biases, to which softmax
    # is blind) into full-size steps of either sign; different global batches would
    # differ by ~1e-1 here.
    expected, got = weights(root_one), weights(root_many)
    assert got.shape == expected.shape
    assert (got - expected).norm() / expected.norm() < 1e-4


FORECASTING = [
    "--config", "forecasting/demo_itransformer",
    "--data.seq_len", "48", "--data.pred_len", "24",
    "--data.synthetic", "{n_rows: 300, n_channels: 3}",  # 139 train, 7 val, 37 test windows
    "--model.backbone.d_model", "16", "--model.backbone.d_ff", "16", "--model.backbone.num_heads", "2",
    "--model.backbone.dropout", "0.0", "--model.lr", "0.003",
    "--trainer.limit_train_batches", "3",
]


@pytest.fixture(scope="module")
def forecasting_one(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("forecasting") / "one"
    return root, omniseq("fit", root, FORECASTING, *ONE)


def test_forecasting_ddp_fit_equals_one_process(forecasting_one, tmp_path):
    root_one, one = forecasting_one
    many = omniseq("fit", tmp_path / "ddp", FORECASTING, *DDP)
    assert {"val/loss", "val/mse", "val/mae", "test/mse", "test/mae"} <= set(one)
    assert_same_run(one, many, root_one, tmp_path / "ddp")


def test_forecasting_fsdp_with_block_policy_equals_one_process(forecasting_one, tmp_path):
    # Blocks as FSDP units with activation checkpointing; every rank evaluates the
    # whole (odd-sized) sets; the gathered checkpoint holds the weights one process reaches.
    root_one, one = forecasting_one
    many = omniseq("fit", tmp_path / "fsdp", FORECASTING, *FSDP)
    assert_same_run(one, many, root_one, tmp_path / "fsdp")


def test_ddp_test_of_one_checkpoint_is_exact(forecasting_one, tmp_path):
    # 37 test windows over 2 processes: unpadded shards of 19 and 18, metrics summed
    # over both. The same weights, so only the summation order may differ.
    root_one, one = forecasting_one
    ckpt = str(root_one / "checkpoints" / "best.ckpt")
    tested = omniseq("test", tmp_path / "test", FORECASTING, *DDP, "--ckpt_path", ckpt)
    assert set(tested) == {"train/loss", "test/mse", "test/mae"}
    for key in ("test/mse", "test/mae"):
        assert tested[key] == pytest.approx(one[key], rel=1e-6), key


def test_ddp_validate_of_mlm_perplexity_is_exact(tmp_path):
    # 7 held-out windows; per-window masks and token sums added over processes.
    pretrain = ["--config", "genomics/demo_pretrain", "--data.seq_len", "64", "--data.train_windows", "16",
                "--data.val_windows", "7", "--data.synthetic_length", "20000", "--model.backbone.dim", "16"]
    one = omniseq("validate", tmp_path / "one", pretrain, *ONE)
    many = omniseq("validate", tmp_path / "ddp", pretrain, *DDP)
    assert set(one) == set(many) == {"train/loss", "val/loss", "val/ppl"}
    for key in ("val/loss", "val/ppl"):
        assert many[key] == pytest.approx(one[key], rel=1e-6), key


DOMAINS = {
    "segmentation": [
        "--config", "segmentation/demo_synthetic_vig",
        "--data.synthetic", "{n: 10, size: 32}",  # 5 training images, 3 validation, 5 test (none trained on)
        "--data.train_indices", "0-4", "--data.val_indices", "5-7", "--data.test_indices", "5-9",
        "--data.crop_size", "[32, 32]", "--data.augment", "false", "--data.samples_per_epoch", "12",
        "--model.backbone.backbone_options", "{depth: 2, img_size: 32}", "--model.window", "[32, 32]",
        "--model.dice_weight", "0.0",  # Dice pools over the batch: not a mean of per-rank values
        "--model.warmup_steps", "1",
    ],
    "separation": [
        "--config", "separation/demo_dualpath",
        "--data.segment_seconds", "0.25", "--data.eval_segment_seconds", "0.25",
        "--data.num_train", "12", "--data.num_val", "7", "--data.num_test", "5",
        "--model.backbone.channels", "16",
        "--model.backbone.masker_options",
        "{dim: 16, chunk_size: 20, num_repeats: 1, depth: 1, mixer: attention, num_heads: 2}",
    ],
    "genomics": [
        "--config", "genomics/demo_classify",
        "--data.synthetic", "{n: 21, length: 24}",  # 21 sequences in each split
        "--model.backbone.dim", "16", "--model.head_dropout", "0.0", "--model.warmup_steps", "1",
        "--trainer.limit_train_batches", "3",
    ],
}


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_domain_ddp_fit_equals_one_process(domain, tmp_path):
    one = omniseq("fit", tmp_path / "one", DOMAINS[domain], *ONE)
    many = omniseq("fit", tmp_path / "ddp", DOMAINS[domain], *DDP)
    assert "val/loss" in one and any(k.startswith("test/") for k in one)
    assert_same_run(one, many, tmp_path / "one", tmp_path / "ddp")
