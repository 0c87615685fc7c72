"""omniseq against TSLib (thuml/Time-Series-Library) on ETTh1, one run after the other.

TSLib runs through ``../shared/peers/tslib_etth1.sh`` (its own ``run.py``, CPU, 2 threads);
omniseq through ``omniseq fit`` on the packaged recipe with TSLib's hyper-parameters
(d_model = d_ff, 2 layers, batch 32, lr 1e-4 halved after every epoch from the 2nd as TSLib's
``type1``, 10 epochs, patience 3).
Both are separate processes with OMP_NUM_THREADS=2. Printed per run: train samples/s
(training loop only: windows per epoch over the median epoch's training-loop time, as
TSLib's script computes it), wall time of the whole process, test MSE, and the ratios.

    python benchmarks/peers.py                      # itr96 itr96_dm256 tsmixer96
    python benchmarks/peers.py --runs itr96_dm256 --repeats 2

TSMixer: TSLib's TSMixer is not the paper's. It has no normalisation layers and no RevIN,
and its time mixing is a two-layer MLP (96 -> d_model -> 96). ``tsmixer96`` runs omniseq's
TSMixer in that layout (``norm: none``, ``use_norm: false``, ``mixer_options: {hidden: 512}``,
``hidden_dropout: 0``: dropout on the branch outputs only),
so both sides train the same model; ``tsmixer96_paper`` runs the packaged recipe (the
paper's norms and RevIN, one-layer time mixing) against the same TSLib run.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO.parent / "shared" / "peers" / "tslib_etth1.sh"
THREADS = {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": ""}
COMMON = ["--trainer.max_epochs", "10", "--model.init_args.lr", "0.0001", "--model.init_args.lr_decay", "0.5",
          "--data.init_args.batch_size", "32", "--trainer.accelerator", "cpu"]

# TSLib run name -> the omniseq command line with the same configuration.
OMNISEQ = {
    "itr96": ["forecasting/etth1_itransformer_96", "--model.init_args.backbone.init_args.d_model", "128",
              "--model.init_args.backbone.init_args.d_ff", "128"],
    "itr96_dm256": ["forecasting/etth1_itransformer_96"],
    "tsmixer96": ["forecasting/etth1_tsmixer_96", "--model.init_args.backbone.init_args.ff_dim", "512",
                  "--model.init_args.backbone.init_args.dropout", "0.1",
                  "--model.init_args.backbone.init_args.norm", "none",
                  "--model.init_args.backbone.init_args.use_norm", "false",
                  "--model.init_args.backbone.init_args.mixer_options", "{hidden: 512}",
                  "--model.init_args.backbone.init_args.hidden_dropout", "0.0"],
    "tsmixer96_paper": ["forecasting/etth1_tsmixer_96", "--model.init_args.backbone.init_args.ff_dim", "512",
                        "--model.init_args.backbone.init_args.dropout", "0.1"],
}
PEER_RUN = {"tsmixer96_paper": "tsmixer96"}  # omniseq run -> TSLib run, where the names differ
PATIENCE = 3  # TSLib's default early-stopping patience


def recipe_copy(recipe: str, folder: Path) -> Path:
    """The packaged recipe with TSLib's early-stopping patience (a list entry the CLI cannot index)."""
    import yaml

    from omniseq.recipes.cli import resolve_config

    config = yaml.safe_load(Path(resolve_config(recipe)).read_text())
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("EarlyStopping"):
            callback["init_args"]["patience"] = PATIENCE
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_tslib(name: str, python: str) -> dict[str, float]:
    env = {**os.environ, **THREADS, "PY": python}
    out = subprocess.run(["bash", str(SCRIPT), name], capture_output=True, text=True, env=env, check=False)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith(f"METRICS {name}:")), None)
    if out.returncode or line is None or "FAILED" in line:
        raise SystemExit(f"TSLib run {name} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    fields = dict(re.findall(r"(\w+)=([\d.]+)", line))
    return {"samples_per_s": float(fields["train_samples_per_s"]), "wall_s": float(fields["total_wall_s"]),
            "test_mse": float(fields["test_mse"]), "epochs": int(fields["epochs_run"])}


def run_omniseq(name: str, python: str, train_windows: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as root:
        recipe, *overrides = OMNISEQ[name]
        config = recipe_copy(recipe, Path(root))
        args = [python, "-m", "omniseq", "fit", "--config", str(config), *overrides, *COMMON,
                "--trainer.default_root_dir", root]
        env = {**os.environ, **THREADS, "PYTHONPATH": str(REPO)}
        start = time.perf_counter()
        out = subprocess.run(args, capture_output=True, text=True, env=env, cwd=root, check=False)
        wall = time.perf_counter() - start
        if out.returncode:
            raise SystemExit(f"omniseq run {name} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        epochs = [float(s) for s in re.findall(r"^epoch \d+ done: \d+ steps, ([\d.]+) s in the training loop",
                                               out.stdout, re.M)]
        mse = re.search(r"test/mse\s*│\s*([\d.]+)", out.stdout)
        if not epochs or mse is None:
            raise SystemExit(f"omniseq run {name}: no epoch lines or test/mse in its output:\n{out.stdout[-3000:]}")
    return {"samples_per_s": train_windows / statistics.median(epochs), "wall_s": wall,
            "test_mse": float(mse.group(1)), "epochs": len(epochs)}


def train_windows() -> int:
    """Training windows of ETTh1 at lookback 96, horizon 96 (TSLib's count: 8545)."""
    from omniseq.data.forecasting import ForecastingDataModule

    dm = ForecastingDataModule("ETTh1", seq_len=96, pred_len=96, features="M", batch_size=32)
    dm.setup("fit")
    return len(dm.datasets["train"])  # 8449 = 8640 - 96 - 96 + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=["itr96", "itr96_dm256", "tsmixer96"], choices=sorted(OMNISEQ))
    parser.add_argument("--repeats", type=int, default=1, help="alternating TSLib/omniseq pairs per run")
    parser.add_argument("--python", default=sys.executable, help="python with torch, pandas, scikit-learn")
    args = parser.parse_args()
    if not SCRIPT.is_file():
        raise SystemExit(f"no TSLib runner at {SCRIPT} (the ../shared/peers folder); nothing to compare")
    windows = train_windows()
    rows = []
    for name in args.runs:
        for repeat in range(args.repeats):
            peer = run_tslib(PEER_RUN.get(name, name), args.python)
            ours = run_omniseq(name, args.python, windows)
            rows.append((name, repeat, peer, ours))
            print(f"{name} #{repeat}: TSLib {peer}  omniseq {ours}", flush=True)
    print("\n| run | TSLib samples/s | omniseq samples/s | speed ratio | TSLib wall s | omniseq wall s | "
          "wall ratio | TSLib test MSE | omniseq test MSE | MSE diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, repeat, peer, ours in rows:
        print(f"| {name} #{repeat} | {peer['samples_per_s']:.0f} | {ours['samples_per_s']:.0f} | "
              f"{ours['samples_per_s'] / peer['samples_per_s']:.2f}x | {peer['wall_s']:.0f} | {ours['wall_s']:.0f} | "
              f"{peer['wall_s'] / ours['wall_s']:.2f}x | {peer['test_mse']:.4f} | {ours['test_mse']:.4f} | "
              f"{100 * (ours['test_mse'] / peer['test_mse'] - 1):+.1f}% |")


if __name__ == "__main__":
    main()
