"""Gridded recipes follow the data (channels, land mask) and report baselines per lead (issue 15)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omniseq.data.gridded import GriddedDataModule
from omniseq.data.synthetic import make_synthetic_grid
from omniseq.recipes.cli import build_cli, resolve_config

BUDGET = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
          "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
          "--trainer.accelerator", "cpu", "--data.batch_size", "8"]


def demo(subcommand: str, root, *extra: str) -> list[str]:
    return [subcommand, "--config", resolve_config("spatiotemporal/demo_convs5"),
            "--trainer.default_root_dir", str(root), *BUDGET, *extra]


def per_lead_oracle(dm: GriddedDataModule) -> dict[str, np.ndarray]:
    """Loop reference: MSE per lead over every test window and land cell, for both baselines."""
    land = dm.mask.numpy().astype(bool)
    frames, hours = dm.frames.numpy(), np.asarray(dm.dates.hour)
    train_stop = dm.borders[0][1]
    diurnal = {h: frames[:train_stop][hours[:train_stop] == h].mean(0) for h in range(24)}
    start, stop = dm.borders[2]
    errors = {"persistence": [], "climatology": []}
    for first in range(start, stop - dm.seq_len - dm.pred_len + 1):
        leads = range(first + dm.seq_len, first + dm.seq_len + dm.pred_len)
        last_input = frames[first + dm.seq_len - 1]
        errors["persistence"].append([((last_input - frames[t]) ** 2)[:, land].mean() for t in leads])
        errors["climatology"].append([((diurnal[hours[t]] - frames[t]) ** 2)[:, land].mean() for t in leads])
    return {name: np.mean(values, axis=0) for name, values in errors.items()}


def test_one_variable_grid_trains_unedited_and_reports_baselines_per_lead(tmp_path, capsys):
    cli = build_cli(demo("fit", tmp_path, "--data.synthetic", "{n_variables: 1}"))
    assert cli.datamodule.num_channels == 1 and cli.model.backbone.encoder.in_channels == 1
    out = capsys.readouterr().out
    assert "test MSE per lead time" in out and all(f"+{k}" in out for k in range(1, 7))
    header = next(line for line in out.splitlines() if line.strip().startswith("lead"))
    assert header.split() == ["lead", "model", "persistence", "climatology"]
    scores, oracle = cli.model.lead_scores, per_lead_oracle(cli.datamodule)
    for name in ("persistence", "climatology"):
        np.testing.assert_allclose(scores[name].numpy(), oracle[name], rtol=1e-4)
    assert scores["model"].shape == (6,) and torch.isfinite(scores["model"]).all()
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()


def test_fast_dev_run_writes_no_checkpoint(tmp_path):
    build_cli(demo("fit", tmp_path, "--trainer.fast_dev_run", "true"))
    assert list(tmp_path.rglob("*.ckpt")) == []


def test_testing_without_a_checkpoint_file_fails_clearly(tmp_path):
    with pytest.raises(ValueError, match=r"testing an untrained model; pass the checkpoint to test.*--ckpt_path"):
        build_cli(demo("test", tmp_path))


def grid_with_land_sea_mask():
    grid = make_synthetic_grid(n_variables=2, seed=4)
    lsm = np.zeros((grid.sizes["lat"], grid.sizes["lon"]))
    lsm[3:9, 4:12] = 1.0  # a smaller island than the data's disc
    return grid.assign(lsm=(("lat", "lon"), lsm)), lsm.astype(bool)


def test_mask_from_a_variable_a_file_or_none(tmp_path):
    grid, island = grid_with_land_sea_mask()
    by_default = GriddedDataModule(data=grid)
    assert by_default.variables == ["v0", "v1"]  # the 2D mask is no input channel
    np.testing.assert_array_equal(by_default.mask.numpy().astype(bool), np.isfinite(grid["v0"].isel(time=0)).to_numpy())
    by_variable = GriddedDataModule(data=grid, mask="lsm")
    np.testing.assert_array_equal(by_variable.mask.numpy().astype(bool), island)
    grid[["lsm"]].to_netcdf(tmp_path / "lsm.nc")
    by_file = GriddedDataModule(data=grid.drop_vars("lsm"), mask=str(tmp_path / "lsm.nc"))
    np.testing.assert_array_equal(by_file.mask.numpy(), by_variable.mask.numpy())
    # Scaling follows the chosen cells.
    train = grid["v0"].isel(time=slice(0, 504)).to_numpy()[:, island]
    np.testing.assert_allclose(by_file.mean[0], train.mean(), rtol=1e-6)
    filled = grid.drop_vars("lsm").fillna(0.0)
    assert GriddedDataModule(data=filled, mask="none").mask.all()


def test_mask_errors_name_the_variable_and_cell(tmp_path):
    grid, _ = grid_with_land_sea_mask()
    with pytest.raises(ValueError, match=r"variable 'v0' is NaN/inf at time=2017-01-01 00:00:00, cell \(lat index 0, "
                                         r"lon index 0\), inside mask 'none'"):
        GriddedDataModule(data=grid, mask="none")
    with pytest.raises(ValueError, match=r"mask 'sea' is neither a variable of the data"):
        GriddedDataModule(data=grid, mask="sea")


def test_a_missing_grid_file_stops_with_its_name(tmp_path):
    with pytest.raises(SystemExit, match=r"cannot open the gridded data to count its channels: .*nope\.nc"):
        build_cli(demo("fit", tmp_path, "--data.path", str(tmp_path / "nope.nc")))
