"""BF16WhereNative: bf16-mixed where the hardware has bf16, fp32 elsewhere, said in one line;
an explicit --trainer.precision replaces it."""

from __future__ import annotations

import pytest
import torch

from omniseq.recipes import precision
from omniseq.recipes.cli import build_cli, resolve_config
from omniseq.recipes.precision import BF16WhereNative, native_bf16

CPUINFO = "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 {extra}\n"


@pytest.mark.parametrize("extra, native", [("avx512f avx512_bf16", True), ("amx_bf16 amx_tile", True),
                                           ("avx512f avx512bw", False), ("", False)])
def test_native_bf16_reads_the_cpu_flags(extra, native):
    got, reason = native_bf16("cpu", CPUINFO.format(extra=extra))
    assert got is native
    assert ("AVX512-BF16" in reason or "AMX-BF16" in reason) if native else "emulated" in reason


@pytest.mark.parametrize("native", [True, False])
def test_the_plugin_autocasts_to_bf16_only_where_native(monkeypatch, caplog, native):
    monkeypatch.setattr(precision, "native_bf16", lambda device: (native, "because"))
    caplog.set_level("INFO")
    plugin = BF16WhereNative()
    assert plugin.precision == ("bf16-mixed" if native else "32-true")
    with plugin.forward_context():
        y = torch.nn.functional.linear(torch.randn(2, 3), torch.randn(4, 3))
    assert y.dtype == (torch.bfloat16 if native else torch.float32)
    with plugin.forward_context():  # said once, at first use
        pass
    assert caplog.text.count(f"omniseq: precision {plugin.precision} (because)") == 1


BUDGET = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
          "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
          "--trainer.accelerator", "cpu", "--data.batch_size", "4"]


def _demo(root, *extra):
    return ["--config", resolve_config("spatiotemporal/demo_convs5"), "--trainer.default_root_dir", str(root),
            "--trainer.plugins", "omniseq.recipes.precision.BF16WhereNative", *BUDGET, *extra]


def test_a_recipe_with_the_plugin_trains_and_an_explicit_precision_replaces_it(tmp_path, monkeypatch, caplog):
    """The CLI turns the plugin into the precision flag it stands for (so any strategy can bring
    its own precision plugin) and says why; an explicit --trainer.precision wins."""
    caplog.set_level("INFO")
    for native, expected in ((False, "32-true"), (True, "bf16-mixed")):
        monkeypatch.setattr(precision, "native_bf16", lambda device, native=native: (native, f"{device} test"))
        cli = build_cli(_demo(tmp_path / expected), run=False)
        assert not isinstance(cli.trainer.precision_plugin, BF16WhereNative)
        assert cli.trainer.precision == expected
        assert f"omniseq: precision {expected} (cpu test)" in caplog.text
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 1
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in cli.model.parameters())
    monkeypatch.setattr(precision, "native_bf16", lambda device: (True, "test"))
    explicit = build_cli(_demo(tmp_path / "fp32", "--trainer.precision", "32-true"), run=False)
    assert explicit.trainer.precision == "32-true"


def test_the_plugin_decides_for_the_device_the_model_is_on(monkeypatch):
    seen = []
    monkeypatch.setattr(precision, "native_bf16", lambda device: (seen.append(device) or device == "cpu", device))
    plugin = BF16WhereNative()
    plugin._decide("cuda")  # as built on a machine with a GPU
    assert plugin.precision == "32-true"
    plugin.connect(torch.nn.Linear(2, 2), [], [])  # the model stayed on the CPU
    assert plugin.device == "cpu" and plugin.precision == "bf16-mixed" and seen[-1] == "cpu"
