"""The whole GUE table on a CPU, resumable cell by cell (``python benchmarks/genomics.py --full``).

A cell is one (task, model, init, seed) of one model configuration: fine-tune from
scratch or from the model's E. coli masked-LM pretraining, select on dev MCC, report
test MCC. Every finished cell is appended to ``<results-dir>/cells.jsonl`` (with its
CPU time and the model's configuration hash, ``model_hash``) and skipped on the next
run, and each model's pretrained weights are kept in
``<results-dir>/pretrained/<model>-<hash>-seed<s>.pt``, so the table can be built over
several sessions. When a model's configuration in ``MODELS`` changes, its hash
changes: the cells of the old configuration are stale, never reused; the runner makes
the cells again and the table marks a stale cell that has no replacement yet. The default results dir, ``benchmarks/gue_table/``, is tracked by
git for its ``cells.jsonl`` and ``protocol.json`` (commit them to hand the table on);
the ``.pt`` weights are ignored and, when missing, are pretrained again. Small tasks
run first, so whole rows fill early.

Protocol (``PROTOCOL``), the same for every model: full train/dev/test sets; one
epoch of fine-tuning with a floor of ``min_finetune_steps`` steps for the small
tasks; dev MCC on the full dev set every ``eval_every`` steps and at the end; test
MCC of the dev-best weights; pretraining a fixed number of steps on E. coli K-12
windows (last 10% of the chromosome held out). More seeds (``--seeds 1 2``) go to the
model x init with the best mean dev MCC over the tasks at seed 0 (``dev_ranking``, printed
under the table); where several seeds ran, the table shows mean ± sample std.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import os
import statistics
import time
from pathlib import Path

import torch

from omniseq._files import atomic_save, load_file

PROTOCOL = {
    "pretrain_steps": 1000, "pretrain_seq_len": 128, "pretrain_batch_size": 32,
    "finetune_epochs": 1, "min_finetune_steps": 600, "batch_size": 32, "eval_every": 250,
}
# Run order: small tasks first (fewest steps), so that whole rows finish early.
RUN_ORDER = ("prom_core_tata", "prom_300_tata", "tf2", "tf4", "tf3", "tf1", "tf0",
             "prom_core_notata", "prom_core_all")


def model_hash(model: torch.nn.Module) -> str:
    """12 hex digits naming a model configuration: its module tree (``repr``) and the
    constructor options in ``model.config`` that differ from their defaults (so a new
    option with a default leaves existing cells valid)."""
    config = dict(getattr(model, "config", None) or {})
    defaults = {name: p.default for name, p in inspect.signature(type(model).__init__).parameters.items()}
    options = {k: v for k, v in config.items() if k not in defaults or defaults[k] != v}
    text = repr(model) + json.dumps(options, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cell_key(task: str, model: str, init: str, seed: int, config_hash: str) -> str:
    return f"{task}/{model}/{init}/seed{seed}/{config_hash}"


def find_cell(cells: dict[str, dict], task: str, model: str, init: str, seed: int,
              config_hash: str) -> tuple[dict | None, bool]:
    """The cell of the current configuration, else the latest stale one (another
    ``model_hash``, or none recorded); returns ``(cell, stale)``."""
    current = cells.get(cell_key(task, model, init, seed, config_hash))
    if current is not None:
        return current, False
    old = [c for c in cells.values()
           if (c.get("task"), c.get("model"), c.get("init"), c.get("seed")) == (task, model, init, seed)]
    return (old[-1], True) if old else (None, False)


def read_cells(results_dir: Path) -> dict[str, dict]:
    path = results_dir / "cells.jsonl"
    if not path.exists():
        return {}
    cells = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            cell = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {number}: not JSON ({err}); delete that line to rerun the cell") from err
        cells[cell["key"]] = cell
    return cells


def append_cell(results_dir: Path, cell: dict) -> None:
    """One JSON line, flushed and fsynced: a killed run loses at most the cell in progress."""
    with open(results_dir / "cells.jsonl", "a") as handle:
        handle.write(json.dumps(cell) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def check_protocol(results_dir: Path, models: dict) -> dict[str, str]:
    """Refuse a results dir of another protocol; record every model configuration seen
    (``models[name][hash] = repr``) and return the current hash of each model."""
    path = results_dir / "protocol.json"
    hashes, reprs = {}, {}
    for name, build in models.items():
        model = build()
        hashes[name], reprs[name] = model_hash(model), repr(model)
    seen: dict[str, dict[str, str]] = {}
    if path.exists():
        saved = json.loads(path.read_text())
        if saved["protocol"] != PROTOCOL:
            raise ValueError(f"{path}: the cells there were made with protocol {saved['protocol']}, not "
                             f"{PROTOCOL}; use another --results-dir")
        # A model saved as one repr text is the format before cells had a model_hash.
        seen = {name: entry if isinstance(entry, dict) else {"unhashed": entry}
                for name, entry in saved["models"].items()}
    for name, config_hash in hashes.items():
        seen.setdefault(name, {})[config_hash] = reprs[name]
    results_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"protocol": PROTOCOL, "models": seen}, indent=1))
    return hashes


def pretrained_weights(results_dir: Path, name: str, scratch: torch.nn.Module, seed: int, pretrain) -> torch.nn.Module:
    """The model after E. coli pretraining: loaded if an earlier run saved it, else trained and saved."""
    config_hash = model_hash(scratch)
    path = results_dir / "pretrained" / f"{name}-{config_hash}-seed{seed}.pt"
    model = copy.deepcopy(scratch)
    if path.exists():
        model.load_state_dict(load_file(path, what="pretrained GUE-table weights"))
        return model
    cpu0, wall0 = time.process_time(), time.time()
    info = pretrain(model, None, PROTOCOL["pretrain_seq_len"], PROTOCOL["pretrain_batch_size"], seed,
                    max_steps=PROTOCOL["pretrain_steps"])
    info.update(model=name, model_hash=config_hash, seed=seed, cpu_seconds=round(time.process_time() - cpu0, 1),
                wall_seconds=round(time.time() - wall0, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(model.state_dict(), path)
    with open(results_dir / "pretrain.jsonl", "a") as handle:
        handle.write(json.dumps(info) + "\n")
    print("pretrained", json.dumps(info), flush=True)
    return model


def run_table(results_dir: Path, models: dict, tasks: list[str], seeds: list[int], finetune, pretrain,
              num_params, inits: tuple[str, ...] = ("scratch", "ecoli")) -> dict[str, dict]:
    """Run every missing cell; returns all cells (finished earlier or now). Several runs may
    share a results dir (e.g. one per model): each skips the cells the others have finished."""
    hashes = check_protocol(results_dir, models)
    cells = read_cells(results_dir)
    order = [t for t in RUN_ORDER if t in tasks] + [t for t in tasks if t not in RUN_ORDER]
    steps_for = lambda per_epoch: max(PROTOCOL["min_finetune_steps"], PROTOCOL["finetune_epochs"] * per_epoch)  # noqa: E731
    for seed in seeds:
        for task in order:
            for name, build in models.items():
                for init in inits:
                    key = cell_key(task, name, init, seed, hashes[name])
                    if key in cells:
                        continue
                    cells.update(read_cells(results_dir))  # another run on the same dir may have done it
                    if key in cells:
                        continue
                    torch.manual_seed(seed)
                    scratch = build()
                    start = scratch if init == "scratch" else pretrained_weights(results_dir, name, scratch, seed, pretrain)
                    model = copy.deepcopy(start)
                    torch.manual_seed(seed)
                    cpu0, wall0 = time.process_time(), time.time()
                    result = finetune(model, task, None, None, None, PROTOCOL["eval_every"], PROTOCOL["batch_size"],
                                      seed, steps_for=steps_for)
                    result.update(key=key, task=task, model=name, model_hash=hashes[name], init=init, seed=seed,
                                  params=num_params(model),
                                  cpu_seconds=round(time.process_time() - cpu0, 1),
                                  wall_seconds=round(time.time() - wall0, 1), threads=torch.get_num_threads(),
                                  finished=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
                    append_cell(results_dir, result)
                    cells[key] = result
                    print("cell", json.dumps(result), flush=True)
    return cells


INITS = ("scratch", "ecoli")


def column_label(model: str, init: str) -> str:
    return f"{model} {'scratch' if init == 'scratch' else '+E. coli'}"


def seed_cells(cells: dict[str, dict], task: str, model: str, init: str, config_hash: str) -> list[dict]:
    """The current configuration's cells of one task, model and init: one per seed, by seed."""
    found = [c for c in cells.values()
             if (c.get("task"), c.get("model"), c.get("init"), c.get("model_hash")) == (task, model, init, config_hash)]
    return sorted(found, key=lambda c: c["seed"])


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator) of two or more values."""
    return statistics.fmean(values), statistics.stdev(values)


def dev_ranking(cells: dict[str, dict], models: dict[str, str], tasks: list[str],
                seed: int = 0) -> list[tuple[float, str, str]]:
    """``(mean dev MCC over tasks, model, init)`` of every model x init whose current
    configuration has a cell of ``seed`` on every task, best first: the rule that picks
    the model to run on more seeds (dev, never test, MCC)."""
    ranking = []
    for name, config_hash in models.items():
        for init in INITS:
            got = [cells.get(cell_key(task, name, init, seed, config_hash)) for task in tasks]
            if all(got):
                ranking.append((round(statistics.fmean(c["dev_mcc"] for c in got), 4), name, init))
    return sorted(ranking, reverse=True)


def table_markdown(cells: dict[str, dict], models: dict[str, str], tasks: list[str], published: dict[str, float],
                   seed: int = 0) -> str:
    """Test MCC per task (rows) and model x init (columns) for the models' current
    configurations (``models``: name -> hash): one seed's score, or mean ± sample std
    where several seeds ran; 'not run yet' where a cell is missing and 'stale' beside the
    ``seed`` score of an older configuration. Then the dev-MCC ranking, the per-seed
    scores and the CPU minutes per cell."""
    columns = [(m, i) for m in models for i in INITS]
    head = " | ".join(column_label(m, i) for m, i in columns)
    lines = [f"| task | {head} | DNABERT-2 (paper) |", "|" + "---|" * (len(columns) + 2)]
    cpu = [f"| task | {head} |", "|" + "---|" * (len(columns) + 1)]
    any_stale = False

    def show(task: str, model: str, init: str, key: str, scale: float, spread: bool, missing: str) -> str:
        nonlocal any_stale
        group, stale = seed_cells(cells, task, model, init, models[model]), False
        if not group:
            cell, stale = find_cell(cells, task, model, init, seed, models[model])
            group = [cell] if cell is not None else []
        any_stale |= stale
        values = [c[key] * scale for c in group]
        if not values:
            return missing
        if len(values) == 1:
            return f"{values[0]:.{3 if spread else 1}f}" + (" (stale)" if stale else "")
        mean, std = mean_std(values)
        return f"{mean:.3f} ± {std:.3f} ({len(values)} seeds)" if spread else f"{mean:.1f} (mean of {len(values)})"

    for task in tasks:
        lines.append(f"| {task} | " + " | ".join(show(task, m, i, "test_mcc", 1, True, "not run yet") for m, i in columns)
                     + f" | {published[task]:.3f} |")
        cpu.append(f"| {task} | " + " | ".join(show(task, m, i, "cpu_seconds", 1 / 60, False, "-") for m, i in columns)
                   + " |")
    note = ("\n\n(stale): made with an earlier configuration of that model (its `model_hash` is not the "
            "current one); not reused, rerun to replace it." if any_stale else "")
    if any(len(seed_cells(cells, t, m, i, models[m])) > 1 for t in tasks for m, i in columns):
        note += "\n\nmean ± std: over the seeds that ran (sample standard deviation, n - 1)."
    ranking = dev_ranking(cells, models, tasks, seed)
    if ranking:
        note += (f"\n\nMean dev MCC over these {len(tasks)} tasks, seed {seed} (the rule that picks the model for "
                 "more seeds): " + ", ".join(f"{column_label(m, i)} {score:.3f}" for score, m, i in ranking) + ".")
    seeds = seeds_markdown(cells, models, tasks)
    return ("\n".join(lines) + note + ("\n\n" + seeds if seeds else "")
            + "\n\nCPU minutes per cell (fine-tuning and its dev/test evaluation):\n\n" + "\n".join(cpu))


def seeds_markdown(cells: dict[str, dict], models: dict[str, str], tasks: list[str]) -> str:
    """Test MCC of every seed, per task, for each model x init that ran more than one
    seed somewhere ('' when none did); the last row is each seed's mean over the tasks
    where all of them ran."""
    blocks = []
    for model, init in [(m, i) for m in models for i in INITS]:
        groups = {task: {c["seed"]: c["test_mcc"] for c in seed_cells(cells, task, model, init, models[model])}
                  for task in tasks}
        seeds = sorted({s for group in groups.values() for s in group})
        if len(seeds) < 2:
            continue
        lines = [f"Test MCC per seed, {column_label(model, init)}:", "",
                 "| task | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std |", "|" + "---|" * (len(seeds) + 2)]
        for task, group in groups.items():
            spread = "{:.3f} ± {:.3f}".format(*mean_std(list(group.values()))) if len(group) > 1 else "-"
            lines.append(f"| {task} | " + " | ".join(f"{group[s]:.3f}" if s in group else "-" for s in seeds)
                         + f" | {spread} |")
        complete = [group for group in groups.values() if len(group) == len(seeds)]
        if complete:
            per_seed = [statistics.fmean(group[s] for group in complete) for s in seeds]
            lines.append(f"| mean of {len(complete)} tasks | " + " | ".join(f"{v:.3f}" for v in per_seed)
                         + " | {:.3f} ± {:.3f} |".format(*mean_std(per_seed)))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
