"""benchmarks/gue_table.py: cells are appended as they finish, skipped on resume, and a
results dir of another protocol or model configuration is refused."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from omniseq.backbones.cnn1d import DNACNN


def _gue_table():
    path = Path(__file__).parents[2] / "benchmarks" / "gue_table.py"
    spec = importlib.util.spec_from_file_location("gue_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Recorder:
    """Stands in for benchmarks/genomics.py's finetune/pretrain; records what was run."""

    def __init__(self):
        self.finetuned, self.pretrained, self.steps = [], [], []

    def finetune(self, model, task, *args, steps_for=None, **kwargs):
        self.finetuned.append(task)
        per_epoch = {"prom_core_tata": 154, "tf0": 1012}[task]
        self.steps.append(steps_for(per_epoch))
        with torch.no_grad():
            score = float(next(model.parameters()).abs().sum())
        return {"test_mcc": round(score % 1, 4), "dev_mcc": 0.5, "steps": self.steps[-1]}

    def pretrain(self, model, minutes, seq_len, batch_size, seed, max_steps=None):
        self.pretrained.append(max_steps)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        return {"steps": max_steps}


def test_cells_are_saved_skipped_on_resume_and_pretraining_is_reused(tmp_path):
    table = _gue_table()
    models = {"cnn": lambda: DNACNN(dim=8, depth=1, kernel_size=3)}
    first = Recorder()
    cells = table.run_table(tmp_path, models, ["tf0", "prom_core_tata"], [0], first.finetune, first.pretrain,
                            lambda m: sum(p.numel() for p in m.parameters()))
    # Small task first; scratch and +E. coli per task; one pretraining for the model.
    assert first.finetuned == ["prom_core_tata", "prom_core_tata", "tf0", "tf0"]
    assert first.pretrained == [table.PROTOCOL["pretrain_steps"]]
    # One epoch, with the floor for the small task.
    assert first.steps == [table.PROTOCOL["min_finetune_steps"]] * 2 + [1012, 1012]
    assert len(cells) == 4 and len((tmp_path / "cells.jsonl").read_text().splitlines()) == 4
    scratch, ecoli = cells["tf0/cnn/scratch/seed0"], cells["tf0/cnn/ecoli/seed0"]
    assert scratch["test_mcc"] != ecoli["test_mcc"]  # the pretrained weights were used
    assert scratch["cpu_seconds"] >= 0 and scratch["params"] == 8 * 10 + (8 * 8 * 3 + 8) + 4 * 8
    # A cell lost mid-run (its line never written) is the only one run again.
    lines = (tmp_path / "cells.jsonl").read_text().splitlines()
    (tmp_path / "cells.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    again = Recorder()
    resumed = table.run_table(tmp_path, models, ["tf0", "prom_core_tata"], [0], again.finetune, again.pretrain,
                              lambda m: 0)
    assert again.finetuned == ["tf0"] and again.pretrained == []  # weights read back, not retrained
    assert resumed["tf0/cnn/ecoli/seed0"]["test_mcc"] == ecoli["test_mcc"]
    text = table.table_markdown(resumed, ["cnn", "attention"], ["tf0", "tf1"], {"tf0": 0.72, "tf1": 0.76})
    assert "| tf1 | not run yet | not run yet | not run yet | not run yet | 0.760 |" in text


def test_results_of_another_protocol_or_model_are_refused(tmp_path):
    table = _gue_table()
    table.check_protocol(tmp_path, {"cnn": lambda: DNACNN(dim=8, depth=1)})
    with pytest.raises(ValueError, match="model 'cnn' had another configuration"):
        table.check_protocol(tmp_path, {"cnn": lambda: DNACNN(dim=16, depth=1)})
    saved = dict(table.PROTOCOL)
    table.PROTOCOL["pretrain_steps"] += 1
    try:
        with pytest.raises(ValueError, match="use another --results-dir"):
            table.check_protocol(tmp_path, {"cnn": lambda: DNACNN(dim=8, depth=1)})
    finally:
        table.PROTOCOL.clear()
        table.PROTOCOL.update(saved)
