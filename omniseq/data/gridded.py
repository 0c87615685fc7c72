"""Spatiotemporal forecasting data: gridded NetCDF / Zarr (xarray) as frame windows.

Protocol (the WFDE5 README's suggestion, used by the spatiotemporal recipes):
a chronological split by whole days (21 / 5 / 5 days of January 2017), val and
test windows starting ``seq_len`` steps early so the first target is the first
step of the split, a per-variable z-score fitted on the training land cells, and
cells without data (sea: NaN at every step) set to 0 and carried as a mask that
the task uses to leave them out of the loss and the metrics. The grid is sorted
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

__all__ = ["WFDE5_FILES", "GridWindowDataset", "GriddedDataModule", "open_grid", "split_by_days"]

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


class GridWindowDataset(Dataset):
    """Windows ``x (seq_len, C, H, W)``, ``y (pred_len, C_out, H, W)`` and the land ``mask (H, W)``."""

    def __init__(self, frames: torch.Tensor, mask: torch.Tensor, seq_len: int, pred_len: int, num_outputs: int):
        self.frames, self.mask = frames, mask
        self.seq_len, self.pred_len, self.num_outputs = seq_len, pred_len, num_outputs

    def __len__(self) -> int:
        return max(len(self.frames) - self.seq_len - self.pred_len + 1, 0)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        mid = index + self.seq_len
        return {"x": self.frames[index:mid], "y": self.frames[mid : mid + self.pred_len, : self.num_outputs],
                "mask": self.mask}


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
        self._load(dataset, variables, targets)
        self.datasets: dict[str, GridWindowDataset] = {}

    def _load(self, dataset, variables: Sequence[str] | None, targets: Sequence[str] | None) -> None:
        time, lat, lon = _spatial_dims(dataset)
        dataset = dataset.sortby([time, lat, lon])  # either latitude order gives the same grid
        available = [str(v) for v, da in dataset.data_vars.items() if set(da.dims) == {time, lat, lon}]
        chosen = list(variables) if variables is not None else available
        outputs = list(targets) if targets is not None else chosen
        missing = [v for v in {*chosen, *outputs} if v not in available]
        if missing:
            raise ValueError(f"variable(s) {missing} not found; gridded (time, lat, lon) variables: {available}")
        chosen = outputs + [v for v in chosen if v not in outputs]
        values = np.stack([dataset[v].transpose(time, lat, lon).to_numpy().astype(np.float64) for v in chosen], 1)
        finite = np.isfinite(values)
        self.mask = torch.as_tensor(finite.all(axis=(0, 1)), dtype=torch.float32)
        if self.mask.sum() == 0:
            raise ValueError("no grid cell has data at every step for every variable")
        self.variables, self.targets = chosen, outputs
        self.num_channels, self.num_output_channels = len(chosen), len(outputs)
        self.dates = pd.DatetimeIndex(dataset[time].to_numpy())
        self.lat, self.lon = dataset[lat].to_numpy(), dataset[lon].to_numpy()
        self.borders = split_by_days(self.dates, self.seq_len, self.split_days)
        land = self.mask.numpy().astype(bool)
        train = values[self.borders[0][0] : self.borders[0][1]][:, :, land]  # (T, C, cells)
        self.mean, self.std = train.mean(axis=(0, 2)), train.std(axis=(0, 2)) + 1e-12
        scaled = (values - self.mean[None, :, None, None]) / self.std[None, :, None, None]
        self.frames = torch.as_tensor(np.where(land, scaled, 0.0), dtype=torch.float32)

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
                self.frames[start:stop], self.mask, self.seq_len, self.pred_len, self.num_output_channels
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

