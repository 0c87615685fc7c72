"""Forecasting data: sliding-window datasets and the LightningDataModule.

Follows the protocol of the long-horizon literature (Informer, Autoformer,
Time-Series-Library, iTransformer): chronological splits (ETT's 12/4/4 months
for ETT data, else 70/10/20; see ``resolve_split``), val/test windows starting ``seq_len`` rows early so the first
target is the first row of the split, a per-channel StandardScaler fitted on the
training rows only, stride-1 windows, metrics in the scaled space.
One deliberate difference: the val/test loaders never drop their last batch.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from lightning.pytorch.utilities import rank_zero_only
from sklearn.preprocessing import StandardScaler
from torch.utils.data import Dataset

from omniseq.data.loaders import ResumableDataModuleMixin
from omniseq.data.registry import get_dataset_info, resolve_dataset
from omniseq.data.series_io import (
    FillMethod,
    fill_missing,
    frame_from_object,
    pandas_freq,
    parse_dates,
    read_table,
    warn_sentinels,
)
from omniseq.data.synthetic import make_synthetic_series
from omniseq.domains.timeseries.time_features import (
    canonical_freq,
    infer_freq,
    pandas_infer_freq,
    time_features,
)

__all__ = ["ETT_COLUMNS", "ForecastingDataModule", "WindowDataset", "date_borders", "resolve_split", "split_borders"]

Features = Literal["M", "S", "MS"]
SplitName = Literal["auto", "ett_hour", "ett_minute", "ratio", "dates"]
STAGES = ("train", "val", "test")
_ETT_HOUR_MONTH = 30 * 24
ETT_COLUMNS = ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")
# Beyond this magnitude the scaler's variance (a sum of squares) overflows float64.
_MAX_ABS_VALUE = 1e150
# Used when a file has no date column (as the Autoformer release of exchange_rate).
SYNTHETIC_START = "1990-01-01"


def split_borders(
    n_rows: int, seq_len: int, split: str, ratios: Sequence[float] = (0.7, 0.1, 0.2)
) -> list[tuple[int, int]]:
    """Row ranges ``[(start, stop)] * 3`` for train/val/test, windows included.

    ``ett_hour``: months 12/4/4 of 30 days (rows [0, 8640), [8640, 11520), [11520, 14400));
    ``ett_minute``: the same x4; ``ratio``: ``int(n * train)`` / remainder / ``int(n * test)``
    rows (the validation ratio is implied, as in Time-Series-Library's Dataset_Custom).
    Val and test start ``seq_len`` rows before their border.
    """
    if split in ("ett_hour", "ett_minute"):
        month = _ETT_HOUR_MONTH * (4 if split == "ett_minute" else 1)
        ends = [12 * month, 16 * month, 20 * month]
        if n_rows < ends[-1]:
            raise ValueError(
                f"split {split!r} needs at least {ends[-1]} rows (12/4/4 months), got {n_rows}; "
                "use split='ratio' for shorter series"
            )
    elif split == "ratio":
        if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) > 1 + 1e-9:
            raise ValueError(f"ratios must be 3 non-negative numbers summing to <= 1, got {tuple(ratios)}")
        num_train, num_test = int(n_rows * ratios[0]), int(n_rows * ratios[2])
        num_val = n_rows - num_train - num_test
        ends = [num_train, num_train + num_val, n_rows]
    else:
        raise ValueError(f"split must be 'ett_hour', 'ett_minute' or 'ratio', got {split!r}")
    starts = [0, ends[0] - seq_len, ends[1] - seq_len]
    if starts[1] < 0:
        raise ValueError(f"the training split ({ends[0]} rows) is shorter than seq_len={seq_len}")
    return list(zip(starts, ends, strict=True))


def date_borders(
    dates: pd.DatetimeIndex, seq_len: int, split_dates: Sequence[str | pd.Timestamp]
) -> list[tuple[int, int]]:
    """Borders from two dates: train before ``split_dates[0]``, val before ``split_dates[1]``,
    test from there on; val and test start ``seq_len`` rows early as in ``split_borders``."""
    if len(split_dates) != 2:
        raise ValueError(f"split_dates must be (val_start, test_start), got {list(split_dates)}")
    val_start, test_start = (pd.Timestamp(d) for d in split_dates)
    if not val_start < test_start:
        raise ValueError(f"split_dates must be increasing, got {val_start} and {test_start}")
    if not dates.is_monotonic_increasing:
        raise ValueError("split by dates needs increasing timestamps; sort the table by date first")
    ends = [int(dates.searchsorted(val_start)), int(dates.searchsorted(test_start)), len(dates)]
    if ends[0] < seq_len or ends[1] >= ends[2] or ends[0] >= ends[1]:
        raise ValueError(
            f"split_dates {val_start} / {test_start} leave train/val/test rows "
            f"{ends[0]} / {ends[1] - ends[0]} / {ends[2] - ends[1]} of a series from {dates[0]} to "
            f"{dates[-1]}; each must be non-empty and train at least seq_len={seq_len}"
        )
    return [(0, ends[0]), (ends[0] - seq_len, ends[1]), (ends[1] - seq_len, ends[2])]


def resolve_split(
    split: str, path: str | Path | None, n_rows: int, step: pd.Timedelta | None = None,
    columns: Sequence[str] | None = None, synthetic: bool = False,
) -> str:
    """The split ``auto`` stands for (the rule the README documents).

    ETT data get the ETT split of their frequency, everything else ``ratio``. Data are
    ETT when the file name starts with ``ETTh``/``ETTm`` or the columns are ETT's seven
    (``HUFL ... OT``); the inferred time step then picks ``ett_hour`` (1 hour) or
    ``ett_minute`` (15 minutes), the name deciding when the step is neither. The
    built-in synthetic series (hourly, ETTh1's length) takes ``ett_hour`` when it has
    the 14,400 rows that split needs.
    """
    if split != "auto":
        return split
    by_freq = {pd.Timedelta(hours=1): "ett_hour", pd.Timedelta(minutes=15): "ett_minute"}.get(step)
    if path is not None:
        name = Path(path).name
        if re.match(r"ETT[hm]", name, re.IGNORECASE):
            return by_freq or ("ett_hour" if name[3].lower() == "h" else "ett_minute")
        return "ratio"
    long_enough = n_rows >= 20 * _ETT_HOUR_MONTH * (4 if by_freq == "ett_minute" else 1)
    if synthetic:
        return "ett_hour" if by_freq == "ett_hour" and long_enough else "ratio"
    is_ett = columns is not None and set(ETT_COLUMNS) == {str(c) for c in columns}
    return by_freq if is_ett and by_freq and long_enough else "ratio"


@rank_zero_only
def rank_zero_print(message: str) -> None:
    """Print once per job (the split line), not once per process."""
    print(message, flush=True)


class WindowDataset(Dataset):
    """Stride-1 windows over one split.

    Item ``i``: ``x = data[i : i + seq_len]``, ``y = data[i + seq_len : i + seq_len + pred_len, out]``
    and the matching calendar features ``x_mark``/``y_mark``; all float32.
    """

    def __init__(
        self, data: np.ndarray, marks: np.ndarray, seq_len: int, pred_len: int,
        output_columns: Sequence[int] | None = None,
    ) -> None:
        if len(data) != len(marks):
            raise ValueError(f"WindowDataset: data has {len(data)} rows but marks has {len(marks)}")
        self.data = torch.as_tensor(np.ascontiguousarray(data, dtype=np.float32))
        self.marks = torch.as_tensor(np.ascontiguousarray(marks, dtype=np.float32))
        self.seq_len, self.pred_len = seq_len, pred_len
        cols = range(self.data.shape[1]) if output_columns is None else output_columns
        self.output_columns = torch.as_tensor(list(cols), dtype=torch.long)
        self.all_outputs = len(self.output_columns) == self.data.shape[1]

    def __len__(self) -> int:
        return max(len(self.data) - self.seq_len - self.pred_len + 1, 0)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        mid, end = index + self.seq_len, index + self.seq_len + self.pred_len
        y = self.data[mid:end]
        if not self.all_outputs:
            y = y[:, self.output_columns]
        return {"x": self.data[index:mid], "y": y,
                "x_mark": self.marks[index:mid], "y_mark": self.marks[mid:end]}


class ForecastingDataModule(ResumableDataModuleMixin):
    """Sliding-window forecasting data from a file (CSV, Parquet, NetCDF, Zarr), a registered
    dataset, an in-memory table (``data=``), or the built-in synthetic series.

    Batches are dicts ``x (B, seq_len, C_in)``, ``y (B, pred_len, C_out)``,
    ``x_mark (B, seq_len, F)``, ``y_mark (B, pred_len, F)``.

    Args:
        path: a file (``.csv``/``.txt`` optionally ``.gz``, ``.parquet``, ``.nc``, ``.zarr``;
            NetCDF/Zarr need one datetime dimension, extra dimensions become columns),
            a registered name (``ETTh1``, ``ETTh2``, ``ETTm1``, ``exchange_rate``; see
            ``omniseq.data.registry``), or None for ``data`` or the synthetic series.
        seq_len, pred_len: lookback and horizon.
        features: ``M`` all -> all, ``S`` target -> target, ``MS`` all -> target.
        target: target column; it is moved to the last position (so ``MS``
            forecasts the last input channel, as in Time-Series-Library).
        date_column: timestamp column (a DataFrame's DatetimeIndex is used when the
            column is absent); None (or a headerless file) means a synthetic daily
            date from 1990-01-01 is used for the calendar features.
        header: whether the file has a header row; None = the registry's value for
            registered datasets, else True. Headerless columns are named
            ``0, 1, ..., OT`` (the last is the target, as in the Autoformer release).
        split: ``auto`` (``dates`` when ``split_dates`` is given, the ETT split of the
            frequency for ETT data, else ``ratio``; see ``resolve_split``), ``ett_hour``,
            ``ett_minute``, ``ratio`` or ``dates``. The chosen split and its row counts
            are printed by ``setup``.
        ratios: train/val/test fractions for ``ratio`` (val takes the remainder).
        scale: z-score every channel with statistics of the training rows.
        freq: calendar-feature frequency (``h``, ``15min``, ``d``, ...) or ``auto``
            (inferred from the dates).
        batch_size, num_workers: DataLoader settings.
        synthetic: options of ``make_synthetic_series`` when ``path`` is None
            (e.g. ``{"n_rows": 2000, "n_channels": 5}``).
        seed: seed of the training shuffle (and of the synthetic series unless
            ``synthetic`` sets its own).
        split_dates: ``(val_start, test_start)`` timestamps for ``split="dates"``.
        fill: missing values (NaN, inf, sentinels): ``error`` (the default; the
            message names the first bad cell), ``interpolate`` (linear, ends held)
            or ``ffill`` (forward fill, a leading gap back-filled).
        missing_values: sentinel values meaning "missing", e.g. ``[-9999]``.
        data: an in-memory ``DataFrame`` / ``Series`` / xarray object instead of ``path``.
    """

    def __init__(
        self,
        path: str | None = None,
        seq_len: int = 96,
        pred_len: int = 96,
        features: Features = "M",
        target: str = "OT",
        date_column: str | None = "date",
        header: bool | None = None,
        split: SplitName = "auto",
        ratios: Sequence[float] = (0.7, 0.1, 0.2),
        scale: bool = True,
        freq: str = "auto",
        batch_size: int = 32,
        num_workers: int = 0,
        synthetic: dict | None = None,
        seed: int = 0,
        split_dates: Sequence[str] | None = None,
        fill: FillMethod = "error",
        missing_values: Sequence[float] = (),
        data: Any = None,
    ) -> None:
        super().__init__()
        if features not in ("M", "S", "MS"):
            raise ValueError(f"features must be 'M', 'S' or 'MS', got {features!r}")
        for name, value in (("seq_len", seq_len), ("pred_len", pred_len), ("batch_size", batch_size)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if fill not in ("error", "interpolate", "ffill"):
            raise ValueError(f"fill must be 'error', 'interpolate' or 'ffill', got {fill!r}")
        if data is not None and path is not None:
            raise ValueError("give either path or data, not both")
        self.save_hyperparameters(ignore=["data"])
        self.fill, self.missing_values = fill, tuple(missing_values)
        self.split_dates = None if split_dates is None else tuple(split_dates)
        self.seq_len, self.pred_len, self.features, self.target = seq_len, pred_len, features, target
        self.ratios, self.scale, self.batch_size = tuple(ratios), scale, batch_size
        self.num_workers, self.seed = num_workers, seed
        self.scaler: StandardScaler | None = None
        self.datasets: dict[str, WindowDataset] = {}
        self._frame: pd.DataFrame | None = None
        self._clean: pd.DataFrame | None = None
        info = get_dataset_info(path) if path is not None else None
        self.header = header if header is not None else (info.header if info else True)
        self.date_column = date_column if self.header else None
        self.from_data = data is not None
        self.path = None if path is None else resolve_dataset(path)
        if path is None:
            raw = frame_from_object(data, self.date_column) if data is not None else make_synthetic_series(
                **{"seed": seed, **(synthetic or {})})
            self._set_columns(raw)
            self._frame = preview = self._prepare(raw)
        else:
            preview = self._read(nrows=256)
            self._set_columns(preview)
        preview_dates = self._dates(preview).sort_values()
        self.freq = canonical_freq(infer_freq(preview_dates) if freq == "auto" else freq)
        steps = pd.Series(preview_dates).diff().dropna()
        self.step = steps.mode().iloc[0] if len(steps) else None  # the usual spacing of the rows
        self.num_time_features = time_features(preview_dates[:1], self.freq).shape[1]
        n_rows = len(self._frame) if self._frame is not None else 0
        self.requested_split = split
        if split == "auto" and self.split_dates is not None:
            split = "dates"
        if split == "dates" and self.split_dates is None:
            raise ValueError("split='dates' needs split_dates=(val_start, test_start)")
        self.split = resolve_split(split, self.path, n_rows, self.step, self.columns,
                                   synthetic=path is None and data is None)

    # -- reading -------------------------------------------------------------

    def _read(self, nrows: int | None = None) -> pd.DataFrame:
        return read_table(self.path, self.date_column, self.header, nrows=nrows)

    def _dates(self, frame: pd.DataFrame) -> pd.DatetimeIndex:
        if self.date_column is None:
            # Positional dates so that slices of the frame keep their own timestamps.
            start = pd.Timestamp(SYNTHETIC_START)
            return pd.DatetimeIndex(start + pd.to_timedelta(np.asarray(frame.index), unit="D"))
        return parse_dates(frame[self.date_column], self._source())

    def _row(self, row: int) -> str:
        """``data row N`` (0-based), plus the line of a CSV file (its header is line 1)."""
        csv = self.path is not None and str(self.path).lower().endswith((".csv", ".txt", ".csv.gz"))
        return f"data row {row}" + (f" (line {row + 1 + int(self.header)} of the file)" if csv else "")

    def _check_numeric(self, frame: pd.DataFrame) -> None:
        """Every data cell must be a number (or empty); name the first one that is not."""
        for column in self.columns:
            if pd.api.types.is_numeric_dtype(frame[column]):
                continue
            numbers = pd.to_numeric(frame[column], errors="coerce")
            bad = np.flatnonzero(numbers.isna().to_numpy() & frame[column].notna().to_numpy())
            if len(bad):
                raise ValueError(
                    f"{self._source()}: column {column!r} has the non-numeric value {frame[column].iloc[bad[0]]!r} "
                    f"at {self._row(int(bad[0]))} ({len(bad)} such cell(s)); correct or empty that cell "
                    "(an empty cell is read as missing), or drop the column"
                )
            frame[column] = numbers

    def _prepare(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Check the full table: numeric cells, unique timestamps; sort by time; warn of irregular steps."""
        frame.columns = [str(c) for c in frame.columns]
        self._check_numeric(frame)
        if self.date_column is None:
            return frame
        dates = self._dates(frame)
        duplicated = np.flatnonzero(dates.duplicated(keep=False))
        if len(duplicated):
            first = dates[duplicated[0]]
            rows = np.flatnonzero(dates == first)
            raise ValueError(
                f"{self._source()}: timestamp {first} occurs {len(rows)} times (at {self._row(int(rows[0]))} and "
                f"data row(s) {rows[1:6].tolist()}; {len(duplicated)} rows share a timestamp in all); one row per "
                "time step is needed: aggregate them (df.groupby('date').mean()) or drop them "
                "(df.drop_duplicates('date'))"
            )
        frame = frame.copy()
        frame[self.date_column] = dates
        if not dates.is_monotonic_increasing:
            first = int(np.flatnonzero(np.diff(dates.asi8) < 0)[0]) + 1
            warnings.warn(
                f"{self._source()}: timestamps are not in increasing order ({dates[first]} at {self._row(first)} "
                f"comes after {dates[first - 1]}); the rows were sorted by {self.date_column!r}", stacklevel=3,
            )
            frame = frame.sort_values(self.date_column, kind="stable").reset_index(drop=True)
            dates = pd.DatetimeIndex(frame[self.date_column])
        self._warn_irregular(dates)
        return frame

    def _warn_irregular(self, dates: pd.DatetimeIndex) -> None:
        if len(dates) < 3 or pandas_infer_freq(dates) is not None:
            return  # regular (calendar steps such as month ends included)
        steps = pd.Series(dates).diff().iloc[1:]
        common = steps.mode().iloc[0]
        odd = np.flatnonzero((steps != common).to_numpy())
        if len(odd):
            row = int(odd[0]) + 1
            warnings.warn(
                f"{self._source()}: the time step is irregular: {len(odd)} of {len(steps)} steps differ from the "
                f"usual {common} (the first at {self._row(row)}: {dates[row - 1]} -> {dates[row]}). Windows run "
                f"over such gaps as if the rows were consecutive, and forecasts step by {common}. Resample to a "
                f"regular grid first, e.g. df.set_index('date').asfreq('{pd.tseries.frequencies.to_offset(common).freqstr}') "
                "with fill='interpolate'", stacklevel=4,
            )

    def _source(self) -> str:
        if self.path is not None:
            return str(self.path)
        return "data" if self.from_data else "synthetic series"

    def _set_columns(self, frame: pd.DataFrame) -> None:
        available = [str(c) for c in frame.columns]
        frame.columns = available
        if self.date_column is not None and self.date_column not in available:
            raise ValueError(
                f"{self._source()}: date column {self.date_column!r} not found; available columns: "
                f"{available} (pass date_column=None if the file has none)"
            )
        data_columns = [c for c in available if c != self.date_column]
        if self.target in data_columns:
            data_columns = [c for c in data_columns if c != self.target] + [self.target]
        elif self.features != "M":
            raise ValueError(
                f"{self._source()}: target column {self.target!r} not found; available columns: {available}"
            )
        self.columns = data_columns
        self._check_numeric(frame)
        self.input_columns = [self.target] if self.features == "S" else data_columns
        self.output_columns = data_columns if self.features == "M" else [self.target]
        self.num_channels = len(self.input_columns)
        self.num_output_channels = len(self.output_columns)

    @property
    def frame(self) -> pd.DataFrame:
        """The full table (dates + data columns, target last), unscaled."""
        if self._frame is None:
            self._frame = self._prepare(self._read())
        columns = ([self.date_column] if self.date_column else []) + self.columns
        frame = self._frame
        frame.columns = [str(c) for c in frame.columns]
        return frame[columns]

    # -- splits, scaling, windows -------------------------------------------

    @property
    def clean_frame(self) -> pd.DataFrame:
        """``frame`` with sentinels and NaN filled per ``fill`` (or an error naming the first one)."""
        if self._clean is None:
            self._clean = fill_missing(self.frame, self.columns, self.fill, self.missing_values, self._source())
            warn_sentinels(self._clean[self.columns], self._source())
        return self._clean

    @property
    def dates(self) -> pd.DatetimeIndex:
        """Timestamps of every row of the table."""
        return self._dates(self.frame)

    def borders(self) -> list[tuple[int, int]]:
        """Row ranges of train/val/test (windows included) for the loaded table."""
        if self.split == "dates":
            return date_borders(self.dates, self.seq_len, self.split_dates)
        return split_borders(len(self.frame), self.seq_len, self.split, self.ratios)

    def future_dates(self, horizon: int, after: int | None = None) -> pd.DatetimeIndex:
        """The ``horizon`` timestamps following row ``after`` (default: the last row)."""
        dates = self.dates
        end = len(dates) - 1 if after is None else after
        return pd.date_range(dates[end], periods=horizon + 1, freq=pandas_freq(dates))[1:]

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Scale raw input-column values ``(..., C_in)`` as the model sees them."""
        self.setup()
        return values if self.scaler is None else self.scaler.transform(values)

    def window_at(self, end: int | None = None) -> dict[str, torch.Tensor]:
        """The model input for the lookback ending at row ``end`` (exclusive; default: the end
        of the data), batch of one, with ``y_mark`` for the next ``pred_len`` timestamps
        (which may lie past the end of the data)."""
        frame = self.clean_frame
        stop = len(frame) if end is None else end
        if not self.seq_len <= stop <= len(frame):
            raise ValueError(f"window_at: end must be in [{self.seq_len}, {len(frame)}], got {stop}")
        values = frame[self.input_columns].to_numpy(dtype=np.float64)[stop - self.seq_len : stop]
        dates = self.dates
        past = dates[stop - self.seq_len : stop]
        future = self.future_dates(self.pred_len, after=stop - 1)
        as_tensor = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))[None]  # noqa: E731
        return {
            "x": as_tensor(self.transform(values)),
            "x_mark": as_tensor(time_features(past, self.freq)),
            "y_mark": as_tensor(time_features(future, self.freq)),
        }

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        frame = self.clean_frame
        borders = self.borders()
        values = frame[self.input_columns].to_numpy(dtype=np.float64)
        self._check_magnitude(values)
        rank_zero_print(self.split_summary())
        if self.scale:
            train_start, train_stop = borders[0]
            self.scaler = StandardScaler().fit(values[train_start:train_stop])
            values = self.scaler.transform(values)
        marks = time_features(self._dates(frame), self.freq)
        outputs = [self.input_columns.index(c) for c in self.output_columns]
        for name, (start, stop) in zip(STAGES, borders, strict=True):
            windows = stop - start - self.seq_len - self.pred_len + 1
            if windows < 1:
                raise ValueError(
                    f"{self._source()}: the {name} split has {stop - start} rows (including the "
                    f"lookback), too few for seq_len={self.seq_len} + pred_len={self.pred_len}"
                )
            self.datasets[name] = WindowDataset(
                values[start:stop], marks[start:stop], self.seq_len, self.pred_len, outputs
            )

    def _check_magnitude(self, values: np.ndarray) -> None:
        """Values whose square overflows float64 break the scaler; name the column and row."""
        limit = _MAX_ABS_VALUE if self.scale else float(np.finfo(np.float32).max)
        too_big = np.abs(values) > limit
        if too_big.any():
            row, col = (int(i[0]) for i in np.nonzero(too_big))
            raise ValueError(
                f"{self._source()}: column {self.input_columns[col]!r} has the value {values[row, col]:.3g} at data "
                f"row {row} (time order); values beyond {limit:.0e} overflow the scaler's float64 variance. Rescale "
                "the column (change its units, e.g. divide by a power of ten) or drop it"
            )

    def split_summary(self) -> str:
        """One line: the chosen split, why, and the rows of train/val/test (windows counted apart)."""
        borders = self.borders()
        rows = [borders[0][1], borders[1][1] - borders[0][1], borders[2][1] - borders[1][1]]
        detail = {"ratio": "ratios " + "/".join(f"{r:g}" for r in self.ratios),
                  "dates": f"dates {self.split_dates}", "ett_hour": "ETT 12/4/4 months of 30 days, hourly",
                  "ett_minute": "ETT 12/4/4 months of 30 days, 15-minute"}[self.split]
        why = "" if self.requested_split != "auto" else (
            " (auto: ETT data)" if self.split.startswith("ett") else " (auto: not ETT data)")
        dates = self.dates
        step = pd.tseries.frequencies.to_offset(self.step).freqstr if self.step is not None else "?"
        return (f"{self._source()}: split {self.split!r}{why}, {detail}, step {step}: train {rows[0]} rows, "
                f"val {rows[1]}, test {rows[2]} of {len(dates)} ({dates[0]} to {dates[-1]})")

    def series_state(self) -> dict[str, Any]:
        """What ``Forecaster.from_checkpoint`` needs without the data, as tensors and strings only
        (a weights-only load reads it): scaling, column names, the last lookback, the calendar."""
        self.setup()
        frame = self.clean_frame
        dates = self.dates
        as_tensor = lambda a: None if a is None else torch.as_tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
        return {
            "input_columns": list(self.input_columns), "output_columns": list(self.output_columns),
            "mean": as_tensor(None if self.scaler is None else self.scaler.mean_),
            "std": as_tensor(None if self.scaler is None else self.scaler.scale_),
            "history": as_tensor(frame[self.input_columns].to_numpy(np.float64)[-self.seq_len :]),
            "dates": [t.isoformat() for t in dates[-self.seq_len :]],
            "step": str(pd.tseries.frequencies.to_offset(pandas_freq(dates)).freqstr),
            "freq": self.freq, "num_time_features": self.num_time_features, "features": self.features,
            "target": self.target,
        }

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "series": self.series_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "series"})

    def inverse_transform(self, values: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Undo the scaling of model outputs ``(..., C_out)`` (identity when ``scale=False``)."""
        if values.shape[-1] != self.num_output_channels:
            raise ValueError(
                f"inverse_transform expects (..., {self.num_output_channels}) output channels, "
                f"got {tuple(values.shape)}"
            )
        if not self.scale:
            return values
        if self.scaler is None:
            raise RuntimeError("call setup() before inverse_transform (the scaler is fitted there)")
        idx = [self.input_columns.index(c) for c in self.output_columns]
        mean, std = self.scaler.mean_[idx], self.scaler.scale_[idx]
        if isinstance(values, torch.Tensor):
            return values * values.new_tensor(std) + values.new_tensor(mean)
        return values * std + mean

