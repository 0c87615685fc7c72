"""End-to-end forecasting recipe: CLI, real-data fit, save/load, exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from omniseq.backbones.mixers import get_mixer_class
from omniseq.recipes.cli import build_cli, list_recipes, main, resolve_config_args
from tests.conftest import shared_dataset
from tests.recipes.resume_helpers import assert_resume_is_exact

TINY_BACKBONE = ["--model.backbone.d_model", "16", "--model.backbone.d_ff", "16"]


def tiny_args(tmp_path: Path, *extra: str) -> list[str]:
    """The demo recipe shrunk to seconds: small model, few batches, files under tmp_path."""
    return [
        "--config", "forecasting/demo_itransformer",
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.max_time", "null",
        "--trainer.enable_progress_bar", "false",
        "--data.seq_len", "48",
        "--data.pred_len", "24",
        "--data.batch_size", "16",
        *TINY_BACKBONE,
        *extra,
    ]


def test_every_packaged_recipe_resolves_and_parses(tmp_path):
    recipes = list_recipes()
    assert "forecasting/etth1_itransformer_96" in recipes
    for recipe in recipes:
        args = resolve_config_args(["--config", recipe])
        assert Path(args[1]).is_file()


def test_unknown_recipe_names_the_choices():
    with pytest.raises(SystemExit, match="etth1_itransformer_96"):
        resolve_config_args(["--config", "forecasting/nope"])


def test_backbone_follows_data_lengths_and_mixer_override(tmp_path):
    cli = build_cli(
        ["--config", str(resolve_config_args(["--config", "forecasting/demo_itransformer"])[1]),
         "--data.seq_len", "72", "--data.pred_len", "12", "--model.backbone.mixer", "gla"],
        run=False,
    )
    backbone = cli.model.backbone
    assert (backbone.seq_len, backbone.pred_len) == (72, 12)
    out = backbone(torch.randn(2, 72, 3))
    assert out.shape == (2, 12, 3)
    assert all(isinstance(b.mixer, get_mixer_class("gla")) for b in backbone.blocks)


def test_list_prints_mixers_recipes_and_datasets(capsys):
    main(["list"])
    out = capsys.readouterr().out
    for name in ("gla", "mamba", "s5", "etth1_itransformer_96", "ETTh1"):
        assert name in out


@pytest.mark.slow
def test_fit_killed_mid_epoch_resumes_to_identical_metrics(tmp_path):
    # 2 epochs of 60 batches and a step checkpoint every 50 steps (the recipe saves every
    # 5 training minutes, which a seconds-long fit never reaches): the kill lands at step
    # 110, mid second epoch; last.ckpt is from step 100.
    budget = ["--trainer.max_epochs", "2", "--trainer.limit_train_batches", "60",
              "--trainer.limit_val_batches", "5", "--trainer.limit_test_batches", "5"]
    metrics = assert_resume_is_exact(tmp_path, lambda root: tiny_args(root, *budget), kill_step=110,
                                     checkpoint_every=50)
    assert {"test/mse", "test/mae", "val/loss"} <= set(metrics)


def etth1_cli(tmp_path: Path, *extra: str):
    path = shared_dataset("ett/ETTh1.csv")
    args = ["--config", resolve_config_args(["--config", "forecasting/etth1_itransformer_96"])[1],
            "--data.path", str(path), "--trainer.default_root_dir", str(tmp_path),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            *TINY_BACKBONE, *extra]
    return build_cli(args, run=False)


def validation_mse(model, datamodule, batches: int) -> float:
    datamodule.setup("fit")
    model.eval()
    losses = []
    with torch.no_grad():
        for i, batch in enumerate(datamodule.val_dataloader()):
            if i == batches:
                break
            losses.append(torch.mean((model(batch["x"], batch["x_mark"]) - batch["y"]) ** 2))
    model.train()
    return torch.stack(losses).mean().item()


@pytest.mark.slow
def test_short_fit_on_etth1_lowers_validation_loss(tmp_path):
    cli = etth1_cli(tmp_path, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "60", "--model.lr", "1e-3",
                    "--trainer.limit_val_batches", "20")
    before = validation_mse(cli.model, cli.datamodule, batches=20)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    after = validation_mse(cli.model, cli.datamodule, batches=20)
    assert after < 0.9 * before


@pytest.mark.slow
def test_checkpoint_round_trip_gives_identical_predictions(tmp_path):
    from omniseq.recipes.forecasting import ForecastingTask

    cli = etth1_cli(tmp_path, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "5",
                    "--trainer.limit_val_batches", "2")
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    path = tmp_path / "model.ckpt"
    cli.trainer.save_checkpoint(path)
    loaded = ForecastingTask.load_from_checkpoint(path)
    batch = next(iter(cli.datamodule.test_dataloader()))
    cli.model.eval()
    loaded.eval()
    with torch.no_grad():
        expected = cli.model(batch["x"], batch["x_mark"])
        got = loaded(batch["x"], batch["x_mark"])
    assert type(loaded.backbone) is type(cli.model.backbone)
    assert torch.equal(got, expected)


def _tslib_type1(lr: float, epochs: int) -> list[float]:
    """TSLib's ``adjust_learning_rate(optimizer, epoch + 1, args)`` with ``lradj='type1'``,
    restated: after 1-based epoch e it sets ``lr * 0.5 ** ((e - 1) // 1)`` for the next one."""
    rates = [lr]
    for epoch in range(1, epochs):
        rates.append(lr * 0.5 ** ((epoch - 1) // 1))
    return rates


def test_lr_decay_half_is_tslib_type1_schedule():
    from omniseq.backbones.tsmixer import TSMixer
    from omniseq.recipes.forecasting import ForecastingTask

    task = ForecastingTask(TSMixer(8, 4, 2, ff_dim=4), lr=1e-4, lr_decay=0.5)
    config = task.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()  # Lightning steps an "epoch" scheduler after each epoch
    assert rates == pytest.approx(_tslib_type1(1e-4, 6), rel=1e-12)
    assert rates[:3] == pytest.approx([1e-4, 1e-4, 5e-5])
