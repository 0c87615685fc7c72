"""The separation recipe end to end through the CLI, checkpoint reload, and the Separator on it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Timer

from omniseq.api.separator import Separator
from omniseq.recipes.callbacks import CPUTimeBudget
from omniseq.recipes.cli import build_cli, resolve_config
from omniseq.recipes.separation import SeparationTask


@pytest.mark.slow
def test_demo_recipe_fits_tests_and_reloads(tmp_path):
    root = tmp_path / "run"
    build_cli([
        "fit", "--config", resolve_config("separation/demo_dualpath"),
        "--trainer.max_steps", "6", "--trainer.max_time", "null", "--trainer.val_check_interval", "3",
        "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "2", "--trainer.limit_test_batches", "2",
        "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
        "--data.init_args.num_train", "48",
    ])
    metrics = pd.read_csv(next((root / "logs").glob("version_*/metrics.csv")))
    for column in ("train/loss", "val/si_snri", "test/si_snri", "test/sdri"):
        assert metrics[column].notna().any(), column
    assert len(list((root / "mixture_lists").glob("test-*.csv"))) == 1
    best = root / "checkpoints" / "best.ckpt"
    task = SeparationTask.load_from_checkpoint(best, map_location="cpu")
    state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
    torch.testing.assert_close(task.state_dict()["backbone.encoder.conv.weight"], state["backbone.encoder.conv.weight"])
    separator = Separator.from_checkpoint(best)
    assert separator.sample_rate == 8000
    out = separator.separate(np.random.default_rng(0).standard_normal(9000).astype(np.float32) * 0.1)
    assert out.shape == (2, 9000)


@pytest.mark.parametrize("recipe", [
    "separation/fsdd_dualpath_attention", "separation/fsdd_dualpath_mamba", "separation/fsdd_dualpath_gla",
    "separation/fsdd_dualpath_s5", "separation/fsdd_dualpath_s4d", "separation/fsdd_sashimi", "separation/fsdd_convtasnet",
    "separation/fsdd_noisy_dualpath_attention", "separation/fsdd_dualpath_fsmn",
    "separation/fsdd_tcn_attention", "separation/fsdd_tcn_mamba",
])
def test_recipes_parse_and_build(recipe):
    cli = build_cli(["--config", resolve_config(recipe)], run=False)
    model = cli.model
    assert isinstance(model, SeparationTask)
    assert model(torch.randn(1, 800)).shape == (1, 2, 800)
    budgets = [c for c in cli.trainer.callbacks if isinstance(c, CPUTimeBudget)]
    assert len(budgets) == 1 and budgets[0].seconds == 30 * 60 and budgets[0].anneal_fraction == 0.5
    assert cli.trainer.fit_loop.max_epochs == 200


def _separation_benchmark():
    path = Path(__file__).parents[2] / "benchmarks" / "separation.py"
    spec = importlib.util.spec_from_file_location("separation_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("clock", ["cpu", "wall"])
def test_benchmark_replaces_the_recipe_budget(tmp_path, clock):
    config = _separation_benchmark().protocol_config("separation/fsdd_tcn_mamba", 2.5, clock, 0.25, tmp_path)
    cli = build_cli(["--config", str(config), "--trainer.default_root_dir", str(tmp_path)], run=False)
    budgets = [c for c in cli.trainer.callbacks if isinstance(c, CPUTimeBudget)]
    if clock == "cpu":
        assert len(budgets) == 1 and budgets[0].seconds == 150 and budgets[0].anneal_fraction == 0.25
    else:
        timers = [c for c in cli.trainer.callbacks if isinstance(c, Timer)]
        assert budgets == [] and len(timers) == 1 and timers[0]._duration == 150


