"""FSDD 2-speaker separation: omniseq separators vs torchaudio's ConvTasNet, same CPU budget.

    # the standard protocol: fully overlapped, unseen speakers (seed k on fold k), seen/unseen/noise
    python benchmarks/separation.py --budget-minutes 6 --seeds 0 1 2 --parallel 6 \
        --recipes separation/fsdd_unseen_tcn_mamba separation/fsdd_unseen_convtasnet
    # the older partial-overlap protocol (seen speakers only)
    OMP_NUM_THREADS=1 python benchmarks/separation.py --budget-minutes 30

Every recipe is trained by the same command (``omniseq fit``, same data,
optimiser, batch size and seed) for ``--budget-minutes`` of CPU time of the
training process on one thread (``CPUTimeBudget``, validation included), with
the learning rate decaying linearly to 1% over the last ``--anneal-fraction``
of the budget (``--clock wall`` uses Lightning's ``max_time`` and no decay).
The recipe's own budget is replaced in a copy of its config, ``protocol.yaml``
beside the run. The best checkpoint is then tested on the fixed FSDD test list
(utterance indices 0-4, 300 mixtures at [-5, 5] dB). Prints SI-SNRi and SDRi
(dB) per recipe and seed. ``--seeds`` runs each seed (``--seed_everything``); for
recipes with unseen speakers (``fold`` in their data), seed k also holds out
fold k's speaker, and every test list (``seen``, ``unseen``, ``unseen_noise``)
is reported side by side, with the mean and standard deviation over seeds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import yaml

from omniseq.recipes.cli import resolve_config

DEFAULT_RECIPES = [
    "separation/fsdd_tcn_attention",
    "separation/fsdd_tcn_mamba",
    "separation/fsdd_dualpath_fsmn",
    "separation/fsdd_dualpath_attention",
    "separation/fsdd_sashimi",
    "separation/fsdd_convtasnet",
]


BUDGET_CALLBACK = "omniseq.recipes.callbacks.CPUTimeBudget"


def protocol_config(recipe: str, minutes: float, clock: str, anneal_fraction: float, out: Path) -> Path:
    """The recipe's YAML with its budget set to ``minutes``, written beside the run.

    Callbacks are a list, which CLI flags cannot edit in place, so the budget
    callback of the recipe is replaced in a copy of its config.
    """
    config = yaml.safe_load(Path(resolve_config(recipe)).read_text())
    trainer = config.setdefault("trainer", {})
    callbacks = [c for c in trainer.get("callbacks", []) if c.get("class_path") != BUDGET_CALLBACK]
    if clock == "wall":
        trainer["max_time"] = f"00:00:{int(minutes):02d}:{int(round((minutes % 1) * 60)):02d}"
    else:
        trainer["max_time"] = None
        callbacks.append({"class_path": BUDGET_CALLBACK,
                          "init_args": {"minutes": minutes, "anneal_fraction": anneal_fraction}})
    trainer["callbacks"] = callbacks
    path = out / "protocol.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


TEST_SETS = ("test", "seen", "unseen", "unseen_noise")


def run_recipe(recipe: str, minutes: float, root: Path, threads: int, clock: str, anneal_fraction: float,
               extra: list[str], seed: int | None = None, tag: str = "") -> dict:
    name = recipe.split("/")[-1] + tag
    out = root / name if seed is None else root / name / f"seed{seed}"
    config_data = yaml.safe_load(Path(resolve_config(recipe)).read_text()).get("data", {}).get("init_args", {})
    if seed is not None:
        extra = ["--seed_everything", str(seed), *extra]
        if "fold" in config_data:
            extra += ["--data.init_args.fold", str(seed % 4)]
    out.mkdir(parents=True, exist_ok=True)
    config = protocol_config(recipe, minutes, clock, anneal_fraction, out)
    cmd = [
        sys.executable, "-m", "omniseq.recipes.cli", "fit", "--config", str(config),
        "--trainer.default_root_dir", str(out), *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    log = out.with_suffix(".log")
    with open(log, "w") as handle:
        subprocess.run(cmd, check=True, env=env, stdout=handle, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    metrics = pd.read_csv(sorted((out / "logs").glob("version_*/metrics.csv"))[-1])
    row = {"recipe": name, "seed": seed, "train_steps": int(metrics["step"].max()), "wall_s": round(wall, 1)}
    if "val/si_snri" in metrics:
        row["best_val_si_snri"] = float(metrics["val/si_snri"].max())
    for test_set in TEST_SETS:
        prefix = "test/" if test_set == "test" else f"test_{test_set}/"
        if f"{prefix}si_snri" in metrics:
            test = metrics.dropna(subset=[f"{prefix}si_snri"]).iloc[-1]
            row[f"{test_set}_si_snri"], row[f"{test_set}_sdri"] = float(test[f"{prefix}si_snri"]), float(test[f"{prefix}sdri"])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-minutes", type=float, default=30.0, help="training wall time per recipe")
    parser.add_argument("--recipes", nargs="+", default=DEFAULT_RECIPES)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="budget CPU time of the training process (fair on a shared machine) or wall time")
    parser.add_argument("--anneal-fraction", type=float, default=0.5,
                        help="with --clock cpu: decay the learning rate linearly to 1%% over this last part")
    parser.add_argument("--root", default="runs/benchmarks/separation")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="run each seed (with fold = seed for unseen-speaker recipes); default: the recipe's seed")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once (each is budgeted on its own CPU time)")
    parser.add_argument("--tag", default="", help="suffix of the run names (e.g. for a variant given by overrides)")
    parser.add_argument("extra", nargs="*", help="extra CLI overrides passed to every recipe (after --)")
    args = parser.parse_args()
    import torch

    print(f"budget {args.budget_minutes} {args.clock} min per recipe, {args.threads} thread(s), torch {torch.__version__}", flush=True)
    jobs = [(recipe, seed) for recipe in args.recipes for seed in (args.seeds or [None])]

    def run(job: tuple[str, int | None]) -> dict:
        row = run_recipe(job[0], args.budget_minutes, Path(args.root), args.threads, args.clock,
                         args.anneal_fraction, args.extra, job[1], args.tag)
        print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
        return row

    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        table = pd.DataFrame(list(pool.map(run, jobs)))
    print(table.to_string(index=False, float_format="%.2f"))
    scores = [c for c in table.columns if c.endswith(("si_snri", "sdri"))]
    summary = table.groupby("recipe")[scores].agg(["mean", "std"])
    print(summary.to_string(float_format="%.2f"))
    # Choose on validation (unseen-speaker mixtures for fold recipes), never on a test list.
    if "best_val_si_snri" in table:
        best = table.groupby("recipe")["best_val_si_snri"].mean()
        print(f"best on validation SI-SNRi (mean over seeds): {best.idxmax()} ({best.max():.2f} dB)")


if __name__ == "__main__":
    main()
