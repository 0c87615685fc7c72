"""``Forecaster``: fit a forecasting backbone on a table in a few lines (notebooks).

    fc = Forecaster("itransformer", seq_len=96, pred_len=24, mixer="gla")
    fc.fit(frame)                   # DataFrame (date column or DatetimeIndex), xarray, or a path
    future = fc.predict(48)         # DataFrame indexed by the next 48 timestamps, original units
    fc.evaluate()                   # {"mse", "mae"} on the test split (normalised, as papers report)
    fc.plot()                       # history, truth and forecast of one test window
    fc.save("model.pt"); Forecaster.load("model.pt").predict(24)

Training is the ``ForecastingTask`` recipe under a Lightning ``Trainer`` with
early stopping on validation loss; the best validation weights are kept.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from omniseq.api._saved import load_payload, save_payload
from omniseq.backbones.itransformer import ITransformer
from omniseq.backbones.tsmixer import TSMixer
from omniseq.data.forecasting import ForecastingDataModule
from omniseq.data.series_io import pandas_freq
from omniseq.domains.timeseries.time_features import time_features
from omniseq.recipes.checkpoints import AtomicCheckpointIO, read_checkpoint
from omniseq.recipes.forecasting import ForecastingTask

__all__ = ["Forecaster"]

MODELS = ("itransformer", "tsmixer")
_DATA_KEYS = ("seq_len", "pred_len", "features", "target", "date_column", "split", "split_dates", "fill",
              "missing_values", "scale", "freq", "batch_size", "seed")


class Forecaster:
    """A forecasting model plus the data settings it was fitted with.

    Args:
        model: ``itransformer`` or ``tsmixer``.
        mixer: sequence mixer (``attention``, ``gla``, ``mamba``, ``s5``, ``mlp``, ...);
            None = the model's own (attention for iTransformer, mlp for TSMixer).
        seq_len, pred_len: lookback and the model's horizon (``predict`` rolls forward past it).
        features, target, date_column, split, split_dates, fill, missing_values, scale, freq:
            as in :class:`~omniseq.data.forecasting.ForecastingDataModule`.
        model_options: extra backbone arguments (e.g. ``{"d_model": 256}``).
        max_epochs, batch_size, lr, patience, seed: training settings.
        trainer_options: extra ``lightning.Trainer`` arguments (e.g. ``limit_train_batches``).
    """

    def __init__(
        self,
        model: str = "itransformer",
        mixer: str | None = None,
        seq_len: int = 96,
        pred_len: int = 24,
        features: str = "M",
        target: str = "OT",
        date_column: str | None = "date",
        split: str = "auto",
        split_dates: list[str] | None = None,
        fill: str = "error",
        missing_values: tuple[float, ...] = (),
        scale: bool = True,
        freq: str = "auto",
        model_options: dict | None = None,
        max_epochs: int = 10,
        batch_size: int = 32,
        lr: float = 5e-4,
        patience: int = 3,
        seed: int = 0,
        trainer_options: dict | None = None,
    ) -> None:
        if model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {model!r}")
        self.config = {k: v for k, v in locals().items() if k != "self"}
        self.task: ForecastingTask | None = None
        self.datamodule: ForecastingDataModule | None = None
        self._meta: dict[str, Any] = {}

    # -- building -----------------------------------------------------------

    def _data_kwargs(self) -> dict[str, Any]:
        return {k: self.config[k] for k in _DATA_KEYS}

    def _backbone(self, num_channels: int, num_time_features: int) -> torch.nn.Module:
        cfg, options = self.config, dict(self.config["model_options"] or {})
        if cfg["model"] == "itransformer":
            options = {"d_model": 128, "d_ff": 128, "depth": 2, **options}
            return ITransformer(cfg["seq_len"], cfg["pred_len"], mixer=cfg["mixer"] or "attention",
                                num_channels=num_channels, num_time_features=num_time_features, **options)
        return TSMixer(cfg["seq_len"], cfg["pred_len"], num_channels, mixer=cfg["mixer"] or "mlp", **options)

    def _make_datamodule(self, data: Any) -> ForecastingDataModule:
        if data is None or isinstance(data, (str, Path)):
            return ForecastingDataModule(None if data is None else str(data), **self._data_kwargs())
        return ForecastingDataModule(data=data, **self._data_kwargs())

    # -- fit / predict --------------------------------------------------------

    def fit(self, data: Any = None) -> Forecaster:
        """Train on ``data``: a DataFrame/Series, an xarray Dataset/DataArray, a file path or
        registered name (``"ETTh1"``), or None for the built-in synthetic series."""
        dm = self._make_datamodule(data)
        dm.setup()
        L.seed_everything(self.config["seed"], verbose=False)
        backbone = self._backbone(dm.num_channels, dm.num_time_features)
        self.task = ForecastingTask(backbone, lr=self.config["lr"])
        with tempfile.TemporaryDirectory() as tmp:
            best = ModelCheckpoint(dirpath=tmp, monitor="val/loss", mode="min", filename="best")
            options = {
                "max_epochs": self.config["max_epochs"], "logger": False, "enable_progress_bar": False,
                "enable_model_summary": False, "default_root_dir": tmp, "accelerator": "auto",
                **(self.config["trainer_options"] or {}),
            }
            early = EarlyStopping(monitor="val/loss", mode="min", patience=self.config["patience"])
            # The user's callbacks run beside the two this method relies on, not instead of them.
            callbacks = [best, early, *(options.pop("callbacks", None) or [])]
            options.setdefault("plugins", [AtomicCheckpointIO()])  # the best checkpoint is written atomically
            trainer = L.Trainer(callbacks=callbacks, **options)
            trainer.fit(self.task, datamodule=dm)
            if best.best_model_path:
                state = read_checkpoint(best.best_model_path)["state_dict"]
                self.task.load_state_dict(state)
        self.task.cpu().eval()  # predict/evaluate/plot run on CPU tensors
        self.datamodule = dm
        self._remember(dm, is_xarray=type(data).__module__.startswith("xarray"))
        return self

    def _remember(self, dm: ForecastingDataModule, is_xarray: bool) -> None:
        """What predict needs without the data: the last lookback, scaling and calendar."""
        frame = dm.clean_frame
        self._meta = {
            "history": frame[dm.input_columns].to_numpy(np.float64)[-dm.seq_len :],
            "dates": dm.dates[-dm.seq_len :],
            "step": pandas_freq(dm.dates),
            "freq": dm.freq,
            "input_columns": list(dm.input_columns),
            "output_columns": list(dm.output_columns),
            "mean": None if dm.scaler is None else dm.scaler.mean_.copy(),
            "std": None if dm.scaler is None else dm.scaler.scale_.copy(),
            "num_channels": dm.num_channels,
            "num_time_features": dm.num_time_features,
            "is_xarray": is_xarray,
        }

    def _require_fitted(self) -> ForecastingTask:
        if self.task is None:
            raise RuntimeError("call fit() (or Forecaster.load) first")
        return self.task

    def predict(self, horizon: int | None = None) -> pd.DataFrame | Any:
        """Forecast the ``horizon`` steps after the end of the data (default: ``pred_len``).

        Returns a DataFrame indexed by the future timestamps (an ``xarray.DataArray``
        with dims ``(time, variable)`` when fitted on xarray data), in original units.
        Horizons past ``pred_len`` roll the model forward on its own forecasts, which
        needs the inputs to be the outputs (``features`` ``M`` or ``S``).
        """
        task, meta, cfg = self._require_fitted(), self._meta, self.config
        horizon = cfg["pred_len"] if horizon is None else horizon
        if horizon <= 0:
            raise ValueError(f"horizon must be positive, got {horizon}")
        if horizon > cfg["pred_len"] and meta["input_columns"] != meta["output_columns"]:
            raise ValueError(
                f"horizon {horizon} > pred_len {cfg['pred_len']} needs features 'M' or 'S' (outputs fed back as "
                f"inputs); with {cfg['features']!r} fit a model with pred_len >= {horizon}"
            )
        mean, std = meta["mean"], meta["std"]
        scaled = meta["history"] if mean is None else (meta["history"] - mean) / std
        steps = -(-horizon // cfg["pred_len"]) * cfg["pred_len"]
        future = pd.date_range(meta["dates"][-1], periods=steps + 1, freq=meta["step"])[1:]
        marks = time_features(meta["dates"].append(future), meta["freq"])
        window, outputs = torch.as_tensor(scaled, dtype=torch.float32)[None], []
        with torch.no_grad():
            for k in range(0, steps, cfg["pred_len"]):
                x_mark = torch.as_tensor(marks[k : k + cfg["seq_len"]])[None]
                y = task(window, x_mark)[..., -len(meta["output_columns"]) :]
                outputs.append(y)
                if k + cfg["pred_len"] < steps:  # only M/S reach here: outputs are the inputs
                    window = torch.cat([window, y], dim=1)[:, -cfg["seq_len"] :]
        values = torch.cat(outputs, dim=1)[0, :horizon].double().numpy()
        if mean is not None:
            idx = [meta["input_columns"].index(c) for c in meta["output_columns"]]
            values = values * std[idx] + mean[idx]
        frame = pd.DataFrame(values, index=pd.DatetimeIndex(future[:horizon], name="date"),
                             columns=meta["output_columns"])
        if meta["is_xarray"]:
            import xarray as xr

            return xr.DataArray(values, dims=("time", "variable"),
                                coords={"time": frame.index.to_numpy(), "variable": meta["output_columns"]})
        return frame

    # -- evaluation and plots ---------------------------------------------------

    def _require_data(self) -> ForecastingDataModule:
        self._require_fitted()
        if self.datamodule is None:
            raise RuntimeError("this Forecaster was loaded without data; call set_data(data) first")
        return self.datamodule

    def set_data(self, data: Any) -> Forecaster:
        """Attach data (same columns) to a loaded Forecaster for ``evaluate``/``plot``."""
        datamodule = self._make_datamodule(data)
        expected = self._meta.get("input_columns")
        if expected is not None and list(datamodule.input_columns) != list(expected):
            raise ValueError(
                f"set_data: the model was fitted on {len(expected)} input column(s) {expected}, but the data "
                f"has {len(datamodule.input_columns)}: {list(datamodule.input_columns)}; give the same columns"
            )
        datamodule.setup()
        self.datamodule = datamodule
        return self

    def evaluate(self, split: str = "test") -> dict[str, float]:
        """MSE and MAE over every window of ``split``, normalised units (the papers' convention),
        plus ``mse_original``/``mae_original`` in the data's units."""
        dm, task = self._require_data(), self._require_fitted()
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        loader = torch.utils.data.DataLoader(dm.datasets[split], batch_size=256)
        sums = np.zeros(4)
        count = 0
        with torch.no_grad():
            for batch in loader:
                pred = task(batch["x"], batch["x_mark"])[..., -batch["y"].shape[-1] :]
                err = (pred - batch["y"]).double()
                err_orig = (dm.inverse_transform(pred) - dm.inverse_transform(batch["y"])).double()
                sums += [err.square().sum().item(), err.abs().sum().item(),
                         err_orig.square().sum().item(), err_orig.abs().sum().item()]
                count += err.numel()
        return dict(zip(("mse", "mae", "mse_original", "mae_original"), (sums / count).tolist(), strict=True))

    def plot(self, split: str = "test", window: int = -1, channels: int | list[str] = 3, ax=None):
        """History, truth and forecast (original units) of one window of ``split``; returns the figure."""
        import matplotlib.pyplot as plt

        dm, task = self._require_data(), self._require_fitted()
        dataset = dm.datasets[split]
        item = dataset[window % len(dataset)]
        with torch.no_grad():
            pred = task(item["x"][None], item["x_mark"][None])[0][..., -item["y"].shape[-1] :]
        names = dm.output_columns
        chosen = names[-channels:] if isinstance(channels, int) else list(channels)
        history = dm.inverse_transform(item["x"][:, [dm.input_columns.index(c) for c in names]]).numpy()
        truth, forecast = dm.inverse_transform(item["y"]).numpy(), dm.inverse_transform(pred).numpy()
        axes = ax if ax is not None else plt.subplots(len(chosen), 1, figsize=(9, 2.2 * len(chosen)), squeeze=False)[1][:, 0]
        axes = np.atleast_1d(axes)
        t_hist, t_future = np.arange(-len(history), 0), np.arange(len(truth))
        for axis, name in zip(axes, chosen, strict=False):
            j = names.index(name)
            axis.plot(t_hist, history[:, j], color="0.5", label="history")
            axis.plot(t_future, truth[:, j], color="k", label="truth")
            axis.plot(t_future, forecast[:, j], color="C1", label="forecast")
            axis.set_ylabel(name)
        axes[0].legend(loc="upper left", fontsize="small")
        return axes[0].figure

    # -- persistence ---------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Weights, settings and the last lookback (so ``predict`` works after ``load`` without data)."""
        task = self._require_fitted()
        payload = {"config": self.config, "meta": self._meta, "state_dict": task.backbone.state_dict()}
        return save_payload(payload, path, "Forecaster")

    @classmethod
    def load(cls, path: str | Path) -> Forecaster:
        saved = load_payload(path, "Forecaster", ("config", "meta", "state_dict"))
        forecaster = cls(**saved["config"])
        forecaster._meta = saved["meta"]
        backbone = forecaster._backbone(saved["meta"]["num_channels"], saved["meta"]["num_time_features"])
        backbone.load_state_dict(saved["state_dict"])
        forecaster.task = ForecastingTask(backbone, lr=forecaster.config["lr"]).eval()
        return forecaster
