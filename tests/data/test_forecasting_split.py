"""The split ``auto`` picks for in-memory tables of each frequency, the ratio option, the printed
split line, and the warning for sentinel-like values (issue 15)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from omniseq.api.forecaster import Forecaster
from omniseq.data.forecasting import ETT_COLUMNS, ForecastingDataModule
from omniseq.data.series_io import SentinelWarning, find_sentinels
from omniseq.data.synthetic import make_synthetic_series


def table(n_rows: int, freq: str, columns: list[str] | None = None) -> pd.DataFrame:
    frame = make_synthetic_series(n_rows=n_rows, n_channels=len(columns) if columns else 4, freq=freq, seed=3)
    if columns:
        frame.columns = ["date", *columns]
    return frame


def ratio_borders(n: int, seq_len: int, ratios=(0.7, 0.1, 0.2)) -> list[tuple[int, int]]:
    # Time-Series-Library's Dataset_Custom: int(n * train) and int(n * test) rows, val the rest.
    train, test = int(n * ratios[0]), int(n * ratios[2])
    return [(0, train), (train - seq_len, n - test), (n - test - seq_len, n)]


@pytest.mark.parametrize("n_rows,freq", [
    (17420, "h"),      # ETTh1's length: the ETT split used to be applied to any table this long
    (69680, "15min"),  # ETTm1's length
    (52696, "10min"),  # one year of a 10-minute weather table
    (3000, "24h"),
], ids=["hourly", "15-minute", "10-minute", "daily"])
def test_auto_split_of_a_dataframe_is_ratio_unless_it_is_ett(n_rows, freq, capsys):
    dm = ForecastingDataModule(data=table(n_rows, freq), seq_len=96, pred_len=96)
    assert dm.step == pd.Timedelta(pd.tseries.frequencies.to_offset(freq)) and dm.split == "ratio"
    assert dm.borders() == ratio_borders(n_rows, 96)
    dm.setup()
    train, test = int(n_rows * 0.7), int(n_rows * 0.2)
    assert (f"split 'ratio' (auto: not ETT data), ratios 0.7/0.1/0.2, step {freq}: train {train} rows, "
            f"val {n_rows - train - test}, test {test} of {n_rows}") in capsys.readouterr().out


@pytest.mark.parametrize("n_rows,freq,split,month", [(17420, "h", "ett_hour", 720), (69680, "15min", "ett_minute", 2880)])
def test_ett_columns_get_the_ett_split_of_their_frequency(n_rows, freq, split, month, capsys):
    dm = ForecastingDataModule(data=table(n_rows, freq, list(ETT_COLUMNS)), seq_len=96, pred_len=96)
    assert dm.split == split
    assert dm.borders() == [(0, 12 * month), (12 * month - 96, 16 * month), (16 * month - 96, 20 * month)]
    dm.setup()
    assert f"split '{split}' (auto: ETT data)" in capsys.readouterr().out


def test_forecaster_ratio_option(capsys):
    fc = Forecaster(split="ratio", ratios=(0.6, 0.2, 0.2), seq_len=24, pred_len=8)
    dm = fc._make_datamodule(table(1000, "h"))
    assert dm.split == "ratio" and dm.borders() == ratio_borders(1000, 24, (0.6, 0.2, 0.2))
    dm.setup()
    assert "split 'ratio', ratios 0.6/0.2/0.2, step h: train 600 rows, val 200, test 200" in capsys.readouterr().out


def test_a_repeated_extreme_value_warns_with_column_value_count_and_fixes():
    frame = table(2000, "10min")
    frame.loc[[10, 500, 900], "x1"] = -9999.0
    with pytest.warns(SentinelWarning, match=r"column 'x1' holds the value -9999 3 times.*missing_values=\[-9999\] "
                                             r"with fill='interpolate' or 'ffill', or clean the data"):
        ForecastingDataModule(data=frame, seq_len=24, pred_len=8).setup()
    # Declared as missing and filled: no warning, and the scaler sees the real spread.
    with warnings.catch_warnings():
        warnings.simplefilter("error", SentinelWarning)
        dm = ForecastingDataModule(data=frame, seq_len=24, pred_len=8, missing_values=[-9999], fill="interpolate")
        dm.setup()
    assert dm.scaler.scale_[dm.input_columns.index("x1")] < 10


def test_sentinel_rule_leaves_ordinary_data_alone():
    rng = np.random.default_rng(0)
    rain = np.where(rng.random(5000) < 0.8, 0.0, rng.exponential(2.0, 5000)).round(1)  # zero-heavy, repeated values
    normal = rng.normal(size=5000)
    assert find_sentinels(pd.DataFrame({"rain": rain, "normal": normal})) == []
    normal[[3, 4]] = 9999.0
    assert [(c, v, n) for c, v, n, *_ in find_sentinels(pd.DataFrame({"normal": normal}))] == [("normal", 9999.0, 2)]
