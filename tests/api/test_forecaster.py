"""Forecaster: fit on tables, future timestamps on the original scale, rollout, evaluate, plot, save/load,
paper defaults from the recipes, checkpoints in a folder the user keeps, and CLI checkpoints."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from omniseq.api.forecaster import Forecaster
from omniseq.data.forecasting import ForecastingDataModule
from omniseq.data.synthetic import make_synthetic_series
from omniseq.recipes.checkpoints import read_checkpoint
from omniseq.recipes.cli import build_cli, resolve_config

TINY = dict(seq_len=24, pred_len=8, batch_size=16, max_epochs=1, model_options={"d_model": 16, "d_ff": 16},
            trainer_options={"limit_train_batches": 3, "limit_val_batches": 2, "accelerator": "cpu"})


@pytest.fixture(scope="module", autouse=True)
def _runs_in_a_temporary_folder(tmp_path_factory):
    # Forecaster's default checkpoint folder is ./runs/forecaster; keep it out of the repository.
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("cwd"))
        yield


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    # Large offsets and scales so that a forecast left in normalised units would stand out.
    data = make_synthetic_series(n_rows=600, n_channels=3, seed=2)
    data["OT"] = data["OT"] * 50 + 1000
    return data


@pytest.fixture(scope="module")
def fitted(frame) -> Forecaster:
    return Forecaster(**TINY).fit(frame)


def test_predict_returns_future_timestamps_on_the_original_scale(fitted, frame):
    future = fitted.predict()
    assert list(future.columns) == ["x0", "x1", "OT"] and len(future) == 8
    expected = pd.date_range(frame["date"].iloc[-1], periods=9, freq="h")[1:]
    pd.testing.assert_index_equal(future.index, pd.DatetimeIndex(expected, name="date"))
    # Within the range of the data's own scale, far from the normalised one.
    assert abs(future["OT"].mean() - frame["OT"].mean()) < 5 * frame["OT"].std()
    assert future["OT"].mean() > 500


def test_predict_matches_the_model_on_the_last_window(fitted):
    dm = fitted.datamodule
    window = dm.window_at()
    with torch.no_grad():
        expected = dm.inverse_transform(fitted.task(window["x"], window["x_mark"])[0]).numpy()
    np.testing.assert_allclose(fitted.predict(8).to_numpy(), expected, rtol=1e-4, atol=1e-3)


def test_rollout_past_the_model_horizon_feeds_forecasts_back(fitted):
    long = fitted.predict(20)
    assert len(long) == 20 and long.index.is_monotonic_increasing
    np.testing.assert_allclose(long.iloc[:8].to_numpy(), fitted.predict(8).to_numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="horizon must be positive"):
        fitted.predict(0)


def test_evaluate_is_consistent_between_scales(fitted):
    scores = fitted.evaluate()
    assert set(scores) == {"mse", "mae", "mse_original", "mae_original"}
    assert 0 < scores["mse"] < 5 and scores["mse_original"] > scores["mse"]
    with pytest.raises(ValueError, match="split must be"):
        fitted.evaluate("holdout")


def test_plot_draws_history_truth_and_forecast_over_time(fitted, frame):
    figure = fitted.plot(channels=["OT"])
    lines = figure.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["history", "truth", "forecast"]
    assert len(lines[0].get_xdata()) == 24 and len(lines[2].get_xdata()) == 8
    # The x axis holds the window's timestamps: the last test window ends at the last row.
    truth_times = pd.DatetimeIndex(lines[1].get_xdata())
    pd.testing.assert_index_equal(truth_times, pd.DatetimeIndex(frame["date"].iloc[-8:]), check_names=False)
    assert pd.DatetimeIndex(lines[0].get_xdata())[-1] == frame["date"].iloc[-9]


def test_naive_baseline_repeats_the_last_value(fitted):
    dm = fitted.datamodule
    data = dm.datasets["test"]
    errors = [((data[i]["x"][-1] - data[i]["y"]) ** 2).mean().item() for i in range(len(data))]
    assert fitted.evaluate(forecast="naive")["mse"] == pytest.approx(np.mean(errors), rel=1e-5)


def test_defaults_are_the_paper_recipe_and_a_recipe_can_be_named():
    paper = Forecaster().config
    assert (paper["lr"], paper["lr_decay"], paper["seq_len"], paper["pred_len"], paper["batch_size"]) == (
        1e-4, 0.5, 96, 96, 32)
    assert (paper["max_epochs"], paper["patience"], paper["seed"]) == (10, 3, 2021)
    assert paper["model_options"] == {"d_model": 256, "d_ff": 256, "depth": 2, "num_heads": 8, "dropout": 0.1}
    tsmixer = Forecaster("tsmixer").config
    assert tsmixer["model_options"] == {"n_block": 2, "ff_dim": 64, "dropout": 0.9} and tsmixer["lr_decay"] == 1.0
    named = Forecaster(recipe="forecasting/etth1_itransformer_336", lr=3e-4, model_options={"d_model": 64}).config
    assert named["pred_len"] == 336 and named["lr"] == 3e-4 and named["model_options"]["d_model"] == 64
    with pytest.raises(ValueError, match="recipe 'forecasting/etth1_tsmixer_96' builds 'tsmixer'"):
        Forecaster("itransformer", recipe="forecasting/etth1_tsmixer_96")


def test_checkpoints_stay_in_default_root_dir(frame, tmp_path, capsys):
    fc = Forecaster(**{**TINY, "default_root_dir": tmp_path / "run"}).fit(frame)
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    assert best.is_file() and f"best checkpoint {best}" in capsys.readouterr().out
    state = read_checkpoint(best)["state_dict"]
    for name, value in fc.task.state_dict().items():
        torch.testing.assert_close(value, state[name])
    # The checkpoint carries the settings and the series state: it forecasts on its own.
    pd.testing.assert_frame_equal(Forecaster.from_checkpoint(best).predict(12), fc.predict(12))


def test_default_checkpoint_folders_do_not_overwrite_each_other(frame, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    options = {**TINY, "trainer_options": {**TINY["trainer_options"], "limit_train_batches": 1}}
    first, second = Forecaster(**options).fit(frame), Forecaster(**options, seed=1).fit(frame)
    runs = tmp_path / "runs" / "forecaster"
    assert sorted(p.name for p in runs.iterdir()) == ["version_0", "version_1"]
    for version, fitted_model in (("version_0", first), ("version_1", second)):
        reloaded = Forecaster.from_checkpoint(runs / version / "checkpoints" / "best.ckpt")
        pd.testing.assert_frame_equal(reloaded.predict(8), fitted_model.predict(8))


def test_from_checkpoint_of_a_cli_run_predicts_with_the_stored_scaling(frame, tmp_path):
    path = tmp_path / "series.csv"
    frame.to_csv(path, index=False)
    build_cli(["fit", "--config", resolve_config("forecasting/demo_itransformer"), "--data.path", str(path),
               "--data.seq_len", "24", "--data.pred_len", "8", "--data.batch_size", "16",
               "--model.backbone.d_model", "16", "--model.backbone.d_ff", "16", "--trainer.max_epochs", "1",
               "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2",
               "--trainer.limit_test_batches", "2", "--trainer.accelerator", "cpu",
               "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "run")])
    loaded = Forecaster.from_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt")
    assert (loaded.config["seq_len"], loaded.config["pred_len"], loaded.config["model_options"]["d_model"]) == (24, 8, 16)
    # Oracle: the same weights on a DataModule built afresh from the file (its own scaler).
    dm = ForecastingDataModule(str(path), seq_len=24, pred_len=8)
    window = dm.window_at()
    with torch.no_grad():
        expected = dm.inverse_transform(loaded.task(window["x"], window["x_mark"])[0]).numpy()
    future = loaded.predict(8)
    np.testing.assert_allclose(future.to_numpy(), expected, rtol=1e-4, atol=1e-3)
    assert list(future.columns) == ["x0", "x1", "OT"] and future.index[0] == frame["date"].iloc[-1] + pd.Timedelta("1h")
    assert "mse" in loaded.set_data(frame).evaluate()


def test_save_load_round_trip_predicts_without_data(fitted, tmp_path):
    path = fitted.save(tmp_path / "fc.pt")
    loaded = Forecaster.load(path)
    pd.testing.assert_frame_equal(loaded.predict(12), fitted.predict(12))
    with pytest.raises(RuntimeError, match="set_data"):
        loaded.evaluate()


def test_xarray_in_dataarray_out_and_ms_limits(frame):
    dataset = xr.Dataset({c: ("time", frame[c].to_numpy()) for c in ("x0", "x1", "OT")},
                         coords={"time": frame["date"].to_numpy()})
    fc = Forecaster(features="MS", **TINY).fit(dataset)
    out = fc.predict(5)
    assert isinstance(out, xr.DataArray) and out.dims == ("time", "variable")
    assert list(out["variable"].values) == ["OT"] and out.sizes["time"] == 5
    with pytest.raises(ValueError, match="needs features 'M' or 'S'"):
        fc.predict(9)


def test_unfitted_and_bad_model_errors():
    with pytest.raises(ValueError, match="model must be one of"):
        Forecaster("prophet")
    with pytest.raises(RuntimeError, match="call fit"):
        Forecaster().predict()


def test_tsmixer_with_a_swapped_mixer_fits(frame):
    fc = Forecaster("tsmixer", mixer="gla", **{**TINY, "model_options": {"ff_dim": 8}}).fit(frame)
    assert fc.predict(8).shape == (8, 3)
