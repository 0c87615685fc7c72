"""Unusual but legal series (issue 14, section 3): the right result, or an error naming the file,
the row, the column and the fix; never a silently wrong forecast."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from omniseq.api.forecaster import Forecaster
from omniseq.data.forecasting import ForecastingDataModule
from omniseq.data.series_io import pandas_freq
from omniseq.data.synthetic import make_synthetic_series

SMALL = dict(seq_len=12, pred_len=4, batch_size=8)


def series(n_rows: int = 240, freq: str = "h") -> pd.DataFrame:
    return make_synthetic_series(n_rows=n_rows, n_channels=3, seed=1, freq=freq)


def train_values(dm: ForecastingDataModule) -> np.ndarray:
    dm.setup()
    return dm.datasets["train"].data.numpy()


@pytest.mark.parametrize("order", ["descending", "shuffled"])
def test_unsorted_timestamps_are_sorted_with_a_warning(order):
    frame = series()
    messy = frame.iloc[::-1] if order == "descending" else frame.sample(frac=1.0, random_state=0)
    with pytest.warns(UserWarning, match=r"timestamps are not in increasing order .* at data row \d+.*sorted by 'date'"):
        dm = ForecastingDataModule(data=messy, **SMALL)
    # The windows are those of the sorted table, not of the shuffled rows.
    np.testing.assert_array_equal(train_values(dm), train_values(ForecastingDataModule(data=frame, **SMALL)))
    assert dm.dates.is_monotonic_increasing


def test_duplicated_timestamps_name_the_file_rows_and_fix(tmp_path):
    frame = series()
    frame.loc[7, "date"] = frame.loc[6, "date"]
    path = tmp_path / "dup.csv"
    frame.to_csv(path, index=False)
    dm = ForecastingDataModule(str(path), **SMALL)
    with pytest.raises(ValueError, match=r"dup\.csv: timestamp 2016-07-01 06:00:00 occurs 2 times \(at data row 6 "
                                         r"\(line 8 of the file\).*drop_duplicates"):
        dm.setup()
    with pytest.raises(ValueError, match=r"data: timestamp .* occurs 2 times .*groupby"):
        Forecaster(**SMALL).fit(frame)


def test_irregular_steps_warn_and_forecasts_keep_the_usual_step(tmp_path):
    frame = series().drop(index=[50, 51, 120]).reset_index(drop=True)  # two gaps in an hourly series
    with pytest.warns(UserWarning, match=r"time step is irregular: 2 of 236 steps differ from the usual 0 days 01:00:00 "
                                         r"\(the first at data row 50: .*asfreq\('h'\)"):
        dm = ForecastingDataModule(data=frame, **SMALL)
    future = dm.future_dates(3)
    assert (future - frame["date"].iloc[-1]).tolist() == [pd.Timedelta(hours=h) for h in (1, 2, 3)]


def test_the_step_of_an_irregular_series_is_the_most_common_one():
    # Median spacing would be 2 h; 1 h is the series' own step.
    steps = [1] * 4 + [2] * 3 + [3] * 3
    dates = pd.DatetimeIndex(pd.Timestamp("2020-01-01") + pd.to_timedelta(np.cumsum([0] + steps), unit="h"))
    assert pandas_freq(dates) == pd.Timedelta(hours=1)


@pytest.mark.parametrize("unit,scale", [("s", 1), ("ms", 1000)])
def test_integer_epoch_dates_are_read_in_their_unit(tmp_path, unit, scale):
    frame = series()
    epoch = frame["date"].astype("datetime64[s]").astype(np.int64) * scale
    path = tmp_path / f"epoch_{unit}.csv"
    frame.assign(date=epoch).to_csv(path, index=False)
    dm = ForecastingDataModule(str(path), **SMALL)
    pd.testing.assert_index_equal(dm.dates, pd.DatetimeIndex(frame["date"]), check_names=False, exact=False)
    assert dm.freq == "h"


def test_small_integer_dates_are_refused(tmp_path):
    path = tmp_path / "days.csv"
    series(60).assign(date=np.arange(20200101, 20200161)).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"days\.csv: date column 'date' holds integers such as 20200101, too small"):
        ForecastingDataModule(str(path), **SMALL)


def test_a_non_numeric_cell_after_the_first_256_rows_is_named(tmp_path):
    frame = series(400).astype({"x1": object})
    frame.loc[300, "x1"] = "1.2.3"
    path = tmp_path / "late_text.csv"
    frame.to_csv(path, index=False)
    dm = ForecastingDataModule(str(path), **SMALL)  # the first 256 rows look numeric
    with pytest.raises(ValueError, match=r"late_text\.csv: column 'x1' has the non-numeric value '1\.2\.3' at data "
                                         r"row 300 \(line 302 of the file\).*correct or empty that cell"):
        dm.setup()


def test_huge_values_name_the_column_not_nan():
    frame = series().astype({"x0": np.float64})
    frame.loc[100, "x0"] = 1e200
    with pytest.raises(ValueError, match=r"column 'x0' has the value 1e\+200 at data row 100 .*overflow.*Rescale"):
        ForecastingDataModule(data=frame, **SMALL).setup()


def test_predict_needs_a_whole_number_of_steps(tmp_path):
    fitted = Forecaster(max_epochs=1, model_options={"d_model": 8, "d_ff": 8, "depth": 1}, default_root_dir=tmp_path,
                        trainer_options={"limit_train_batches": 1, "limit_val_batches": 1, "accelerator": "cpu"},
                        **SMALL).fit(series())
    with pytest.raises(TypeError, match=r"horizon must be a whole number of time steps \(an int\), got 2\.5"):
        fitted.predict(2.5)
    assert len(fitted.predict(np.int64(3))) == 3
