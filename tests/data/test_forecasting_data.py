"""Forecasting data: standard splits, scaling on train rows, window alignment, registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from omniseq.data import registry
from omniseq.data.forecasting import (
    ETT_COLUMNS,
    ForecastingDataModule,
    resolve_split,
    split_borders,
)
from omniseq.data.synthetic import make_synthetic_series
from omniseq.domains.timeseries.time_features import time_features

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets"


# -- split_borders --------------------------------------------------------------


def test_ett_hour_borders_are_the_standard_ones():
    assert split_borders(17420, 96, "ett_hour") == [(0, 8640), (8544, 11520), (11424, 14400)]


def test_ett_minute_borders_are_four_times_the_hourly_ones():
    assert split_borders(69680, 96, "ett_minute") == [(0, 34560), (34464, 46080), (45984, 57600)]


def test_ratio_borders_follow_time_series_library():
    # Dataset_Custom: num_train = int(n * 0.7), num_test = int(n * 0.2), val = the rest.
    n, seq_len = 7588, 96
    num_train, num_test = int(n * 0.7), int(n * 0.2)
    assert (num_train, num_test) == (5311, 1517)
    expected = [(0, 5311), (5311 - 96, 5311 + 760), (n - 1517 - 96, n)]
    assert split_borders(n, seq_len, "ratio") == expected


def test_split_errors():
    with pytest.raises(ValueError, match="at least 14400 rows"):
        split_borders(10000, 96, "ett_hour")
    with pytest.raises(ValueError, match="split must be"):
        split_borders(10000, 96, "random")
    with pytest.raises(ValueError, match="shorter than seq_len"):
        split_borders(100, 96, "ratio")


def test_auto_split_by_file_name():
    assert resolve_split("auto", "/x/ETTh2.csv", 0) == "ett_hour"
    assert resolve_split("auto", "/x/ETTm1.csv", 0) == "ett_minute"
    assert resolve_split("auto", "/x/weather.csv", 0) == "ratio"
    # In-memory data: ETT only when the columns are ETT's, the month length from the frequency.
    hour, quarter = pd.Timedelta(hours=1), pd.Timedelta(minutes=15)
    assert resolve_split("auto", None, 17420, hour) == "ratio"
    assert resolve_split("auto", None, 17420, hour, columns=list(ETT_COLUMNS)) == "ett_hour"
    assert resolve_split("auto", None, 69680, quarter, columns=list(ETT_COLUMNS)) == "ett_minute"
    assert resolve_split("auto", None, 17420, quarter, columns=list(ETT_COLUMNS)) == "ratio"  # too short
    assert resolve_split("auto", "/x/ETTh1_15min.csv", 0, quarter) == "ett_minute"  # the step decides
    # The built-in synthetic series (hourly, ETTh1's length) keeps the hourly ETT split.
    assert resolve_split("auto", None, 17420, hour, synthetic=True) == "ett_hour"
    assert resolve_split("auto", None, 2000, hour, synthetic=True) == "ratio"


# -- synthetic series -------------------------------------------------------------


def test_synthetic_is_deterministic_per_seed():
    a = make_synthetic_series(n_rows=500, seed=3)
    b = make_synthetic_series(n_rows=500, seed=3)
    c = make_synthetic_series(n_rows=500, seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["x0"], c["x0"])
    assert list(a.columns) == ["date", "x0", "x1", "x2", "x3", "x4", "x5", "OT"]
    assert pd.infer_freq(a["date"]) == "h"


def _best_lag(leader: np.ndarray, follower: np.ndarray, max_lag: int) -> int:
    # Differencing removes most of the shared seasonality, leaving the lagged noise.
    d0, d1 = np.diff(leader), np.diff(follower)
    corr = [np.corrcoef(d0[: len(d0) - k], d1[k:])[0, 1] for k in range(max_lag + 1)]
    return int(np.argmax(corr))


def test_synthetic_channels_follow_channel_zero_at_their_lag():
    frame = make_synthetic_series(n_rows=3000, n_channels=4, seed=1, lag=3)
    values = frame[["x0", "x1", "x2", "OT"]].to_numpy()
    assert [_best_lag(values[:, 0], values[:, j], 24) for j in (1, 2, 3)] == [3, 6, 9]


# -- DataModule on small synthetic data -------------------------------------------


def _small_dm(**kwargs) -> ForecastingDataModule:
    options = dict(seq_len=24, pred_len=12, batch_size=8, synthetic={"n_rows": 1000, "n_channels": 5})
    options.update(kwargs)
    dm = ForecastingDataModule(**options)
    dm.setup()
    return dm


def test_scaler_uses_train_rows_only():
    dm = _small_dm()
    assert dm.split == "ratio"
    start, stop = dm.borders()[0]
    train = dm.frame[dm.columns].to_numpy(np.float64)[start:stop]
    np.testing.assert_allclose(dm.scaler.mean_, train.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(dm.scaler.scale_, train.std(axis=0), rtol=1e-10)
    everything = dm.frame[dm.columns].to_numpy(np.float64)
    assert not np.allclose(dm.scaler.mean_, everything.mean(axis=0), rtol=1e-3)


def test_test_loader_covers_every_window_exactly_once():
    dm = _small_dm()
    (_, _), (_, _), (t0, t1) = dm.borders()
    n_test_rows = t1 - t0 - dm.seq_len
    assert n_test_rows == int(1000 * 0.2)
    assert len(dm.datasets["test"]) == n_test_rows - dm.pred_len + 1
    assert len(dm.datasets["test"]) % dm.batch_size != 0
    sizes = [batch["x"].shape[0] for batch in dm.test_dataloader()]
    assert sum(sizes) == len(dm.datasets["test"])
    first_x = torch.cat([batch["x"][:, 0] for batch in dm.test_dataloader()])
    expected = torch.stack([dm.datasets["test"][i]["x"][0] for i in range(len(dm.datasets["test"]))])
    torch.testing.assert_close(first_x, expected, rtol=0, atol=0)


def test_train_loader_drops_only_the_incomplete_batch():
    dm = _small_dm()
    batches = list(dm.train_dataloader())
    assert len(batches) == len(dm.datasets["train"]) // dm.batch_size
    assert all(b["x"].shape == (8, 24, 5) for b in batches)


def test_windows_line_up_with_the_raw_frame():
    dm = _small_dm()
    raw = dm.frame[dm.columns].to_numpy(np.float64)
    dates = pd.DatetimeIndex(dm.frame["date"])
    start = dm.borders()[1][0]
    for i in (0, 5, len(dm.datasets["val"]) - 1):
        item = dm.datasets["val"][i]
        x = dm.inverse_transform(item["x"].double().numpy())
        y = dm.inverse_transform(item["y"].double().numpy())
        a, b, c = start + i, start + i + dm.seq_len, start + i + dm.seq_len + dm.pred_len
        np.testing.assert_allclose(x, raw[a:b], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(y, raw[b:c], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(item["y_mark"].numpy(), time_features(dates[b:c], "h"))
    assert item["x"].dtype == torch.float32 and item["x_mark"].shape == (24, 4)


def test_single_target_settings():
    s = _small_dm(features="S")
    ms = _small_dm(features="MS")
    assert (s.num_channels, s.num_output_channels, ms.num_channels, ms.num_output_channels) == (1, 1, 5, 1)
    item = ms.datasets["train"][3]
    assert item["x"].shape == (24, 5) and item["y"].shape == (12, 1)
    # The target is the last input column; MS's y is that column shifted by seq_len.
    assert ms.columns[-1] == "OT"
    torch.testing.assert_close(item["y"][:, 0], ms.datasets["train"][3 + 24]["x"][:12, -1])


def test_inverse_transform_tensor_and_shape_check():
    dm = _small_dm()
    y = torch.zeros(2, 12, 5)
    torch.testing.assert_close(dm.inverse_transform(y)[0, 0], torch.tensor(dm.scaler.mean_, dtype=torch.float32))
    with pytest.raises(ValueError, match=r"\(\.\.\., 5\)"):
        dm.inverse_transform(torch.zeros(2, 12, 3))


# -- CSV reading and errors ----------------------------------------------------------


def _write_csv(path: Path, n: int = 400, nan_at: tuple[str, int] | None = None) -> Path:
    frame = make_synthetic_series(n_rows=n, n_channels=3, seed=0)
    frame["date"] = frame["date"].dt.strftime("%Y-%m-%d %H:%M:%S")
    if nan_at is not None:
        frame.loc[nan_at[1], nan_at[0]] = np.nan
    frame.to_csv(path, index=False)
    return path


def test_csv_reads_channels_from_header_at_init(tmp_path):
    dm = ForecastingDataModule(str(_write_csv(tmp_path / "series.csv")), seq_len=16, pred_len=8)
    assert dm.num_channels == 3 and dm.num_time_features == 4 and dm.freq == "h"
    assert dm.split == "ratio"


def test_headerless_file_gets_named_columns_and_daily_dates(tmp_path):
    path = tmp_path / "plain.txt.gz"
    pd.DataFrame(np.random.default_rng(0).normal(size=(300, 4))).to_csv(path, header=False, index=False)
    dm = ForecastingDataModule(str(path), header=False, seq_len=16, pred_len=8, features="MS")
    dm.setup()
    assert dm.columns == ["0", "1", "2", "OT"] and dm.freq == "d" and dm.num_time_features == 3
    assert dm.datasets["train"][0]["y"].shape == (8, 1)


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        ForecastingDataModule(str(tmp_path / "nope.csv"))
    csv = _write_csv(tmp_path / "series.csv")
    with pytest.raises(ValueError, match=r"date column 'time' not found.*'x0'"):
        ForecastingDataModule(str(csv), date_column="time")
    with pytest.raises(ValueError, match=r"target column 'load' not found.*'OT'"):
        ForecastingDataModule(str(csv), target="load", features="S")
    bad = _write_csv(tmp_path / "gaps.csv", nan_at=("x1", 123))
    dm = ForecastingDataModule(str(bad), seq_len=16, pred_len=8)
    with pytest.raises(ValueError, match=r"column .x1. .* row 123.*fill=.interpolate"):
        dm.setup()
    short = ForecastingDataModule(str(_write_csv(tmp_path / "short.csv", n=60)), seq_len=16, pred_len=8)
    with pytest.raises(ValueError, match="the val split has 22 rows"):
        short.setup()
    with pytest.raises(ValueError, match="features must be"):
        ForecastingDataModule(features="X")


# -- registry ------------------------------------------------------------------------


def test_registry_lists_and_resolves(tmp_path, monkeypatch):
    assert {"ETTh1", "ETTh2", "ETTm1", "exchange_rate"} <= set(registry.list_datasets())
    csv = _write_csv(tmp_path / "own.csv")
    assert registry.resolve_dataset(str(csv)) == csv
    monkeypatch.setenv("OMNISEQ_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("OMNISEQ_SHARED_DATA", "")
    with pytest.raises(FileNotFoundError, match=r"zhouhaoyi/ETDataset.*cache[/\\]ETTh2.csv"):
        registry.resolve_dataset("ETTh2")
    with pytest.raises(FileNotFoundError, match="neither an existing file nor a registered"):
        registry.resolve_dataset("not_a_dataset")


def test_registry_rejects_a_corrupt_file(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNISEQ_DATA", str(tmp_path))
    monkeypatch.setenv("OMNISEQ_SHARED_DATA", "")
    (tmp_path / "ETTh2.csv").write_text("date,OT\n2016-07-01 00:00:00,1.0\n")
    with pytest.raises(ValueError, match="does not match the registered"):
        registry.resolve_dataset("etth2")


# -- real data -------------------------------------------------------------------------


def test_etth1_standard_window_counts(monkeypatch):
    shared = SHARED.resolve()
    if not (shared / "ett" / "ETTh1.csv").exists():
        pytest.skip(f"real data not available: {shared / 'ett' / 'ETTh1.csv'} is absent")
    monkeypatch.setenv("OMNISEQ_DATA", "/nonexistent-omniseq-cache")
    monkeypatch.setenv("OMNISEQ_SHARED_DATA", str(shared))
    dm = ForecastingDataModule("ETTh1", seq_len=96, pred_len=96)  # by name: registry + checksum
    dm.setup()
    assert dm.path == shared / "ett" / "ETTh1.csv"
    assert dm.split == "ett_hour" and dm.num_channels == 7 and dm.num_time_features == 4
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 8449, "val": 2785, "test": 2785}
    train = dm.frame[dm.columns].to_numpy(np.float64)[:8640]
    np.testing.assert_allclose(dm.scaler.mean_, train.mean(axis=0), rtol=1e-10)
    assert sum(b["x"].shape[0] for b in dm.test_dataloader()) == 2785
