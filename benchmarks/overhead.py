"""What the recipes cost on top of the model: steps per CPU-second, recipe vs a bare loop.

For each domain the packaged recipe is built by the CLI (``build_cli(run=False)``) and
then trained two ways on the same data, same model configuration, same optimizer:

* bare: a plain PyTorch loop over a fresh copy of the recipe's model: a ``DataLoader`` over the
  recipe's training set in the order of the recipe's first epoch, as a plain list (the same
  batches; same batch size, collate, workers), the task's own loss,
  ``backward``, the recipe's gradient clipping, ``optimizer.step`` and the recipe's
  learning-rate schedule;
* recipe: ``trainer.fit`` with everything the recipe has: Lightning's loop, the resumable
  sampler, ``self.log`` every step, progress lines, checkpoint callbacks (the last.ckpt
  written at the end of fit is inside the measured time), RNG checkpointing, CPU budget.

Validation is switched off in both (it is work, not overhead). Steps per CPU-second is
counted after ``--warmup`` steps. The bare loop runs first and after each of ``--repeats``
recipe runs; each recipe run is compared with the mean of the bare runs either side of it
and the median ratio is reported with its range, so a drift in machine load shows.
``extra ms/step`` is the recipe's fixed cost per step: ``1000 * (1/recipe - 1/bare)``; the
CPU time of ``trainer.save_checkpoint`` inside the measured steps is shown per step beside it.

One thread by default: with two OpenMP threads on a loaded machine, the process's CPU
time also counts threads spin-waiting for a descheduled partner, which swamps the
difference measured here. ``--threads 2`` is for an idle machine.

    python benchmarks/overhead.py                          # all three domains
    python benchmarks/overhead.py --domains forecasting --steps 300
    python benchmarks/overhead.py --domains forecasting --recipe-args \\
        --model.backbone.d_model 16 --model.backbone.d_ff 16   # a tiny model: overhead alone

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
    "forecasting": "forecasting/etth1_itransformer_96",
    "separation": "separation/fsdd_convtasnet",
    "segmentation": "segmentation/isbi2012_deit_tiny",
}
DEFAULT_STEPS = {"forecasting": 200, "separation": 30, "segmentation": 40}


def _loss(domain: str) -> Callable[[L.LightningModule, dict], torch.Tensor]:
    """The task's own training loss, called without a Trainer (training_step also logs)."""
    if domain == "separation":
        from omniseq.domains.audio.metrics import pit_si_snr

        return lambda task, batch: -pit_si_snr(task(batch["mixture"]), batch["sources"])[0].mean()
    if domain == "segmentation":
        return lambda task, batch: task.loss(task(batch["image"]), batch["mask"])
    return lambda task, batch: task.criterion(task._predict_batch(batch), batch["y"])


class _StepClock(L.Callback):
    """Process CPU time from the end of step ``warmup`` to the end of fit (final checkpoint included),
    and the part of it spent writing checkpoints."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.steps, self.seconds = warmup, None, 0, 0.0
        self.checkpoint_seconds = 0.0

    def time_checkpoints(self, trainer: L.Trainer) -> None:
        save = trainer.save_checkpoint

        def timed_save(*args, **kwargs) -> None:
            begin = time.process_time()
            save(*args, **kwargs)
            if self.start is not None:
                self.checkpoint_seconds += time.process_time() - begin

        trainer.save_checkpoint = timed_save

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.process_time()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.steps, self.seconds = trainer.global_step - self.warmup, time.process_time() - self.start


def _optimizer(task: L.LightningModule) -> tuple[torch.optim.Optimizer, object | None, str]:
    """The task's optimizer, its scheduler (or None) and the scheduler's interval."""
    config = task.configure_optimizers()
    if isinstance(config, torch.optim.Optimizer):
        return config, None, "epoch"
    if isinstance(config, dict):
        scheduler = config.get("lr_scheduler")
        if isinstance(scheduler, dict):
            return config["optimizer"], scheduler["scheduler"], scheduler.get("interval", "epoch")
        return config["optimizer"], scheduler, "epoch"
    first = config[0]
    return (first[0] if isinstance(first, (list, tuple)) else first), None, "epoch"


def bare_rate(task: L.LightningModule, loader: torch.utils.data.DataLoader, loss_fn: Callable,
              clip: float | None, warmup: int, steps: int) -> float:
    """Steps per CPU-second of a plain training loop after ``warmup`` steps."""
    optimizer, scheduler, interval = _optimizer(task)
    # ReduceLROnPlateau follows validation, which neither side runs here.
    stepped = scheduler if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) else None
    task.train()
    done, start = 0, time.process_time()
    while done < warmup + steps:
        for batch in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(task, batch)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(task.parameters(), clip)
            optimizer.step()
            if stepped is not None and interval == "step":
                stepped.step()
            done += 1
            if done == warmup:
                start = time.process_time()
            if done == warmup + steps:
                break
        else:
            if stepped is not None and interval == "epoch":
                stepped.step()
    return steps / (time.process_time() - start)


def _build(domain: str, root: str, warmup: int, steps: int, recipe_args: list[str]):
    args = ["--config", RECIPES[domain], "--trainer.default_root_dir", root, "--trainer.limit_val_batches", "0",
            "--trainer.num_sanity_val_steps", "0", "--trainer.max_epochs", "-1", "--trainer.max_time", "null",
            "--trainer.max_steps", str(warmup + steps), *recipe_args]
    return build_cli(resolve_config_args(args), run=False)


def recipe_rate(cli, warmup: int) -> tuple[float, float, int]:
    """Steps per CPU-second of ``trainer.fit``, checkpoint-write CPU ms per step, .ckpt files written."""
    clock = _StepClock(warmup)
    # Without validation there is nothing for early stopping to monitor (it would raise).
    cli.trainer.callbacks[:] = [cb for cb in cli.trainer.callbacks if not isinstance(cb, EarlyStopping)]
    cli.trainer.callbacks.append(clock)
    clock.time_checkpoints(cli.trainer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    files = len(list(Path(cli.trainer.default_root_dir).rglob("*.ckpt")))
    return clock.steps / clock.seconds, 1000 * clock.checkpoint_seconds / clock.steps, files


def measure(domain: str, warmup: int, steps: int, recipe_args: list[str], repeats: int) -> dict[str, float]:
    """Bare loop, then ``repeats`` times (recipe, bare loop); each recipe run against the mean of the
    bare runs either side of it, the median of those ratios reported."""
    with tempfile.TemporaryDirectory() as root:
        cli = _build(domain, f"{root}/0", warmup, steps, recipe_args)
        fresh = copy.deepcopy(cli.model)  # the recipe's model before any training
        cli.datamodule.setup("fit")
        recipe_loader = cli.datamodule.train_dataloader()
        # The recipe's own first-epoch order as a plain list: the same batches (separation
        # mixtures differ in length, so other batches would cost other times).
        order = list(recipe_loader.sampler)
        loader = torch.utils.data.DataLoader(recipe_loader.dataset, batch_size=recipe_loader.batch_size, sampler=order,
                                             collate_fn=recipe_loader.collate_fn, num_workers=recipe_loader.num_workers,
                                             drop_last=recipe_loader.drop_last)
        clip = cli.trainer.gradient_clip_val
        bares, recipes, checkpoint_ms = [bare_rate(copy.deepcopy(fresh), loader, _loss(domain), clip, warmup, steps)], [], []
        for repeat in range(repeats):
            if repeat:
                cli = _build(domain, f"{root}/{repeat}", warmup, steps, recipe_args)
            rate, ms, files = recipe_rate(cli, warmup)
            recipes.append(rate)
            checkpoint_ms.append(ms)
            bares.append(bare_rate(copy.deepcopy(fresh), loader, _loss(domain), clip, warmup, steps))
    ratios = [r / statistics.mean(bares[i:i + 2]) for i, r in enumerate(recipes)]
    bare, recipe = statistics.mean(bares), statistics.median(recipes)
    return {"bare": bare, "bare_spread": (max(bares) - min(bares)) / bare, "recipe": recipe,
            "ratio": statistics.median(ratios), "ratio_range": (min(ratios), max(ratios)),
            "extra_ms": 1000 * (1 / recipe - 1 / bare), "checkpoint_ms": statistics.median(checkpoint_ms),
            "checkpoint_files": files}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domains", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--steps", type=int, default=None, help=f"measured steps (default {DEFAULT_STEPS})")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="recipe runs per domain, each between two bare runs")
    parser.add_argument("--recipe-args", nargs=argparse.REMAINDER, default=[],
                        help="further CLI arguments for every recipe (and so for its bare loop's model)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for domain in args.domains:
        result = measure(domain, args.warmup, args.steps or DEFAULT_STEPS[domain], args.recipe_args, args.repeats)
        rows.append((domain, result))
        print(domain, result, flush=True)
    print(f"\n{args.threads} thread(s); steps per CPU-second after {args.warmup} warm-up steps; "
          f"{args.repeats} recipe run(s) between {args.repeats + 1} bare runs"
          + (f"; recipe arguments {' '.join(args.recipe_args)}" if args.recipe_args else ""))
    print("| domain (recipe) | steps | bare loop steps/CPU-s | recipe steps/CPU-s | recipe / bare | "
          "(min-max) | extra ms/step | of which checkpoint writes | bare runs' spread | .ckpt files |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for domain, r in rows:
        print(f"| {domain} (`{RECIPES[domain]}`) | {args.steps or DEFAULT_STEPS[domain]} | {r['bare']:.3f} | "
              f"{r['recipe']:.3f} | {r['ratio']:.3f} | {r['ratio_range'][0]:.3f}-{r['ratio_range'][1]:.3f} | "
              f"{r['extra_ms']:.1f} | {r['checkpoint_ms']:.1f} | "
              f"{100 * r['bare_spread']:.1f}% | {r['checkpoint_files']} |")


if __name__ == "__main__":
    main()
