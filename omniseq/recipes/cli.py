"""The ``omniseq`` command: LightningCLI plus recipe names and ``omniseq list``.

    omniseq fit --config forecasting/etth1_itransformer_96
    omniseq fit --config my.yaml --model.backbone.mixer gla --trainer.max_epochs 5
    omniseq test --config ... --ckpt_path best
    omniseq fit --config forecasting/etth1_itransformer_96 --budget_minutes 10
    omniseq list
    omniseq convert OLD NEW     (a file of an earlier omniseq version; only files you trust)

``omniseq --help`` and ``omniseq list`` are answered by omniseq.recipes.launcher
without importing torch; this module is the LightningCLI behind the other commands.

Scaling out is Lightning's (``--trainer.strategy ddp --trainer.devices 8
--trainer.num_nodes 2``); ``fsdp_blocks`` and ``fsdp_blocks_checkpointed`` name
FSDP wrapped per omniseq block (``omniseq.recipes.strategies``).
"""

from __future__ import annotations

import importlib
import sys
from contextlib import contextmanager
from pathlib import Path

import lightning as L
from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from omniseq.recipes.callbacks import CPUTimeBudget
from omniseq.recipes.launcher import CONFIG_ROOT, list_recipes, print_catalogue
from omniseq.recipes.launcher import main as main
from omniseq.recipes.progress import ProgressLines
from omniseq.recipes.quiet import silence_lightning_noise
from omniseq.recipes.strategies import register_block_strategies

__all__ = ["CONFIG_ROOT", "OmniseqCLI", "build_cli", "list_recipes", "main", "print_catalogue",
           "resolve_config", "resolve_config_args", "run_cli"]


def _import_class(class_path: object) -> type | None:
    """The class a config's ``class_path`` names (configs are code: LightningCLI imports it too)."""
    module, _, name = str(class_path or "").rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None
    return found if isinstance(found, type) else None


def resolve_config(name: str) -> str:
    """A YAML path is used as is; a recipe name maps to the packaged YAML."""
    path = Path(name)
    if path.is_file():
        return str(path)
    recipe = CONFIG_ROOT / f"{name.removesuffix('.yaml')}.yaml"
    if recipe.is_file():
        return str(recipe)
    raise SystemExit(
        f"omniseq: --config {name!r} is neither a file nor a recipe name. "
        f"Recipes: {', '.join(list_recipes())}"
    )


def resolve_config_args(argv: list[str]) -> list[str]:
    resolved = []
    it = iter(argv)
    for arg in it:
        if arg == "--config":
            resolved += [arg, resolve_config(next(it, ""))]
        elif arg.startswith("--config="):
            resolved.append("--config=" + resolve_config(arg.split("=", 1)[1]))
        else:
            resolved.append(arg)
    return resolved


class OmniseqCLI(LightningCLI):
    """LightningCLI that prints progress lines, takes ``--budget_minutes`` and tests the
    best checkpoint right after ``fit``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # A forced callback: every recipe prints plain progress lines (`--progress.every_seconds`).
        parser.add_lightning_class_args(ProgressLines, "progress")
        parser.add_argument(
            "--budget_minutes", type=float | None, default=None,
            help="Stop training after this many CPU-minutes: sets the recipe's CPUTimeBudget, or adds one.",
        )

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        from omniseq.recipes.checkpoints import use_atomic_checkpoints

        extra = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        if config.get("enable_progress_bar") is False:  # Lightning refuses a progress bar then
            extra = [cb for cb in extra if not isinstance(cb, ProgressLines)]
        minutes = self._get(self.config_init, "budget_minutes", None)
        if minutes is not None:
            budgets = [cb for cb in config.get("callbacks") or [] if isinstance(cb, CPUTimeBudget)]
            for budget in budgets:
                budget.set_minutes(minutes)
            if not budgets:
                extra.append(CPUTimeBudget(minutes))
        if config.get("plugins"):
            config = _resolve_auto_precision(config)
        trainer = self._instantiate_trainer(config, extra)
        use_atomic_checkpoints(trainer)  # no lost last.ckpt when a run is killed mid-write
        if trainer.fast_dev_run:  # Lightning's save_last at train end ignores fast_dev_run: no dev-run last.ckpt
            for callback in trainer.checkpoint_callbacks:
                callback.save_last = False
        return trainer

    def before_instantiate_classes(self) -> None:
        # Settings that follow the data (channels, classes, crop) are filled into the model config
        # by the task's `follow_data` hook, so a recipe states them once, under data.
        subcommand = self.config.get("subcommand")
        section = self.config[subcommand] if subcommand else self.config
        model = section.get("model")
        task = _import_class(model.get("class_path")) if hasattr(model, "get") else None
        if hasattr(task, "follow_data"):
            task.follow_data(section, subcommand)

    def after_fit(self) -> None:
        if self.trainer.fast_dev_run or not hasattr(self.datamodule, "test_dataloader"):
            return
        if not getattr(self.datamodule, "has_test_split", True):
            rank_zero_info("omniseq: no test split in the data, so no test after fit (training images are "
                           "never used as test images); add one to measure")
            return
        best = getattr(self.trainer.checkpoint_callback, "best_model_path", "")
        if isinstance(self.trainer.strategy, FSDPStrategy):
            self._test_after_fsdp_fit(best)
            return
        # The path itself: "best" is ambiguous to Lightning beside a second (last.ckpt) ModelCheckpoint.
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)

    def _test_after_fsdp_fit(self, best: str) -> None:
        # Lightning cannot load a checkpoint into the module it has just fitted with
        # FSDP: its blocks stay wrapped while the root wrapper is gone
        # (Lightning-AI/pytorch-lightning#20373). A fresh copy from the file is tested.
        if not best or not Path(best).is_file():
            rank_zero_warn(
                "omniseq: no test after an FSDP fit without a single-file best checkpoint "
                "(a ModelCheckpoint and state_dict_type='full'); run `omniseq test --ckpt_path <checkpoint>`"
            )
            return
        model = type(self.model).load_from_checkpoint(best, map_location="cpu")
        self.trainer.test(model, datamodule=self.datamodule)

    def _parse_ckpt_path(self) -> None:
        # LightningCLI rebuilds the model from the class paths in the checkpoint: read it as
        # data, refuse classes omniseq does not register, and another task's checkpoint.
        from omniseq.recipes.checkpoints import check_checkpoint_matches_config, checked_ckpt_path

        subcommand = self.config.get("subcommand")
        if subcommand and self.config[subcommand].get("ckpt_path") not in (None, "last", "best", "hpc"):
            section = self.config[subcommand]
            section["ckpt_path"] = checked_ckpt_path(section["ckpt_path"], section.as_dict())
        check_checkpoint_matches_config(self.config)
        super()._parse_ckpt_path()

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict:
        from omniseq.recipes.checkpoints import resolve_last_checkpoint

        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if kwargs.get("ckpt_path") == "last":  # an unreadable last.ckpt falls back to the previous good one
            kwargs["ckpt_path"] = resolve_last_checkpoint(self.trainer)
        return kwargs


def _resolve_auto_precision(config: dict) -> dict:
    """A recipe's :class:`~omniseq.recipes.precision.BF16WhereNative` becomes the precision it
    stands for (bf16-mixed or 32-true for the device the run uses), so that every strategy
    (FSDP and DDP bring their own precision plugins) gets a plain precision flag; an explicit
    ``--trainer.precision`` wins instead of Lightning refusing both."""
    import torch
    from lightning.pytorch.utilities import rank_zero_info

    from omniseq.recipes.precision import BF16WhereNative, precision_for

    plugins = config["plugins"] if isinstance(config["plugins"], list) else [config["plugins"]]
    if not any(isinstance(p, BF16WhereNative) for p in plugins):
        return config
    rest = [p for p in plugins if not isinstance(p, BF16WhereNative)] or None
    precision = config.get("precision")
    if precision is None:
        accelerator = config.get("accelerator", "auto")
        on_cpu = not torch.cuda.is_available() or (isinstance(accelerator, str) and accelerator == "cpu")
        precision, line = precision_for("cpu" if on_cpu else "cuda")
        rank_zero_info(line)
    return {**config, "plugins": rest, "precision": precision}


def build_cli(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    from omniseq.recipes.spatiotemporal import register_config_resolvers

    silence_lightning_noise()
    register_block_strategies()  # --trainer.strategy fsdp_blocks[_checkpointed]
    register_config_resolvers()  # ${grid_channels:${data.init_args}}: channels that follow the data
    # Recipes write `${data.init_args.seq_len}`; under a subcommand the config
    # sits below `fit.`/`test.`, so absolute paths are read relative to it.
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    # Given `args` stand in for the command line: LightningCLI warns when it gets both.
    with _command_line(args if args is not None else sys.argv[1:]):
        return OmniseqCLI(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            # omegaconf+ resolves ${data.init_args.seq_len}-style links after CLI overrides.
            parser_kwargs={"parser_mode": "omegaconf+"},
            args=None,
            run=run,
        )


@contextmanager
def _command_line(argv: list[str]):
    saved = sys.argv
    sys.argv = [saved[0] if saved else "omniseq", *argv]
    try:
        yield
    finally:
        sys.argv = saved


def run_cli(argv: list[str]) -> LightningCLI:
    """Run one ``omniseq fit/validate/test/predict ...`` command line."""
    return build_cli(resolve_config_args(argv))


if __name__ == "__main__":
    main()
