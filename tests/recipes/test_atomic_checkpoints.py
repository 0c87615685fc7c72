"""Checkpoints cannot be lost: a fit SIGKILLed in the middle of writing ``last.ckpt`` resumes exactly.

``KillDuringCheckpointWrite`` makes the Nth write of a ``last`` checkpoint put half of
its bytes on disk and then SIGKILLs the process: the state a kill mid-copy leaves
behind. The old ``last.ckpt`` must survive it (the write went to a temporary file
beside it), and ``--ckpt_path last`` must resume to the metrics of an uninterrupted
fit. A ``last.ckpt`` emptied afterwards (as Lightning's own writer leaves it when
``$TMPDIR`` is on another filesystem) falls back to the previous good checkpoint with a
warning, and also resumes exactly.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
from pathlib import Path

import lightning as L
import pytest
import torch

from omniseq._files import atomic_path
from omniseq.recipes.checkpoints import AtomicCheckpointIO, read_checkpoint, readable_checkpoint
from tests.recipes.resume_helpers import EXACT, logged_metrics, run_fits


class KillDuringCheckpointWrite(L.Callback):
    """SIGKILLs its process halfway through the ``save``-th write of a ``last`` checkpoint."""

    def __init__(self, save: int) -> None:
        self.save = save

    def setup(self, trainer, pl_module, stage: str) -> None:
        real_save, writes = torch.save, []

        def save_then_die(obj, f, *args, **kwargs):
            if isinstance(f, (str, os.PathLike)) and ".last" in Path(f).name:
                writes.append(f)
                if len(writes) == self.save:
                    buffer = io.BytesIO()
                    real_save(obj, buffer, *args, **kwargs)
                    with open(f, "wb") as out:
                        out.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                        out.flush()
                        os.fsync(out.fileno())
                    os.kill(os.getpid(), signal.SIGKILL)
            return real_save(obj, f, *args, **kwargs)

        torch.save = save_then_die  # this fit's process only: it is about to be killed


def tiny_fit(root: Path, *extra: str) -> list[str]:
    """The forecasting demo shrunk to seconds: 2 epochs of 6 batches, ``last.ckpt`` every 2 steps."""
    return ["--config", "forecasting/demo_itransformer", "--trainer.default_root_dir", str(root),
            "--trainer.max_time", "null", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.max_epochs", "2",
            "--trainer.limit_train_batches", "6", "--trainer.limit_val_batches", "2",
            "--trainer.limit_test_batches", "2", "--trainer.log_every_n_steps", "1",
            "--data.seq_len", "48", "--data.pred_len", "24", "--data.batch_size", "16",
            "--model.backbone.d_model", "16", "--model.backbone.d_ff", "16",
            "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            "--trainer.callbacks.dirpath", str(root / "checkpoints"), "--trainer.callbacks.save_last", "true",
            "--trainer.callbacks.save_top_k", "0", "--trainer.callbacks.every_n_train_steps", "2", *extra]


@pytest.mark.slow
def test_killed_while_writing_last_ckpt_resumes_exactly(tmp_path):
    straight, killed, emptied = tmp_path / "straight", tmp_path / "killed", tmp_path / "emptied"
    # The 4th write of a last checkpoint is step 8, in the second epoch: last.ckpt holds step 6.
    kill = ["--trainer.callbacks+=tests.recipes.test_atomic_checkpoints.KillDuringCheckpointWrite",
            "--trainer.callbacks.save", "4"]
    codes, output = run_fits([tiny_fit(straight), tiny_fit(killed, *kill)], tmp_path)
    assert codes == [0, -signal.SIGKILL], f"exit codes {codes}\n{output[-4000:]}"
    folder = killed / "checkpoints"
    partial = [p for p in folder.iterdir() if ".partial" in p.name]
    assert partial and partial[0].stat().st_size > 0  # the kill did land mid-write
    assert read_checkpoint(folder / "last.ckpt")["global_step"] == 6
    assert read_checkpoint(folder / "last.ckpt.previous")["global_step"] == 4

    shutil.copytree(killed, emptied)
    (emptied / "checkpoints" / "last.ckpt").write_bytes(b"")  # what a kill mid-copy in place leaves
    codes, output = run_fits([tiny_fit(killed, "--ckpt_path", "last"), tiny_fit(emptied, "--ckpt_path", "last")],
                             tmp_path)
    assert codes == [0, 0], f"exit codes {codes}\n{output[-4000:]}"
    assert "last.ckpt is empty (0 bytes): its write was cut off" in output
    assert "Resuming from the previous good checkpoint" in output and "last.ckpt.previous" in output
    expected = logged_metrics(straight)
    assert any(k.startswith("test/") for k in expected)
    for resumed in (killed, emptied):
        assert logged_metrics(resumed) == pytest.approx(expected, **EXACT), resumed.name


def test_a_failed_write_keeps_the_old_checkpoint_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io_plugin = AtomicCheckpointIO()
    io_plugin.save_checkpoint({"global_step": 1}, path)

    def fail_halfway(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", fail_halfway)
    with pytest.raises(OSError, match="No space left"):
        io_plugin.save_checkpoint({"global_step": 2}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert io_plugin.load_checkpoint(path)["global_step"] == 1


def test_unreadable_last_falls_back_with_a_warning_and_other_files_do_not(tmp_path):
    io_plugin = AtomicCheckpointIO()
    for step in (1, 2, 3):
        io_plugin.save_checkpoint({"global_step": step}, tmp_path / "last.ckpt")
    assert read_checkpoint(tmp_path / "last.ckpt.previous")["global_step"] == 2
    (tmp_path / "last.ckpt").write_bytes(b"PK\x03\x04cut")
    with pytest.warns(UserWarning, match=r"last\.ckpt is truncated or damaged.*previous good checkpoint \S+previous"):
        assert readable_checkpoint(tmp_path / "last.ckpt") == tmp_path / "last.ckpt.previous"
    with atomic_path(tmp_path / "best.ckpt") as tmp:
        tmp.write_bytes(b"")
    with pytest.raises(ValueError, match=r"best\.ckpt is empty \(0 bytes\)"):
        readable_checkpoint(tmp_path / "best.ckpt")


def test_a_plain_trainer_writes_the_tasks_checkpoints_atomically(tmp_path, monkeypatch):
    from omniseq.backbones.itransformer import ITransformer
    from omniseq.recipes.forecasting import ForecastingTask

    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    batch = {"x": torch.randn(4, 16, 2), "x_mark": torch.zeros(4, 16, 4), "y": torch.randn(4, 8, 2),
             "y_mark": torch.zeros(4, 8, 4)}
    task = ForecastingTask(ITransformer(16, 8, num_channels=2, d_model=8, d_ff=8, depth=1))
    trainer.fit(task, torch.utils.data.DataLoader([batch], batch_size=None))
    written = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (written.append((Path(src).name, Path(dst).name)),
                                                         real_replace(src, dst)))
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert [dst for _, dst in written] == ["model.ckpt"] and ".partial" in written[0][0]
    assert read_checkpoint(tmp_path / "model.ckpt")["global_step"] == 1
