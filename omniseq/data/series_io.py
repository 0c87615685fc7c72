"""Reading series as users have them, and cleaning their missing values.

Tables come from CSV / Parquet (pandas) or NetCDF / Zarr (xarray), or from a
live ``DataFrame`` / ``xarray.Dataset`` / ``xarray.DataArray``. Everything is
turned into one ``DataFrame`` with a date column followed by the data columns.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from omniseq.domains.timeseries.time_features import pandas_infer_freq

__all__ = [
    "FillMethod", "SentinelWarning", "fill_missing", "find_sentinels", "frame_from_object", "load_xarray",
    "pandas_freq", "parse_dates", "read_table", "table_kind",
]

FillMethod = Literal["error", "interpolate", "ffill"]
_TABLE_SUFFIXES = {".csv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet",
                   ".nc": "netcdf", ".nc4": "netcdf", ".netcdf": "netcdf", ".zarr": "zarr"}


def table_kind(path: str | Path) -> str:
    """``csv`` | ``parquet`` | ``netcdf`` | ``zarr`` from the file name (``.gz`` is looked through)."""
    suffixes = [s.lower() for s in Path(path).suffixes if s.lower() not in (".gz", ".bz2", ".zip", ".xz")]
    kind = _TABLE_SUFFIXES.get(suffixes[-1] if suffixes else "")
    if kind is None:
        raise ValueError(
            f"{path}: unknown table format; use one of {sorted(_TABLE_SUFFIXES)} (optionally .gz for CSV)"
        )
    return kind


def _xarray_to_frame(obj: Any, date_column: str) -> pd.DataFrame:
    """A Dataset (or DataArray) over a time dimension -> one column per variable and extra coordinate."""
    import xarray as xr

    if isinstance(obj, xr.DataArray):
        obj = obj.to_dataset(name=obj.name or "value")
    time_dims = [d for d in obj.dims if np.issubdtype(obj[d].dtype, np.datetime64)] if obj.dims else []
    if len(time_dims) != 1:
        raise ValueError(
            f"xarray data must have exactly one datetime dimension, got dims {dict(obj.sizes)} "
            f"with datetime dims {time_dims}"
        )
    time_dim = time_dims[0]
    columns: dict[str, np.ndarray] = {}
    for name, var in obj.data_vars.items():
        if time_dim not in var.dims:
            continue
        var = var.transpose(time_dim, ...)
        if var.ndim == 1:
            columns[str(name)] = var.to_numpy()
            continue
        # Extra dims (stations, levels) become one column per coordinate tuple.
        stacked = var.stack(_column=[d for d in var.dims if d != time_dim])
        for j, key in enumerate(stacked["_column"].to_numpy()):
            suffix = "_".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))
            columns[f"{name}_{suffix}"] = stacked.to_numpy()[:, j]
    frame = pd.DataFrame(columns)
    frame.insert(0, date_column, pd.DatetimeIndex(obj[time_dim].to_numpy()))
    return frame


def frame_from_object(data: Any, date_column: str | None) -> pd.DataFrame:
    """A DataFrame (date column or DatetimeIndex) or an xarray object -> a DataFrame copy
    whose first column is ``date_column`` (when given)."""
    if isinstance(data, pd.Series):
        data = data.to_frame(name=data.name or "value")
    if isinstance(data, pd.DataFrame):
        frame = data.copy()
        if date_column is not None and date_column not in frame.columns:
            if isinstance(frame.index, pd.DatetimeIndex):
                frame = frame.rename_axis(date_column).reset_index()
        return frame.reset_index(drop=True)
    module = type(data).__module__
    if module.startswith("xarray"):
        return _xarray_to_frame(data, date_column or "date")
    raise TypeError(
        f"data must be a pandas DataFrame/Series or an xarray Dataset/DataArray, got {type(data).__name__}"
    )


def read_table(
    path: str | Path, date_column: str | None, header: bool = True, nrows: int | None = None
) -> pd.DataFrame:
    """Read CSV / Parquet / NetCDF / Zarr into a DataFrame (date column first when there is one).

    An empty, truncated or undecodable file raises ValueError naming the file and the format expected.
    """
    kind = table_kind(path)
    if kind == "csv":
        with _unreadable_as(path, "CSV"):
            try:
                frame = pd.read_csv(path, header="infer" if header else None, nrows=nrows)
            except pd.errors.EmptyDataError:
                raise ValueError(f"{path}: the file is empty; expected a CSV table with a header row") from None
        if not header:
            frame.columns = [str(i) for i in range(frame.shape[1] - 1)] + ["OT"]
    elif kind == "parquet":
        with _unreadable_as(path, "Parquet"):
            raw = pd.read_parquet(path)
        frame = frame_from_object(raw, date_column)
    else:
        frame = _xarray_to_frame(load_xarray(path, kind), date_column or "date")
        frame = frame if nrows is None else frame.iloc[:nrows]
    if frame.empty:
        raise ValueError(f"{path}: the table has no data rows (columns: {[str(c) for c in frame.columns]})")
    return frame


def load_xarray(path: str | Path, kind: str) -> Any:
    """A NetCDF or Zarr file loaded into memory as an ``xarray.Dataset`` (ValueError if unreadable)."""
    import xarray as xr

    if kind == "zarr":
        try:
            import zarr  # noqa: F401
        except ImportError as err:
            raise ImportError(f"{path}: reading Zarr needs the 'zarr' package (pip install zarr)") from err
    with _unreadable_as(path, "Zarr" if kind == "zarr" else "NetCDF"):
        dataset = xr.open_zarr(path) if kind == "zarr" else xr.open_dataset(path)
        with dataset:
            return dataset.load()


@contextmanager
def _unreadable_as(path: str | Path, kind: str) -> Iterator[None]:
    """Turn a reader's own error (pyarrow, netCDF4/HDF5, gzip, the CSV parser) into one naming the file."""
    try:
        yield
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError, UnicodeDecodeError) as err:
        if str(err).startswith(str(path)):
            raise  # already names the file and the problem
        raise ValueError(
            f"{path}: cannot be read as {kind} ({type(err).__name__}: {err}); "
            f"is the file complete (not truncated) and really {kind}?"
        ) from err


def fill_missing(
    frame: pd.DataFrame, columns: Sequence[str], fill: FillMethod, missing_values: Sequence[float], source: str
) -> pd.DataFrame:
    """Replace sentinels by NaN, then fill NaN (and inf) or raise naming the first bad cell."""
    if fill not in ("error", "interpolate", "ffill"):
        raise ValueError(f"fill must be 'error', 'interpolate' or 'ffill', got {fill!r}")
    values = frame[list(columns)].astype(np.float64)
    if missing_values:
        values = values.mask(values.isin(list(missing_values)))
    values = values.mask(~np.isfinite(values.to_numpy()))
    bad = values.isna().to_numpy()
    if bad.any():
        if fill == "error":
            rows, cols = np.nonzero(bad)
            first = int(np.argmin(rows))
            sentinel = f" or a sentinel in {list(missing_values)}" if missing_values else ""
            raise ValueError(
                f"{source}: column {columns[cols[first]]!r} has a missing or non-finite value{sentinel} at "
                f"data row {int(rows[first])} (0-based, first one); fill or drop missing values before "
                "loading, or pass fill='interpolate' or fill='ffill'"
            )
        if fill == "interpolate":
            values = values.interpolate(method="linear", limit_direction="both")
        else:
            values = values.ffill().bfill()  # bfill only covers a leading gap
        if values.isna().to_numpy().any():
            empty = [c for c in columns if values[c].isna().all()]
            raise ValueError(f"{source}: column(s) {empty} have no value at all; nothing to fill from")
    out = frame.copy()
    out[list(columns)] = values
    return out


def pandas_freq(dates: pd.DatetimeIndex) -> pd.DateOffset | pd.Timedelta:
    """The step between timestamps: pandas' inferred offset, else the most common spacing.

    The most common spacing (not the median) keeps a regular series with a few gaps on
    its own step, so the timestamps ``predict`` gives after it are the series' ones.
    """
    if len(dates) < 2:
        raise ValueError(f"need at least 2 timestamps to know the step, got {len(dates)}")
    inferred = pandas_infer_freq(dates[-min(len(dates), 1000):]) if len(dates) >= 3 else None
    if inferred is not None:
        return pd.tseries.frequencies.to_offset(inferred)
    return pd.Series(dates).diff().dropna().mode().iloc[0]


# Integer dates are read as epoch times in the unit their size implies (documented in the README).
_EPOCH_UNITS = ((1e17, "ns"), (1e14, "us"), (1e11, "ms"), (1e8, "s"))


def parse_dates(column: pd.Series, source: str) -> pd.DatetimeIndex:
    """Timestamps from a date column: datetimes, date strings, or integer epoch times.

    Integers are read as seconds, milliseconds, microseconds or nanoseconds since
    1970 by their magnitude (1e8..1e11 s, ..1e14 ms, ..1e17 us, above ns), so epoch
    seconds do not land in January 1970 as nanoseconds. Smaller integers are refused.
    """
    name = column.name
    if pd.api.types.is_bool_dtype(column):
        raise ValueError(f"{source}: date column {name!r} holds booleans, not dates")
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_datetime64_any_dtype(column):
        values = column.to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            row = int(np.flatnonzero(~np.isfinite(values))[0])
            raise ValueError(f"{source}: date column {name!r} is empty at data row {row}; every row needs a time")
        if (values != np.round(values)).any():
            raise ValueError(f"{source}: date column {name!r} holds fractional numbers, not epoch times; "
                             "convert it to datetimes (pd.to_datetime(..., unit=...)) first")
        unit_of = lambda v: next((u for limit, u in _EPOCH_UNITS if v >= limit), None)  # noqa: E731
        unit = unit_of(float(np.abs(values).min()))
        if unit is not None and unit != unit_of(float(np.abs(values).max())):
            raise ValueError(f"{source}: date column {name!r} mixes epoch times of different units (s, ms, us, ns "
                             "by size); convert it to datetimes first")
        if unit is None:
            raise ValueError(
                f"{source}: date column {name!r} holds integers such as {int(values[0])}, too small to be epoch "
                "seconds (>= 1e8, after 1973); convert it to datetimes first, e.g. "
                "pd.to_datetime(df[col].astype(str), format='%Y%m%d') for YYYYMMDD"
            )
        return pd.DatetimeIndex(pd.to_datetime(values.astype(np.int64), unit=unit))
    try:
        return pd.DatetimeIndex(pd.to_datetime(column))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{source}: column {name!r} is not parseable as dates: {err}") from err


class SentinelWarning(UserWarning):
    """A column holds a repeated value far outside the rest of its values (like -9999)."""


def find_sentinels(values: pd.DataFrame, fence: float = 20.0) -> list[tuple[str, float, int, float, float]]:
    """Sentinel-like values: ``(column, value, count, median, spread)`` per suspicious column.

    A value is sentinel-like when it is the column's minimum or maximum, occurs at
    least twice, and lies more than ``fence`` interquartile ranges (the standard
    deviation where the IQR is 0) from the median of the other values.
    """
    found = []
    for name in values.columns:
        column = values[name].to_numpy(dtype=np.float64)
        column = column[np.isfinite(column)]
        if len(column) < 20:
            continue
        for extreme in {float(column.min()), float(column.max())}:
            count = int((column == extreme).sum())
            rest = column[column != extreme]
            if count < 2 or len(rest) < 10:
                continue
            q1, median, q3 = np.quantile(rest, [0.25, 0.5, 0.75])
            spread = float(q3 - q1) or float(rest.std())
            if spread > 0 and abs(extreme - median) > fence * spread:
                found.append((str(name), extreme, count, float(median), spread))
    return found


def warn_sentinels(values: pd.DataFrame, source: str) -> None:
    """Warn about each sentinel-like value, naming the column, the value, its count and the two fixes."""
    for name, value, count, median, spread in find_sentinels(values):
        warnings.warn(
            f"{source}: column {name!r} holds the value {value:g} {count} times, far outside its other values "
            f"(median {median:.4g}, spread {spread:.3g}); if it marks missing data, pass "
            f"missing_values=[{value:g}] with fill='interpolate' or 'ffill', or clean the data before loading. "
            "Left as is it is trained on as a real value and inflates the scaler.",
            SentinelWarning, stacklevel=3,
        )
