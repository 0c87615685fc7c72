"""The ``omniseq`` command's front door: help and ``list`` without importing torch.

``fit``/``validate``/``test``/``predict`` go to LightningCLI (omniseq.recipes.cli),
imported only then, since torch and Lightning take seconds to import.
"""

from __future__ import annotations

import sys
from pathlib import Path

CONFIG_ROOT = Path(__file__).parent / "configs"
SUBCOMMANDS = ("fit", "validate", "test", "predict")

USAGE = """\
usage: omniseq {fit,validate,test,predict} --config RECIPE_OR_YAML [options]
       omniseq list
       omniseq convert OLD NEW

Train and evaluate omniseq models with Lightning recipes.

commands:
  fit        train (then test the best checkpoint)
  validate   one pass over the validation set
  test       one pass over the test set (--ckpt_path PATH)
  predict    predictions from a checkpoint
  list       mixers, backbones, recipes and datasets
  convert    OLD NEW: a file of an earlier omniseq version (only files you trust)

common options (after a command):
  --config NAME         a packaged recipe (see `omniseq list`) or a YAML file
  --budget_minutes M    stop training after M CPU-minutes (overrides the recipe's budget)
  --progress.every_seconds S
                        seconds between progress lines (default 30)
  --trainer.KEY VALUE   any Lightning Trainer option, e.g. --trainer.max_epochs 5

examples:
  omniseq fit --config forecasting/etth1_itransformer_96
  omniseq fit --config my.yaml --model.backbone.mixer gla --budget_minutes 10
  omniseq test --config forecasting/etth1_itransformer_96 --ckpt_path runs/.../best.ckpt

`omniseq fit --help` lists every option of a command.
"""


def list_recipes() -> list[str]:
    return sorted(str(p.relative_to(CONFIG_ROOT).with_suffix("")) for p in CONFIG_ROOT.rglob("*.yaml"))


def print_catalogue() -> None:
    from rich.console import Console
    from rich.table import Table

    from omniseq.recipes.catalogue import DATASETS, MIXERS, list_backbones

    table = Table(title="omniseq")
    table.add_column("kind")
    table.add_column("names")
    for kind, names in (
        ("mixers", MIXERS),
        ("backbones", list_backbones()),
        ("recipes", list_recipes()),
        ("datasets", DATASETS),
    ):
        table.add_row(kind, "\n".join(names))
    Console().print(table)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return
    if argv[0] == "list":
        print_catalogue()
        return
    if argv[0] == "convert":
        from omniseq.api._convert import main as convert

        convert(argv[1:])
        return
    if argv[0] in ("-V", "--version"):
        from omniseq import __version__

        print(f"omniseq {__version__}")
        return
    from omniseq.recipes.cli import run_cli

    run_cli(argv)


if __name__ == "__main__":
    main()
