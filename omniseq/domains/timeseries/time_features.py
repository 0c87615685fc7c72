"""Calendar features of a DatetimeIndex, each scaled to [-0.5, 0.5].

This is the "timeF" encoding of Informer / Autoformer / iTransformer: the set of
features depends on the sampling frequency (finer data get finer features):

=========  ==========================================================
frequency  features (in this order)
=========  ==========================================================
``s``      second-of-minute, minute-of-hour, hour-of-day, day-of-week,
           day-of-month, day-of-year
``t``      minute-of-hour, hour-of-day, day-of-week, day-of-month, day-of-year
``h``      hour-of-day, day-of-week, day-of-month, day-of-year
``d``      day-of-week, day-of-month, day-of-year (also business days ``b``)
``w``      day-of-month, week-of-year
``m``      month-of-year
``y``      none
=========  ==========================================================

Frequencies may be given as pandas aliases with a multiple (``15min``, ``2h``,
``D``, ``W-SUN``, ``MS``) or the one-letter codes above.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd

__all__ = ["FEATURES_BY_FREQ", "canonical_freq", "infer_freq", "num_time_features", "pandas_infer_freq", "time_features"]

_Feature = Callable[[pd.DatetimeIndex], np.ndarray]


def _second_of_minute(index: pd.DatetimeIndex) -> np.ndarray:
    return index.second.to_numpy() / 59.0 - 0.5


def _minute_of_hour(index: pd.DatetimeIndex) -> np.ndarray:
    return index.minute.to_numpy() / 59.0 - 0.5


def _hour_of_day(index: pd.DatetimeIndex) -> np.ndarray:
    return index.hour.to_numpy() / 23.0 - 0.5


def _day_of_week(index: pd.DatetimeIndex) -> np.ndarray:
    return index.day_of_week.to_numpy() / 6.0 - 0.5


def _day_of_month(index: pd.DatetimeIndex) -> np.ndarray:
    return (index.day.to_numpy() - 1) / 30.0 - 0.5


def _day_of_year(index: pd.DatetimeIndex) -> np.ndarray:
    return (index.day_of_year.to_numpy() - 1) / 365.0 - 0.5


def _month_of_year(index: pd.DatetimeIndex) -> np.ndarray:
    return (index.month.to_numpy() - 1) / 11.0 - 0.5


def _week_of_year(index: pd.DatetimeIndex) -> np.ndarray:
    return (index.isocalendar().week.to_numpy().astype(np.float64) - 1) / 52.0 - 0.5


_DAILY = [_day_of_week, _day_of_month, _day_of_year]
FEATURES_BY_FREQ: dict[str, list[_Feature]] = {
    "s": [_second_of_minute, _minute_of_hour, _hour_of_day, *_DAILY],
    "t": [_minute_of_hour, _hour_of_day, *_DAILY],
    "h": [_hour_of_day, *_DAILY],
    "d": list(_DAILY),
    "w": [_day_of_month, _week_of_year],
    "m": [_month_of_year],
    "y": [],
}

# pandas unit (lower-cased, multiple stripped) -> one-letter code
_UNITS = {
    "s": "s", "sec": "s",
    "t": "t", "min": "t",
    "h": "h",
    "d": "d", "b": "d", "c": "d",
    "w": "w",
    "m": "m", "me": "m", "ms": "m", "bm": "m", "bme": "m", "bms": "m",
    "q": "m", "qe": "m", "qs": "m",
    "y": "y", "ye": "y", "ys": "y", "a": "y", "as": "y",
}


def canonical_freq(freq: str) -> str:
    """``'15min'`` -> ``'t'``, ``'H'`` -> ``'h'``, ``'W-SUN'`` -> ``'w'``, ``'MS'`` -> ``'m'``."""
    match = re.fullmatch(r"\s*\d*\s*([A-Za-z]+)(-[A-Za-z]+)?\s*", str(freq))
    unit = match.group(1).lower() if match else None
    if unit not in _UNITS:
        raise ValueError(
            f"unknown frequency {freq!r}; use a pandas alias such as '15min', 'h', 'D', 'W', 'MS' "
            f"or one of {sorted(FEATURES_BY_FREQ)}"
        )
    return _UNITS[unit]


def pandas_infer_freq(index: pd.DatetimeIndex) -> str | None:
    """``pd.infer_freq`` as a string, without pandas' notice that it will return an offset."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        inferred = pd.infer_freq(index)
    return getattr(inferred, "freqstr", inferred)


def infer_freq(index: pd.DatetimeIndex) -> str:
    """Frequency code of a regular index (median spacing when pandas cannot infer it)."""
    if len(index) < 2:
        raise ValueError(f"infer_freq needs at least 2 timestamps, got {len(index)}")
    inferred = pandas_infer_freq(index[: min(len(index), 1000)]) if len(index) >= 3 else None
    if inferred is not None:
        return canonical_freq(inferred)
    step = pd.Series(index).diff().median()
    for code, limit in (("s", "1min"), ("t", "1h"), ("h", "1D"), ("d", "7D"), ("w", "28D"), ("m", "365D")):
        if step < pd.Timedelta(limit):
            return code
    return "y"


def num_time_features(freq: str) -> int:
    """How many features ``time_features`` returns for ``freq``."""
    return len(FEATURES_BY_FREQ[canonical_freq(freq)])


def time_features(dates: pd.DatetimeIndex | pd.Series, freq: str) -> np.ndarray:
    """Calendar features ``(len(dates), F)`` float32 in [-0.5, 0.5] (see the module table)."""
    index = pd.DatetimeIndex(dates)
    features = FEATURES_BY_FREQ[canonical_freq(freq)]
    if not features:
        return np.zeros((len(index), 0), dtype=np.float32)
    return np.stack([f(index) for f in features], axis=1).astype(np.float32)
