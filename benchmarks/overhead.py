"""What the recipes cost on top of the model: steps per CPU-second, recipe vs a bare loop.

For each domain the packaged recipe is built by the CLI (``build_cli(run=False)``) and
then trained two ways on the same data, same model configuration, same optimizer:

* bare: a plain PyTorch loop (``DataLoader(shuffle=True)``, forward, loss, backward,
  ``optimizer.step``) over a fresh copy of the recipe's model;
* recipe: ``trainer.fit`` with everything the recipe has: Lightning's loop, the resumable
  sampler, logging, progress lines, checkpoint callbacks, RNG checkpointing, CPU budget.

Validation is switched off in both (it is work, not overhead). Steps per CPU-second is
counted after ``--warmup`` steps; the bare loop runs before and after the recipe and
its two rates are averaged, so a drift in machine load shows as their spread.

    python benchmarks/overhead.py                          # all three domains
    python benchmarks/overhead.py --domains forecasting --steps 300

The models: separation/fsdd_convtasnet is torchaudio's ConvTasNet; segmentation/
isbi2012_deit_tiny is timm's DeiT-T layout (omniseq's registered copy) with the
segmentation head; forecasting/etth1_itransformer_96 is iTransformer.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping

from omniseq.recipes.cli import build_cli, resolve_config_args

RECIPES = {
    "separation": "separation/fsdd_convtasnet",
    "segmentation": "segmentation/isbi2012_deit_tiny",
    "forecasting": "forecasting/etth1_itransformer_96",
}


def _loss(domain: str) -> Callable[[L.LightningModule, dict], torch.Tensor]:
    """The task's own training loss, called without a Trainer (training_step also logs)."""
    if domain == "separation":
        from omniseq.domains.audio.metrics import pit_si_snr

        return lambda task, batch: -pit_si_snr(task(batch["mixture"]), batch["sources"])[0].mean()
    if domain == "segmentation":
        return lambda task, batch: task.loss(task(batch["image"]), batch["mask"])
    return lambda task, batch: task.criterion(task._predict_batch(batch), batch["y"])


class _StepClock(L.Callback):
    """Process CPU time from the end of step ``warmup`` to the end of fit."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.steps, self.seconds = warmup, None, 0, 0.0

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.process_time()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.steps, self.seconds = trainer.global_step - self.warmup, time.process_time() - self.start


def bare_rate(task: L.LightningModule, loader: torch.utils.data.DataLoader, optimizer: torch.optim.Optimizer,
              loss_fn: Callable, clip: float | None, warmup: int, steps: int) -> float:
    task.train()
    done, start = 0, None
    while done < warmup + steps:
        for batch in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(task, batch)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(task.parameters(), clip)
            optimizer.step()
            done += 1
            if done == warmup:
                start = time.process_time()
            if done == warmup + steps:
                break
    return steps / (time.process_time() - start)


def _optimizer(task: L.LightningModule) -> torch.optim.Optimizer:
    config = task.configure_optimizers()
    if isinstance(config, dict):
        return config["optimizer"]
    if isinstance(config, (list, tuple)):
        first = config[0]
        return first[0] if isinstance(first, (list, tuple)) else first
    return config


def measure(domain: str, warmup: int, steps: int, every_steps: int | None = None) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as root:
        args = ["--config", RECIPES[domain], "--trainer.default_root_dir", root, "--trainer.limit_val_batches", "0",
                "--trainer.num_sanity_val_steps", "0", "--trainer.max_epochs", "-1", "--trainer.max_time", "null",
                "--trainer.max_steps", str(warmup + steps)]
        if every_steps:  # the recipes' cadence before time-based last.ckpt, for comparison
            args += ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                     "--trainer.callbacks.dirpath", f"{root}/every", "--trainer.callbacks.save_last", "true",
                     "--trainer.callbacks.save_top_k", "0", "--trainer.callbacks.every_n_train_steps", str(every_steps)]
        cli = build_cli(resolve_config_args(args), run=False)
        fresh = copy.deepcopy(cli.model)  # the recipe's model before any training
        cli.datamodule.setup("fit")
        recipe_loader = cli.datamodule.train_dataloader()
        loader = torch.utils.data.DataLoader(recipe_loader.dataset, batch_size=recipe_loader.batch_size, shuffle=True,
                                             collate_fn=recipe_loader.collate_fn, num_workers=recipe_loader.num_workers,
                                             drop_last=recipe_loader.drop_last)
        clip = cli.trainer.gradient_clip_val

        def bare() -> float:
            model = copy.deepcopy(fresh)
            return bare_rate(model, loader, _optimizer(model), _loss(domain), clip, warmup, steps)

        rates = [bare()]
        clock = _StepClock(warmup)
        # Without validation there is nothing for early stopping to monitor (it would raise).
        cli.trainer.callbacks[:] = [cb for cb in cli.trainer.callbacks if not isinstance(cb, EarlyStopping)]
        cli.trainer.callbacks.append(clock)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        recipe = clock.steps / clock.seconds
        checkpoints = len(list(Path(root).rglob("*.ckpt")))
        rates.append(bare())
    bare_mean = statistics.mean(rates)
    return {"bare": bare_mean, "bare_spread": abs(rates[0] - rates[1]) / bare_mean, "recipe": recipe,
            "ratio": recipe / bare_mean, "checkpoint_files": checkpoints}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domains", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--steps", type=int, default=None, help="measured steps (default per domain)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--every-steps", type=int, default=None,
                        help="also measure each recipe with last.ckpt every N steps (the old cadence was 50)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    default_steps = {"separation": 60, "segmentation": 60, "forecasting": 400}
    rows = []
    for domain in args.domains:
        steps = args.steps or default_steps[domain]
        result = measure(domain, args.warmup, steps)
        rows.append((domain, result))
        print(domain, result, flush=True)
        if args.every_steps:
            result = measure(domain, args.warmup, steps, args.every_steps)
            rows.append((f"{domain}, last.ckpt every {args.every_steps} steps", result))
            print(rows[-1], flush=True)
    print(f"\n{args.threads} threads; steps per CPU-second after {args.warmup} warm-up steps")
    print("| domain | bare loop steps/CPU-s | recipe steps/CPU-s | recipe / bare | bare before/after spread | "
          ".ckpt files |")
    print("|---|---:|---:|---:|---:|---:|")
    for domain, r in rows:
        print(f"| {domain} | {r['bare']:.3f} | {r['recipe']:.3f} | {r['ratio']:.3f} | "
              f"{100 * r['bare_spread']:.1f}% | {r['checkpoint_files']} |")


if __name__ == "__main__":
    main()
