"""FSDD 2-speaker separation: omniseq separators vs torchaudio's ConvTasNet, same CPU budget.

    OMP_NUM_THREADS=1 python benchmarks/separation.py --budget-minutes 30            # the issue's protocol
    OMP_NUM_THREADS=1 python benchmarks/separation.py --budget-minutes 4 \
        --recipes separation/fsdd_dualpath_attention separation/fsdd_convtasnet       # a reduced run

Every recipe is trained by the same command (``omniseq fit``, same data,
optimiser, batch size and seed) for ``--budget-minutes`` of CPU time of the
training process on one thread (``CPUTimeBudget``, validation included;
``--clock wall`` uses Lightning's ``max_time`` instead), then the best
checkpoint is tested on the fixed FSDD test list (utterance indices 0-4,
300 mixtures at [-5, 5] dB). Prints SI-SNRi and SDRi (dB) per recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

DEFAULT_RECIPES = [
    "separation/fsdd_tcn_attention",
    "separation/fsdd_tcn_mamba",
    "separation/fsdd_dualpath_fsmn",
    "separation/fsdd_dualpath_attention",
    "separation/fsdd_sashimi",
    "separation/fsdd_convtasnet",
]


def budget_args(minutes: float, clock: str, anneal_fraction: float) -> list[str]:
    if clock == "wall":
        return ["--trainer.max_time", f"00:00:{int(minutes):02d}:{int(round((minutes % 1) * 60)):02d}"]
    callback = {"class_path": "omniseq.recipes.callbacks.CPUTimeBudget",
                "init_args": {"minutes": minutes, "anneal_fraction": anneal_fraction}}
    return ["--trainer.max_time", "null", f"--trainer.callbacks+={json.dumps(callback)}"]


def run_recipe(recipe: str, minutes: float, root: Path, threads: int, clock: str, anneal_fraction: float,
               extra: list[str]) -> dict:
    name = recipe.split("/")[-1]
    out = root / name
    cmd = [
        sys.executable, "-m", "omniseq.recipes.cli", "fit", "--config", recipe,
        *budget_args(minutes, clock, anneal_fraction), "--trainer.default_root_dir", str(out),
        "--trainer.enable_progress_bar", "false", *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    log = out.with_suffix(".log")
    out.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        subprocess.run(cmd, check=True, env=env, stdout=handle, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    metrics = pd.read_csv(sorted((out / "logs").glob("version_*/metrics.csv"))[-1])
    test = metrics.dropna(subset=["test/si_snri"]).iloc[-1]
    steps = int(metrics["step"].max())
    return {"recipe": recipe, "si_snri": float(test["test/si_snri"]), "sdri": float(test["test/sdri"]),
            "si_snr": float(test["test/si_snr"]), "train_steps": steps, "wall_s": round(wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-minutes", type=float, default=30.0, help="training wall time per recipe")
    parser.add_argument("--recipes", nargs="+", default=DEFAULT_RECIPES)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="budget CPU time of the training process (fair on a shared machine) or wall time")
    parser.add_argument("--anneal-fraction", type=float, default=0.5,
                        help="decay the learning rate linearly to 1%% over this last part of a CPU budget")
    parser.add_argument("--root", default="runs/benchmarks/separation")
    parser.add_argument("extra", nargs="*", help="extra CLI overrides passed to every recipe (after --)")
    args = parser.parse_args()
    import torch

    print(f"budget {args.budget_minutes} {args.clock} min per recipe, {args.threads} thread(s), torch {torch.__version__}", flush=True)
    rows = []
    for recipe in args.recipes:
        row = run_recipe(recipe, args.budget_minutes, Path(args.root), args.threads, args.clock,
                         args.anneal_fraction, args.extra)
        rows.append(row)
        print(f"{recipe:45s} SI-SNRi {row['si_snri']:6.2f} dB  SDRi {row['sdri']:6.2f} dB  "
              f"({row['train_steps']} steps, {row['wall_s']} s incl. test)", flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    best = table.loc[table["si_snri"].idxmax()]
    print(f"best: {best['recipe']} ({best['si_snri']:.2f} dB SI-SNRi)")


if __name__ == "__main__":
    main()
