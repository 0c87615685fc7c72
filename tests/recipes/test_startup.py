"""`omniseq --help` and `omniseq list` answer without importing torch, and the static
catalogue that lets `list` do so equals the real registries."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from omniseq.recipes import catalogue

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import sys
from omniseq.recipes.launcher import main
main({argv!r})
heavy = sorted(m for m in ("torch", "lightning", "timm", "numpy") if m in sys.modules)
print("HEAVY:", ",".join(heavy))
"""


def _run(argv: list[str]) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_help_and_list_do_not_import_torch():
    text = _run(["--help"])
    assert "usage: omniseq" in text and "--budget_minutes" in text
    assert text.rstrip().endswith("HEAVY:")
    text = _run(["list"])
    assert "forecasting/etth1_itransformer_96" in text and "vig_tiny_patch16_224" in text and "ETTh1" in text
    assert text.rstrip().endswith("HEAVY:")


def test_import_omniseq_does_not_import_torch_yet_registers_models_with_timm():
    probe = ("import sys, omniseq; assert 'torch' not in sys.modules, 'torch imported'\n"
             "import timm; print(timm.is_model('vig_tiny_patch16_224'), timm.is_model('vim_tiny_patch16_224'))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True"]


def test_static_catalogue_equals_the_registries():
    import omniseq.backbones  # noqa: F401  registers every mixer
    from omniseq.backbones.mixers import list_mixers
    from omniseq.data.registry import list_datasets

    catalogue.register_all_datasets()
    # Registration order follows import order, so compare the names as sets.
    assert sorted(catalogue.MIXERS) == sorted(list_mixers()), "update MIXERS in omniseq/recipes/catalogue.py"
    assert sorted(catalogue.DATASETS) == sorted(list_datasets()), "update DATASETS in omniseq/recipes/catalogue.py"


def test_the_console_script_enters_through_the_launcher():
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["omniseq"] == "omniseq.recipes.launcher:main"
