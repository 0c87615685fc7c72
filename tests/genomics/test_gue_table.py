"""benchmarks/gue_table.py: cells are appended as they finish, skipped on resume, keyed
by the model configuration's hash (an old configuration's cells are stale: rerun, and
marked in the table), and a results dir of another protocol is refused."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from omniseq.backbones.cnn1d import DNACNN
from omniseq.backbones.dna import DNAModel


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
    config_hash = table.model_hash(models["cnn"]())
    scratch = cells[table.cell_key("tf0", "cnn", "scratch", 0, config_hash)]
    ecoli = cells[table.cell_key("tf0", "cnn", "ecoli", 0, config_hash)]
    assert scratch["test_mcc"] != ecoli["test_mcc"]  # the pretrained weights were used
    assert scratch["cpu_seconds"] >= 0 and scratch["params"] == 8 * 10 + (8 * 8 * 3 + 8) + 4 * 8
    # A cell lost mid-run (its line never written) is the only one run again.
    lines = (tmp_path / "cells.jsonl").read_text().splitlines()
    (tmp_path / "cells.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    again = Recorder()
    resumed = table.run_table(tmp_path, models, ["tf0", "prom_core_tata"], [0], again.finetune, again.pretrain,
                              lambda m: 0)
    assert again.finetuned == ["tf0"] and again.pretrained == []  # weights read back, not retrained
    assert resumed[table.cell_key("tf0", "cnn", "ecoli", 0, config_hash)]["test_mcc"] == ecoli["test_mcc"]
    text = table.table_markdown(resumed, {"cnn": config_hash, "attention": "0" * 12}, ["tf0", "tf1"],
                                {"tf0": 0.72, "tf1": 0.76})
    assert "| tf1 | not run yet | not run yet | not run yet | not run yet | 0.760 |" in text
    assert f"| tf0 | {scratch['test_mcc']:.3f} | {ecoli['test_mcc']:.3f} | not run yet |" in text
    assert "stale" not in text


def test_cells_of_an_old_model_configuration_are_stale_rerun_and_marked(tmp_path):
    table = _gue_table()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    old = {"cnn": lambda: DNACNN(dim=8, depth=1, kernel_size=3)}
    first = Recorder()
    table.run_table(tmp_path, old, ["tf0"], [0], first.finetune, first.pretrain, count, inits=("scratch",))
    assert first.finetuned == ["tf0"]
    new = {"cnn": lambda: DNACNN(dim=8, depth=1, kernel_size=5)}
    old_hash, new_hash = table.model_hash(old["cnn"]()), table.model_hash(new["cnn"]())
    assert old_hash != new_hash
    # Before a rerun the table shows the old score, marked stale, in both tables.
    cells = table.read_cells(tmp_path)
    text = table.table_markdown(cells, {"cnn": new_hash}, ["tf0"], {"tf0": 0.72})
    old_mcc = cells[table.cell_key("tf0", "cnn", "scratch", 0, old_hash)]["test_mcc"]
    assert f"| tf0 | {old_mcc:.3f} (stale) | not run yet | 0.720 |" in text and "(stale): made with" in text
    assert " (stale) | - |" in text
    # The runner does not reuse the stale cell: it runs the cell of the new configuration.
    again = Recorder()
    cells = table.run_table(tmp_path, new, ["tf0"], [0], again.finetune, again.pretrain, count, inits=("scratch",))
    assert again.finetuned == ["tf0"]
    fresh = cells[table.cell_key("tf0", "cnn", "scratch", 0, new_hash)]
    assert fresh["model_hash"] == new_hash and fresh["params"] == count(new["cnn"]())
    text = table.table_markdown(cells, {"cnn": new_hash}, ["tf0"], {"tf0": 0.72})
    assert f"| tf0 | {fresh['test_mcc']:.3f} | not run yet | 0.720 |" in text and "stale" not in text
    # Both configurations are on record in protocol.json.
    assert set(json.loads((tmp_path / "protocol.json").read_text())["models"]["cnn"]) == {old_hash, new_hash}


def test_model_hash_sees_options_that_repr_does_not_and_ignores_defaults():
    table = _gue_table()
    torch.manual_seed(0)
    base = table.model_hash(DNAModel(dim=8, depth=1, mixer_options={"d_state": 4}))
    # Weights do not matter, options left at their default do not either.
    torch.manual_seed(1)
    assert table.model_hash(DNAModel(dim=8, depth=1, mixer_options={"d_state": 4}, patch_size=1)) == base
    # The same module tree (an 8-wide trunk) with RC parameter sharing is another model.
    ps = DNAModel(dim=16, depth=1, mixer_options={"d_state": 4}, rc_mode="ps")
    assert repr(ps) == repr(DNAModel(dim=8, depth=1, mixer_options={"d_state": 4}))
    assert table.model_hash(ps) != base
    assert table.model_hash(DNAModel(dim=8, depth=1, mixer_options={"d_state": 4}, patch_size=2)) != base


def test_results_of_another_protocol_are_refused(tmp_path):
    table = _gue_table()
    table.check_protocol(tmp_path, {"cnn": lambda: DNACNN(dim=8, depth=1)})
    saved = dict(table.PROTOCOL)
    table.PROTOCOL["pretrain_steps"] += 1
    try:
        with pytest.raises(ValueError, match="use another --results-dir"):
            table.check_protocol(tmp_path, {"cnn": lambda: DNACNN(dim=8, depth=1)})
    finally:
        table.PROTOCOL.clear()
        table.PROTOCOL.update(saved)


def test_table_shows_mean_and_std_over_seeds_and_ranks_by_dev_mcc():
    table = _gue_table()
    hashes = {"cnn": "a" * 12, "caduceus_ps": "b" * 12}

    def cell(task, model, init, seed, test, dev, cpu=60.0):
        key = table.cell_key(task, model, init, seed, hashes[model])
        return key, {"key": key, "task": task, "model": model, "init": init, "seed": seed,
                     "model_hash": hashes[model], "test_mcc": test, "dev_mcc": dev, "cpu_seconds": cpu}

    cells = dict([
        cell("tf0", "cnn", "scratch", 0, 0.60, 0.40), cell("tf1", "cnn", "scratch", 0, 0.70, 0.40),
        # Better on test, worse on dev than the CNN: the ranking must follow dev.
        cell("tf0", "caduceus_ps", "ecoli", 0, 0.90, 0.50), cell("tf1", "caduceus_ps", "ecoli", 0, 0.80, 0.10),
        cell("tf0", "caduceus_ps", "ecoli", 1, 0.70, 0.50, cpu=120.0), cell("tf1", "caduceus_ps", "ecoli", 1, 0.60, 0.1),
        cell("tf0", "caduceus_ps", "ecoli", 2, 0.80, 0.50),
    ])
    assert table.dev_ranking(cells, hashes, ["tf0", "tf1"]) == [(0.4, "cnn", "scratch"), (0.3, "caduceus_ps", "ecoli")]
    text = table.table_markdown(cells, hashes, ["tf0", "tf1"], {"tf0": 0.72, "tf1": 0.76})
    # tf0: seeds 0.9, 0.7, 0.8 -> mean 0.8, sample std 0.1; tf1: 0.8, 0.6 -> 0.7 +- 0.141.
    assert ("| tf0 | 0.600 | not run yet | not run yet | 0.800 ± 0.100 (3 seeds) | 0.720 |" in text)
    assert "| tf1 | 0.700 | not run yet | not run yet | 0.700 ± 0.141 (2 seeds) | 0.760 |" in text
    assert "cnn scratch 0.400, caduceus_ps +E. coli 0.300" in text
    assert "Test MCC per seed, caduceus_ps +E. coli:" in text and "Test MCC per seed, cnn" not in text
    assert "| tf0 | 0.900 | 0.700 | 0.800 | 0.800 ± 0.100 |" in text
    assert "| tf1 | 0.800 | 0.600 | - | 0.700 ± 0.141 |" in text
    # Only tf0 has all three seeds, so the per-seed means over tasks are its scores.
    assert "| mean of 1 tasks | 0.900 | 0.700 | 0.800 | 0.800 ± 0.100 |" in text
    # CPU minutes: one seed as it is, several as their mean.
    assert "| tf0 | 1.0 | - | - | 1.3 (mean of 3) |" in text
