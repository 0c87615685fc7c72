"""FSDD 2-speaker separation: omniseq separators vs torchaudio's ConvTasNet, same CPU budget.

    OMP_NUM_THREADS=1 python benchmarks/separation.py --budget-minutes 30            # the issue's protocol
    OMP_NUM_THREADS=1 python benchmarks/separation.py --budget-minutes 4 \
        --recipes separation/fsdd_dualpath_attention separation/fsdd_convtasnet       # a reduced run

Every recipe is trained by the same command (``omniseq fit``, same data,
optimiser, batch size and seed) for ``--budget-minutes`` of CPU time of the
training process on one thread (``CPUTimeBudget``, validation included), with
the learning rate decaying linearly to 1% over the last ``--anneal-fraction``
of the budget (``--clock wall`` uses Lightning's ``max_time`` and no decay).
The recipe's own budget is replaced in a copy of its config, ``protocol.yaml``
beside the run. The best checkpoint is then tested on the fixed FSDD test list
(utterance indices 0-4, 300 mixtures at [-5, 5] dB). Prints SI-SNRi and SDRi
(dB) per recipe; ``-- --seed_everything N`` changes the seed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
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


def run_recipe(recipe: str, minutes: float, root: Path, threads: int, clock: str, anneal_fraction: float,
               extra: list[str]) -> dict:
    name = recipe.split("/")[-1]
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    config = protocol_config(recipe, minutes, clock, anneal_fraction, out)
    cmd = [
        sys.executable, "-m", "omniseq.recipes.cli", "fit", "--config", str(config),
        "--trainer.default_root_dir", str(out), "--trainer.enable_progress_bar", "false", *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    log = out.with_suffix(".log")
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
                        help="with --clock cpu: decay the learning rate linearly to 1%% over this last part")
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
