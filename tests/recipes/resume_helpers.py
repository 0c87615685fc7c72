"""Fault-tolerance test kit: kill ``omniseq fit`` mid-epoch, resume it, compare.

``assert_resume_is_exact`` runs one recipe three times: straight through, killed
by SIGKILL at a known global step (``KillAtStep``), and resumed from that run's
``last.ckpt`` with ``--ckpt_path last``; the resumed run must log the same
validation and test metrics as the straight one.

The three fits run in processes forked from one driver process
(``python -m tests.recipes.resume_helpers``) that has imported omniseq once:
each fit is still a process of its own that SIGKILL really ends, but the
seconds of importing torch, Lightning and timm are paid once per recipe, not
once per fit. The driver never computes anything itself, so no thread pool
exists when it forks.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.conftest import REPO_ROOT

EXACT = {"rel": 1e-6, "abs": 1e-9}


class KillAtStep(L.Callback):
    """SIGKILLs its own training process once ``global_step`` reaches ``step``,
    so the kill lands at a known point in the middle of an epoch instead of racing a timer."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class RecordResumePoint(L.Callback):
    """Writes where a fit starts training (global step, batch inside the epoch) to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_start(self, trainer, pl_module) -> None:
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        point = {"global_step": trainer.global_step, "epoch": trainer.current_epoch, "batch": progress.ready}
        Path(self.path).write_text(json.dumps(point))


def run_fits(runs: list[list[str]], cwd: Path) -> tuple[list[int], str]:
    """Run ``omniseq fit <args>`` for each argument list, in order, each in its own
    forked process; return the exit codes (``-9``: SIGKILLed) and the driver's output."""
    results = cwd / "exit_codes.json"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    driver = subprocess.run(
        [sys.executable, "-m", "tests.recipes.resume_helpers", str(results), json.dumps(runs)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )
    assert driver.returncode == 0, driver.stdout[-2000:] + driver.stderr[-3000:]
    return json.loads(results.read_text()), driver.stderr


def _fork_fit(args: list[str]) -> int:
    pid = os.fork()
    if pid == 0:  # the child: one fit, then leave without running the driver's exit handlers
        code = 0
        try:
            from omniseq.recipes.cli import main

            torch.set_num_threads(1)
            main(["fit", *args])
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def logged_metrics(root: Path, prefixes: tuple[str, ...] = ("val/", "test/")) -> dict[str, float]:
    """Last logged value of each metric under ``prefixes``, from the newest CSVLogger
    version under ``root`` (a resumed fit logs into a version of its own)."""
    files = sorted(root.rglob("metrics.csv"), key=lambda p: int(p.parent.name.removeprefix("version_")))
    values: dict[str, float] = {}
    with open(files[-1]) as f:
        for row in csv.DictReader(f):
            values.update({k: float(v) for k, v in row.items() if k.startswith(prefixes) and v})
    return values


def assert_resume_is_exact(
    tmp_path: Path, recipe_args: Callable[[Path], list[str]], kill_step: int, checkpoint_every: int | None = None
) -> dict[str, float]:
    """Fit straight, fit killed at ``kill_step``, resume the killed one; the resumed
    fit's last val/test metrics must equal the straight fit's. Returns those metrics.

    ``recipe_args(root)`` gives the CLI arguments of a fit writing under ``root``.
    ``checkpoint_every`` adds a ``ModelCheckpoint`` saving ``last.ckpt`` every that
    many steps (the recipes save every 50, too rarely for a short test run).
    """
    straight, killed = tmp_path / "straight", tmp_path / "killed"

    def fit_args(root: Path) -> list[str]:
        if checkpoint_every is None:
            return recipe_args(root)
        return [*recipe_args(root), "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                "--trainer.callbacks.dirpath", str(root / "checkpoints"), "--trainer.callbacks.save_last", "true",
                "--trainer.callbacks.save_top_k", "0", "--trainer.callbacks.every_n_train_steps", str(checkpoint_every)]

    kill = ["--trainer.callbacks+=tests.recipes.resume_helpers.KillAtStep", "--trainer.callbacks.step", str(kill_step)]
    resume_point = tmp_path / "resume_point.json"
    resume = ["--ckpt_path", "last", "--trainer.callbacks+=tests.recipes.resume_helpers.RecordResumePoint",
              "--trainer.callbacks.path", str(resume_point)]
    codes, output = run_fits([fit_args(straight), [*fit_args(killed), *kill], [*fit_args(killed), *resume]], tmp_path)
    assert codes == [0, -signal.SIGKILL, 0], f"exit codes {codes} (straight, killed, resumed)\n{output[-4000:]}"
    # The resume under test starts inside an epoch, from a checkpoint before the kill.
    point = json.loads(resume_point.read_text())
    assert 0 < point["global_step"] < kill_step and point["batch"] > 0, point
    expected, got = logged_metrics(straight), logged_metrics(killed)
    assert any(k.startswith("val/") for k in got) and any(k.startswith("test/") for k in got), got
    assert got == pytest.approx(expected, **EXACT), f"resumed {got}\n straight {expected}"
    return got


if __name__ == "__main__":
    # Import everything a fit needs once, before forking (the point of the driver).
    import importlib

    for domain in ("forecasting", "spatiotemporal", "segmentation", "separation", "genomics"):
        importlib.import_module(f"omniseq.recipes.{domain}")
    for data in ("forecasting", "gridded", "segmentation", "separation", "genomics"):
        importlib.import_module(f"omniseq.data.{data}")
    importlib.import_module("omniseq.recipes.cli")

    exit_codes = [_fork_fit(args) for args in json.loads(sys.argv[2])]
    Path(sys.argv[1]).write_text(json.dumps(exit_codes))
