"""The recipes write ``last.ckpt`` by training time, not every 50 steps: a fit killed
after such a checkpoint still resumes exactly."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from omniseq.recipes.cli import list_recipes, resolve_config
from tests.recipes.resume_helpers import assert_resume_is_exact


@pytest.mark.parametrize("recipe", list_recipes())
def test_every_recipe_saves_last_ckpt_by_time(recipe):
    callbacks = yaml.safe_load(Path(resolve_config(recipe)).read_text())["trainer"].get("callbacks") or []
    last = [cb["init_args"] for cb in callbacks
            if cb["class_path"].endswith("ModelCheckpoint") and cb["init_args"].get("save_last")]
    assert all("every_n_train_steps" not in args for args in last), recipe
    assert all(args.get("train_time_interval") == "0:05:00" for args in last), recipe


def test_a_time_based_last_ckpt_resumes_exactly(tmp_path):
    def args(root: Path) -> list[str]:
        return ["--config", "forecasting/demo_itransformer", "--trainer.default_root_dir", str(root),
                "--trainer.max_time", "null", "--trainer.enable_model_summary", "false",
                "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "6", "--trainer.limit_val_batches", "2",
                "--trainer.limit_test_batches", "2", "--trainer.log_every_n_steps", "1",
                "--data.seq_len", "48", "--data.pred_len", "24", "--data.batch_size", "16",
                "--model.backbone.d_model", "16", "--model.backbone.d_ff", "16",
                # The recipes' cadence shrunk to a millisecond: a checkpoint after (almost) every step.
                "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                "--trainer.callbacks.dirpath", str(root / "checkpoints"), "--trainer.callbacks.save_last", "true",
                "--trainer.callbacks.save_top_k", "0",
                "--trainer.callbacks.train_time_interval", str(timedelta(milliseconds=1))]

    metrics = assert_resume_is_exact(tmp_path, args, kill_step=9)
    assert metrics
