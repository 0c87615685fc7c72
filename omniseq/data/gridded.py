"""Spatiotemporal forecasting data: gridded NetCDF / Zarr (xarray) as frame windows.

Protocol (the WFDE5 README's suggestion, used by the spatiotemporal recipes):
a chronological split by whole days (21 / 5 / 5 days of January 2017), val and
test windows starting ``seq_len`` steps early so the first target is the first
step of the split, a per-variable z-score fitted on the training land cells, and
cells without data (sea: NaN at every step) set to 0 and carried as a mask that
the task uses to leave them out of the loss and the metrics. The mask follows the
data by default, or comes from a variable or a file (``mask=``). Each window also
carries the climatology of its targets: the mean of the training steps at the same
time of day (a diurnal mean), the baseline ``omniseq test`` prints beside persistence. The grid is sorted
to ascending latitude and longitude, so files stored north-up or south-up give
the same tensors.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from omniseq.data.loaders import ResumableDataModuleMixin
from omniseq.data.registry import DatasetInfo, get_dataset_info, register_dataset, resolve_dataset
from omniseq.data.series_io import load_xarray, table_kind
from omniseq.data.synthetic import make_synthetic_grid

__all__ = [
    "WFDE5_FILES", "GridWindowDataset", "GriddedDataModule", "grid_channel_count", "open_grid", "select_variables",
    "split_by_days",
]

_WFDE5_URL = "https://github.com/unifhy-org/unifhy/raw/main/data/"
WFDE5_FILES = {
    "Tair": ("air_temperature.nc", "5144cec5740fa85480e7003f492e36870ae492cb1f81a4ba5d87560144ea5a51"),
    "pr": ("precipitation_flux.nc", "82faeb606e6d43b917f31e0ba2f8d814dbf10b84b53c49bbf81ce00853b7e307"),
    "Qair": ("specific_humidity.nc", "2d109cd07d6c72127fda841009abb5acd145bb0c5809194e772506e78a0c467b"),
    "LWdown": ("surface_downwelling_longwave_flux_in_air.nc",
               "14bf38ed08d2200c115524e071ffd45a0c3cbd8cc83f277873a1ad1183ce5026"),
    "SWdown": ("surface_downwelling_shortwave_flux_in_air.nc",
               "d49b7c6f127c82a323191b1d090297c663b33cac7375377a7c9077024d64adb4"),
    "Wind": ("wind_speed.nc", "4f9f99554836ce3a1770015ec600f99bb14e30be81a51a2e1e4fca3a8c364d34"),
}
WFDE5 = "wfde5_gb_hourly_jan2017"
for _var, (_file, _sha) in WFDE5_FILES.items():
    register_dataset(DatasetInfo(
        f"wfde5_gb_{_var}", _WFDE5_URL + _file, _sha, _file, WFDE5,
        f"WFDE5 {_var} over Great Britain, hourly Jan 2017, 744 x 20 x 28 (Cucchi et al. 2020)",
        date_column=None,
    ))

_LAT_NAMES, _LON_NAMES = ("lat", "latitude", "y"), ("lon", "longitude", "x")
STAGES = ("train", "val", "test")


def _open_one(path: str | Path):
    return load_xarray(path, table_kind(path))


def open_grid(source: Any):
    """An ``xarray.Dataset`` from a Dataset, a registered name (``wfde5_gb_hourly_jan2017``), a
    NetCDF/Zarr path, a folder of NetCDF files, or a list of paths (merged)."""
    import xarray as xr

    if isinstance(source, xr.Dataset):
        return source
    if isinstance(source, xr.DataArray):
        return source.to_dataset(name=source.name or "value")
    if isinstance(source, (list, tuple)):
        return xr.merge([_open_one(p) for p in source])
    if str(source).lower() == WFDE5:
        return xr.merge([_open_one(resolve_dataset(f"wfde5_gb_{v}")) for v in WFDE5_FILES])
    path = Path(os.fspath(source)).expanduser()
    if path.is_dir() and path.suffix.lower() != ".zarr":
        files = sorted(path.glob("*.nc"))
        if not files:
            raise FileNotFoundError(f"{path}: folder has no .nc files")
        return xr.merge([_open_one(p) for p in files])
    if not path.exists():
        info = get_dataset_info(str(source))
        if info is None:
            raise FileNotFoundError(f"{source!r} is neither an existing file/folder nor a registered dataset")
        path = resolve_dataset(str(source))
    return _open_one(path)


def _spatial_dims(dataset) -> tuple[str, str, str]:
    time = [d for d in dataset.dims if np.issubdtype(dataset[d].dtype, np.datetime64)]
    lat = [d for d in dataset.dims if str(d).lower() in _LAT_NAMES]
    lon = [d for d in dataset.dims if str(d).lower() in _LON_NAMES]
    if len(time) != 1 or len(lat) != 1 or len(lon) != 1:
        raise ValueError(
            f"gridded data need one datetime dim and one each of {_LAT_NAMES} / {_LON_NAMES}; "
            f"got dims {dict(dataset.sizes)}"
        )
    return time[0], lat[0], lon[0]


def split_by_days(dates: pd.DatetimeIndex, seq_len: int, days: Sequence[int]) -> list[tuple[int, int]]:
    """Row ranges of train/val/test from day counts ``(train, val, test)``, val/test ``seq_len`` early."""
    if len(days) != 3 or min(days) <= 0:
        raise ValueError(f"split_days must be 3 positive day counts, got {list(days)}")
    day_index = (dates.normalize() - dates[0].normalize()).days
    ends = [int(np.searchsorted(day_index, sum(days[: k + 1]))) for k in range(3)]
    if ends[0] < seq_len or ends[1] <= ends[0] or ends[2] <= ends[1]:
        raise ValueError(
            f"split_days {list(days)} leave {ends[0]} / {ends[1] - ends[0]} / {ends[2] - ends[1]} steps of "
            f"data spanning {day_index[-1] + 1} days; each split needs steps and train at least seq_len"
        )
    return [(0, ends[0]), (ends[0] - seq_len, ends[1]), (ends[1] - seq_len, ends[2])]


def select_variables(
    dataset, variables: Sequence[str] | None, targets: Sequence[str] | None
) -> tuple[list[str], list[str]]:
    """``(inputs, targets)``: the gridded ``(time, lat, lon)`` variables chosen, targets first."""
    time, lat, lon = _spatial_dims(dataset)
    available = [str(v) for v, da in dataset.data_vars.items() if set(da.dims) == {time, lat, lon}]
    chosen = list(variables) if variables is not None else available
    outputs = list(targets) if targets is not None else chosen
    missing = [v for v in {*chosen, *outputs} if v not in available]
    if missing:
        raise ValueError(f"variable(s) {missing} not found; gridded (time, lat, lon) variables: {available}")
    if not chosen:
        raise ValueError(f"no gridded (time, lat, lon) variable in the data; its variables: {list(dataset.data_vars)}")
    return outputs + [v for v in chosen if v not in outputs], outputs


_COUNT_CACHE: dict[str, tuple[int, int]] = {}


def grid_channel_count(data_args: dict[str, Any], which: str = "inputs") -> int:
    """How many input (or ``which="targets"``) channels the DataModule built from ``data_args``
    (its ``init_args``) has: what the recipes' ``${grid_channels:...}`` writes into the backbone."""
    if which not in ("inputs", "targets"):
        raise ValueError(f"grid_channels: which must be 'inputs' or 'targets', got {which!r}")
    key = repr(sorted(data_args.items()))
    if key not in _COUNT_CACHE:
        source = data_args.get("path")
        dataset = open_grid(source) if source is not None else make_synthetic_grid(
            seed=data_args.get("seed", 0), **(data_args.get("synthetic") or {}))
        inputs, outputs = select_variables(dataset, data_args.get("variables"), data_args.get("targets"))
        _COUNT_CACHE[key] = (len(inputs), len(outputs))
    return _COUNT_CACHE[key][0 if which == "inputs" else 1]


class GridWindowDataset(Dataset):
    """Windows ``x (seq_len, C, H, W)``, ``y (pred_len, C_out, H, W)``, the land ``mask (H, W)`` and,
    given ``climatology (K, C_out, H, W)`` and each step's row ``keys`` into it, the target steps'
    ``climatology (pred_len, C_out, H, W)``."""

    def __init__(self, frames: torch.Tensor, mask: torch.Tensor, seq_len: int, pred_len: int, num_outputs: int,
                 climatology: torch.Tensor | None = None, keys: torch.Tensor | None = None):
        self.frames, self.mask = frames, mask
        self.seq_len, self.pred_len, self.num_outputs = seq_len, pred_len, num_outputs
        self.climatology, self.keys = climatology, keys

    def __len__(self) -> int:
        return max(len(self.frames) - self.seq_len - self.pred_len + 1, 0)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        mid = index + self.seq_len
        item = {"x": self.frames[index:mid], "y": self.frames[mid : mid + self.pred_len, : self.num_outputs],
                "mask": self.mask}
        if self.climatology is not None:
            item["climatology"] = self.climatology[self.keys[mid : mid + self.pred_len]]
        return item


class GriddedDataModule(ResumableDataModuleMixin):
    """Gridded frames for spatiotemporal forecasting.

    Batches: ``x (B, seq_len, C, H, W)``, ``y (B, pred_len, C_out, H, W)``, ``mask (B, H, W)``
    (1 where the cell has data). Targets are the first ``C_out`` input variables.

    Args:
        path: a registered name (``wfde5_gb_hourly_jan2017``), a NetCDF/Zarr path or a
            folder of ``.nc`` files, or None for ``data`` or the synthetic grid.
        variables: input variables (all data variables when None), in this order.
        targets: forecast variables (default: all inputs); moved to the front of the inputs.
        seq_len, pred_len: input and output frames.
        mask: the cells to learn and score: None = those with data at every step for every
            variable (sea cells of land-only data drop out); ``"none"`` = every cell (the data
            must then have no NaN); a variable of the data or a NetCDF file with one 2D
            variable (cells where it is finite and non-zero).
        split_days: chronological ``(train, val, test)`` day counts.
        batch_size, num_workers, seed: loader settings (seeded, resumable shuffle).
        synthetic: options of ``make_synthetic_grid`` when there is no path or data.
        data: an in-memory ``xarray.Dataset``.
    """

    def __init__(
        self,
        path: str | None = None,
        variables: Sequence[str] | None = None,
        targets: Sequence[str] | None = None,
        seq_len: int = 24,
        pred_len: int = 24,
        split_days: Sequence[int] = (21, 5, 5),
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 0,
        synthetic: dict | None = None,
        data: Any = None,
        mask: str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("seq_len", seq_len), ("pred_len", pred_len), ("batch_size", batch_size)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self.save_hyperparameters(ignore=["data"])
        self.seq_len, self.pred_len, self.split_days = seq_len, pred_len, tuple(split_days)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        if data is not None and path is not None:
            raise ValueError("give either path or data, not both")
        source = data if data is not None else path
        dataset = open_grid(source) if source is not None else make_synthetic_grid(seed=seed, **(synthetic or {}))
        self._load(dataset, variables, targets, mask)
        self.datasets: dict[str, GridWindowDataset] = {}

    def _load(self, dataset, variables: Sequence[str] | None, targets: Sequence[str] | None, mask: str | None) -> None:
        time, lat, lon = _spatial_dims(dataset)
        dataset = dataset.sortby([time, lat, lon])  # either latitude order gives the same grid
        chosen, outputs = select_variables(dataset, variables, targets)
        values = np.stack([dataset[v].transpose(time, lat, lon).to_numpy().astype(np.float64) for v in chosen], 1)
        land = self._land_mask(dataset, values, mask, chosen, (time, lat, lon))
        self.mask = torch.as_tensor(land, dtype=torch.float32)
        self.variables, self.targets = chosen, outputs
        self.num_channels, self.num_output_channels = len(chosen), len(outputs)
        self.dates = pd.DatetimeIndex(dataset[time].to_numpy())
        self.lat, self.lon = dataset[lat].to_numpy(), dataset[lon].to_numpy()
        self.borders = split_by_days(self.dates, self.seq_len, self.split_days)
        train = values[self.borders[0][0] : self.borders[0][1]][:, :, land]  # (T, C, cells)
        self.mean, self.std = train.mean(axis=(0, 2)), train.std(axis=(0, 2)) + 1e-12
        scaled = (values - self.mean[None, :, None, None]) / self.std[None, :, None, None]
        self.frames = torch.as_tensor(np.where(land, scaled, 0.0), dtype=torch.float32)
        self._fit_climatology()

    def _land_mask(self, dataset, values: np.ndarray, mask: str | None, chosen: list[str], dims) -> np.ndarray:
        """Boolean ``(H, W)`` of the cells to use; every value on them must be finite."""
        finite = np.isfinite(values)
        if mask is None:
            land = finite.all(axis=(0, 1))
            if not land.any():
                raise ValueError("no grid cell has data at every step for every variable; give mask= to choose cells")
            return land
        time, lat, lon = dims
        if str(mask).lower() == "none":
            land = np.ones(values.shape[-2:], dtype=bool)
        else:
            source = dataset if mask in dataset.variables else open_grid(mask) if Path(mask).exists() else None
            if source is None:
                raise ValueError(f"mask {mask!r} is neither a variable of the data ({list(dataset.data_vars)}) nor "
                                 "an existing file; give a variable name, a NetCDF file, 'none', or leave it unset")
            name = mask if source is dataset else self._only_2d_variable(source, mask)
            field = source[name]
            if time in field.dims:
                field = field.isel({time: 0})
            if set(field.dims) != {lat, lon} or (field.sizes[lat], field.sizes[lon]) != values.shape[-2:]:
                raise ValueError(f"mask {mask!r} must be a ({lat}, {lon}) field on the data's grid of "
                                 f"{values.shape[-2:]} cells, got dims {dict(field.sizes)}")
            field = field.sortby([lat, lon])
            grid = field.transpose(lat, lon).to_numpy().astype(np.float64)
            land = np.isfinite(grid) & (grid != 0)
        bad = ~finite & land[None, None]
        if bad.any():
            t, c, i, j = (int(k[0]) for k in np.nonzero(bad))
            raise ValueError(
                f"variable {chosen[c]!r} is NaN/inf at {time}={self._date(dataset, time, t)}, cell ({lat} index {i}, "
                f"{lon} index {j}), inside mask {mask!r} ({int(bad.any(axis=(0, 1)).sum())} such cell(s)); leave "
                "those cells out of the mask, or fill the data first"
            )
        return land

    @staticmethod
    def _date(dataset, time: str, t: int) -> str:
        return str(pd.Timestamp(dataset[time].to_numpy()[t]))

    @staticmethod
    def _only_2d_variable(source, path: str) -> str:
        candidates = [str(v) for v, da in source.data_vars.items() if da.ndim >= 2]
        if len(candidates) != 1:
            raise ValueError(f"mask file {path} must hold one gridded variable, it holds {candidates}; "
                             "give the variable's name instead (after merging it into the data)")
        return candidates[0]

    def _fit_climatology(self) -> None:
        """Diurnal mean of the targets over the training steps, per time of day (normalised units)."""
        minute = np.asarray(self.dates.hour * 60 + self.dates.minute)
        train = slice(self.borders[0][0], self.borders[0][1])
        targets = self.frames[:, : self.num_output_channels]
        seen = np.unique(minute[train])
        rows = [targets[train][torch.as_tensor(minute[train] == m)].mean(0) for m in seen]
        rows.append(targets[train].mean(0))  # for a time of day the training split never has
        self.climatology = torch.stack(rows)
        lookup = {int(m): k for k, m in enumerate(seen)}
        self.climatology_keys = torch.as_tensor([lookup.get(int(m), len(seen)) for m in minute])

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        for name, (start, stop) in zip(STAGES, self.borders, strict=True):
            if stop - start < self.seq_len + self.pred_len:
                raise ValueError(
                    f"the {name} split has {stop - start} steps (with lookback), too few for "
                    f"seq_len={self.seq_len} + pred_len={self.pred_len}"
                )
            self.datasets[name] = GridWindowDataset(
                self.frames[start:stop], self.mask, self.seq_len, self.pred_len, self.num_output_channels,
                self.climatology, self.climatology_keys[start:stop],
            )

    def inverse_transform(self, values: torch.Tensor) -> torch.Tensor:
        """Normalised ``(..., C_out, H, W)`` -> physical units."""
        if values.ndim < 3 or values.shape[-3] != self.num_output_channels:
            raise ValueError(
                f"inverse_transform expects (..., {self.num_output_channels}, H, W), got {tuple(values.shape)}"
            )
        k = self.num_output_channels
        std = values.new_tensor(self.std[:k])[:, None, None]
        return values * std + values.new_tensor(self.mean[:k])[:, None, None]

