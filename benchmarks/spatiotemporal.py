"""ConvS5 vs ConvLSTM vs persistence on gridded forecasting (WFDE5 GB, January 2017).

Protocol (the dataset README's): 6 variables, 24 h in -> ``--pred-len`` h out
(24 by default), days 1-21 / 22-26 / 27-31, z-score on train land cells; test
MSE/MAE over land cells only, in normalised units, averaged over every lead time
and at the last lead time. Each model trains for ``--epochs`` (or until
``--minutes``), the best validation checkpoint is tested.

    python benchmarks/spatiotemporal.py --epochs 20 --csv runs/spatiotemporal.csv
    # the README's grid, once per --seed 0 1 2:
    python benchmarks/spatiotemporal.py --epochs 30 --models convs5 --depth 3 --state-dim 64 --seed 1
    python benchmarks/spatiotemporal.py --epochs 30 --models convlstm --depth 3 --seed 1
    # the same ConvS5 run in bf16 mixed precision (its convolutions in bf16, its scan in fp32):
    python benchmarks/spatiotemporal.py --epochs 30 --models convs5 --depth 3 --state-dim 64 --precision bf16-mixed

Training-step cost on a custom grid (synthetic data, no dataset needed): 33 x 49 cells,
one variable, 24 h in / 24 h out, batch 8, the wfde5_convs5_24 model (dim 32, P 64,
depth 3). The model as first written (batch-major frames, complex tensors, the generic
linear_scan, every frame of every block read out) runs first, then the current one, then
the current one with ``recompute_states=True``, then both in bf16 mixed precision
(``--trainer.precision bf16-mixed``: ConvS5's convolutions in bf16, its scan in fp32),
each in its own process so that peak memory is its own. ``import omniseq`` turns on PyTorch's
``THP_MEM_ALLOC_ENABLE=1`` (transparent huge pages for large CPU tensors) and sets
``GOMP_SPINCOUNT=10000``; "before" runs on 4 KB pages with libgomp's own spin count, as the
issue measured it, and "4 KB pages" rows show the packaged model without huge pages:

    python benchmarks/spatiotemporal.py --grid-step --steps 3 --threads 2
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from omniseq.backbones.convs5 import ConvS5, ConvS5Block, ConvS5Layer

# Lightning, the data and the recipe are imported where the dataset benchmark needs them, so
# that the grid-step processes hold only torch and the model (their peak RSS is the model's).

FIELDS = ["model", "pred_len", "epochs_budget", "device", "seed", "dim", "depth", "state_dim", "val/best",
          "test/mse", "test/mae", "test/mse_last",
          "epochs", "train_s", "samples_per_s", "params"]


def persistence_scores(dm) -> dict[str, float]:
    from omniseq.recipes.spatiotemporal import masked_values

    sq, ab, sq_last, n, n_last = 0.0, 0.0, 0.0, 0, 0
    for batch in dm.test_dataloader():
        pred = batch["x"][:, -1:, : dm.num_output_channels].expand_as(batch["y"])
        p, t = masked_values(pred, batch["y"], batch["mask"])
        sq, ab, n = sq + ((p - t) ** 2).sum().item(), ab + (p - t).abs().sum().item(), n + p.numel()
        p, t = masked_values(pred[:, -1:], batch["y"][:, -1:], batch["mask"])
        sq_last, n_last = sq_last + ((p - t) ** 2).sum().item(), n_last + p.numel()
    return {"test/mse": sq / n, "test/mae": ab / n, "test/mse_last": sq_last / n_last}


def build(name: str, dm, args) -> torch.nn.Module:
    from omniseq.backbones.convlstm import ConvLSTM

    common = dict(in_channels=dm.num_channels, out_channels=dm.num_output_channels, pred_len=dm.pred_len,
                  dim=args.dim, depth=args.depth)
    if name == "convs5":
        return ConvS5(**common, state_dim=args.state_dim or args.dim, dropout=args.dropout)
    if name == "convlstm":
        return ConvLSTM(**common)
    raise ValueError(f"unknown model {name!r}")


def train_and_test(name: str, dm, args, root: Path) -> dict[str, float]:
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from omniseq.recipes.spatiotemporal import SpatiotemporalTask

    L.seed_everything(args.seed, verbose=False)
    task = SpatiotemporalTask(build(name, dm, args), lr=args.lr, warmup_steps=50)
    checkpoint = ModelCheckpoint(dirpath=root / name, monitor="val/loss", mode="min", filename="best")
    trainer = L.Trainer(
        max_epochs=args.epochs, max_time={"minutes": args.minutes} if args.minutes else None,
        accelerator="auto", devices=1, gradient_clip_val=1.0, callbacks=[checkpoint], logger=False,
        precision=args.precision,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
    )
    start = time.perf_counter()
    trainer.fit(task, datamodule=dm)
    seconds = time.perf_counter() - start
    samples = trainer.global_step * dm.batch_size
    result = trainer.test(task, datamodule=dm, ckpt_path="best", verbose=False)[0]
    params = sum(p.numel() for p in task.backbone.parameters())
    return {**result, "val/best": float(checkpoint.best_model_score), "epochs": trainer.current_epoch, "train_s": seconds,
            "samples_per_s": samples / seconds, "params": params}


# "before": the model as first written; "after": as packaged; "recompute_states": the opt-in
# that recomputes each layer's states in backward instead of keeping them.
VARIANTS = ("before", "after", "recompute_states", "bf16-mixed", "bf16-mixed+recompute")
GRID = dict(batch=8, length=24, pred_len=24, height=33, width=49, dim=32, state_dim=64, depth=3)


def _legacy_layer_forward(self, u, state=None):
    """ConvS5Layer.forward as first written: complex tensors, the generic linear_scan with the
    decay broadcast to the full state, every frame read out."""
    from omniseq.backbones.convs5 import check_frames
    from omniseq.kernels import linear_scan

    check_frames("ConvS5Layer", u, self.dim)
    batch, length = u.shape[:2]
    Abar, kernel = self.discretize()
    b = self._input(u.flatten(0, 1), kernel).unflatten(0, (batch, length))
    a = Abar.to(b.dtype)[None, None, :, None, None].expand_as(b)
    states = linear_scan(a, b, h0=state)
    return self._readout(states.flatten(0, 1), u.flatten(0, 1)).unflatten(0, (batch, length)), states[:, -1]


def _legacy_block_forward(self, u, state=None):
    batch, length = u.shape[:2]
    y, last = self.ssm(self.norm(u.flatten(0, 1)).unflatten(0, (batch, length)), state)
    return u + self._branch_out(y.flatten(0, 1)).unflatten(0, (batch, length)), last


def _legacy_forward(self, x):
    from omniseq.backbones.convs5 import check_frames

    check_frames("ConvS5", x, self.in_channels)
    batch, length = x.shape[:2]
    h = self.encoder(x.flatten(0, 1)).unflatten(0, (batch, length))
    for block in self.blocks:
        h, _ = block(h)
    return self.decode(h[:, -1], x[:, -1])


def grid_step_child(variant: str, steps: int, threads: int, batch: int) -> None:
    """One process, one variant: CPU seconds, wall seconds and peak RSS of a training step."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if variant == "before":
        ConvS5Layer.forward = _legacy_layer_forward
        ConvS5Block.forward = _legacy_block_forward
        ConvS5.forward = _legacy_forward
    g = {**GRID, "batch": batch}
    model = ConvS5(1, 1, g["pred_len"], dim=g["dim"], state_dim=g["state_dim"], depth=g["depth"], dropout=0.1,
                   recompute_states="recompute" in variant)
    # What Lightning's `precision: bf16-mixed` does around the forward pass.
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant.startswith("bf16"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(g["batch"], g["length"], 1, g["height"], g["width"])
    y = torch.randn(g["batch"], g["pred_len"], 1, g["height"], g["width"])

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            prediction = model(x)
        torch.nn.functional.mse_loss(prediction.float(), y).backward()
        optimizer.step()

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # torch, model, optimizer, data
    step()  # warm-up (oneDNN primitives, allocator)
    before, cpu, wall = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), time.perf_counter()
    for _ in range(steps):
        step()
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"variant": variant, "cpu_s": (time.process_time() - cpu) / steps,
                      "wall_s": (time.perf_counter() - wall) / steps,
                      "user_s": (after.ru_utime - before.ru_utime) / steps,
                      "sys_s": (after.ru_stime - before.ru_stime) / steps,
                      "peak_rss_gb": after.ru_maxrss / 2**20, "base_rss_gb": base_rss}))


# (row label, variant, huge pages). Transparent huge pages (PyTorch's THP_MEM_ALLOC_ENABLE=1) are
# what `import omniseq` turns on; "before" runs as the issue measured it, on 4 KB pages.
ROWS = (
    ("before", "before", False),
    ("before, huge pages", "before", True),
    ("after, fp32", "after", True),
    ("after, fp32, 4 KB pages", "after", False),
    ("after, fp32 + recompute_states", "recompute_states", True),
    ("after, bf16-mixed (the recipe here)", "bf16-mixed", True),
    ("after, bf16-mixed, 4 KB pages", "bf16-mixed", False),
    ("after, bf16-mixed + recompute_states", "bf16-mixed+recompute", True),
)


def grid_step_benchmark(steps: int, threads: int, batch: int) -> None:
    results = {}
    for label, variant, huge_pages in ROWS:
        # torch reads the switch at its first allocation, libgomp its spin count when it loads:
        # each child gets them in its environment. "before" runs without omniseq's spin count,
        # as the issue measured it; the other rows with the one `import omniseq` sets.
        env = {**os.environ, "THP_MEM_ALLOC_ENABLE": "1" if huge_pages else "0", "GOMP_SPINCOUNT": "10000"}
        if variant == "before":
            env.pop("GOMP_SPINCOUNT")
        out = subprocess.run([sys.executable, __file__, "--grid-step-child", variant, "--steps", str(steps),
                              "--threads", str(threads), "--grid-batch", str(batch)],
                             capture_output=True, text=True, check=True, env=env)
        results[label] = json.loads(out.stdout.strip().splitlines()[-1])
        print(label, results[label], flush=True)
    g = {**GRID, "batch": batch}
    print(f"\nConvS5 training step, {g['height']}x{g['width']} grid, 1 variable, batch {g['batch']}, "
          f"{g['length']} in / {g['pred_len']} out, dim {g['dim']}, P {g['state_dim']}, depth {g['depth']}, "
          f"{threads} threads, {steps} steps each")
    print("| model | CPU s/step | user s | sys s | wall s/step | peak RSS GB | peak - before 1st step GB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        r["step_gb"] = r["peak_rss_gb"] - r["base_rss_gb"]
        print(f"| {name} | {r['cpu_s']:.2f} | {r['user_s']:.2f} | {r['sys_s']:.2f} | {r['wall_s']:.2f} | "
              f"{r['peak_rss_gb']:.2f} | {r['step_gb']:.2f} |")
    b = results["before"]
    for name, r in results.items():
        if name == "before":
            continue
        print(f"| before / {name} | {b['cpu_s'] / r['cpu_s']:.2f}x | | | {b['wall_s'] / r['wall_s']:.2f}x | "
              f"{b['peak_rss_gb'] / r['peak_rss_gb']:.2f}x | {b['step_gb'] / r['step_gb']:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid-step", action="store_true", help="time a training step on the 33x49 grid")
    parser.add_argument("--grid-step-child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--grid-batch", type=int, default=GRID["batch"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--path", default="wfde5_gb_hourly_jan2017")
    parser.add_argument("--models", nargs="+", default=["persistence", "convs5", "convlstm"])
    parser.add_argument("--pred-len", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=None, help="wall-clock cap per model")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--state-dim", type=int, default=None, help="ConvS5 state size P (default: --dim)")
    parser.add_argument("--dropout", type=float, default=0.1, help="ConvS5 branch dropout")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="32-true", help="Lightning precision, e.g. bf16-mixed")
    parser.add_argument("--csv", type=Path, default=Path("runs/benchmarks/spatiotemporal.csv"))
    args = parser.parse_args()
    if args.grid_step_child:
        grid_step_child(args.grid_step_child, args.steps, args.threads, args.grid_batch)
        return
    if args.grid_step:
        grid_step_benchmark(args.steps, args.threads, args.grid_batch)
        return
    from omniseq.data.gridded import GriddedDataModule

    dm = GriddedDataModule(args.path, seq_len=24, pred_len=args.pred_len, batch_size=args.batch_size, seed=args.seed)
    dm.setup()
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models:
        scores = persistence_scores(dm) if name == "persistence" else train_and_test(name, dm, args, args.csv.parent / "st_ckpt")
        row = {"model": name, "pred_len": args.pred_len, "epochs_budget": args.epochs,
               "device": "cuda" if torch.cuda.is_available() else "cpu", "seed": args.seed, "dim": args.dim,
               "depth": args.depth, "state_dim": args.state_dim or args.dim, **scores}
        rows.append(row)
        new = not args.csv.exists()
        with open(args.csv, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
        print(f"{name:12s} test MSE {scores['test/mse']:.4f}  MAE {scores['test/mae']:.4f}  "
              f"MSE@{args.pred_len}h {scores['test/mse_last']:.4f}", flush=True)
    print("\n| model | params | epochs | test MSE (all leads) | test MAE | MSE at last lead |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r.get('params', 0)} | {r.get('epochs', '-')} | {r['test/mse']:.4f} | "
              f"{r['test/mae']:.4f} | {r['test/mse_last']:.4f} |")


if __name__ == "__main__":
    main()
