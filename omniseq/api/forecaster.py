"""``Forecaster``: fit a forecasting backbone on a table in a few lines (notebooks).

    fc = Forecaster("itransformer")            # the paper settings of forecasting/etth1_itransformer_96
    fc = Forecaster(recipe="forecasting/ettm1_itransformer_96", pred_len=24, split="ratio", ratios=(0.7, 0.1, 0.2))
    fc.fit(frame)                   # DataFrame (date column or DatetimeIndex), xarray, or a path
    future = fc.predict(48)         # DataFrame indexed by the next 48 timestamps, original units
    fc.evaluate()                   # {"mse", "mae"} on the test split (normalised, as papers report)
    fc.evaluate(forecast="naive")   # the same for repeating the last observed value
    fc.plot()                       # history, truth and forecast of one test window, over time
    fc.save("model.pt"); Forecaster.load("model.pt").predict(24)
    Forecaster.from_checkpoint("runs/forecasting/etth1_itransformer_96/checkpoints/best.ckpt")

Training is the ``ForecastingTask`` recipe under a Lightning ``Trainer`` with
early stopping on validation loss; the best validation checkpoint is kept under
``default_root_dir`` and loaded back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from omniseq.api._saved import load_payload, save_payload
from omniseq.backbones.itransformer import ITransformer
from omniseq.backbones.tsmixer import TSMixer
from omniseq.data.forecasting import ForecastingDataModule
from omniseq.domains.timeseries.time_features import time_features
from omniseq.recipes.checkpoints import AtomicCheckpointIO, read_checkpoint
from omniseq.recipes.forecasting import ForecastingTask
from omniseq.recipes.progress import fit_callbacks

__all__ = ["Forecaster"]

MODELS = {"itransformer": ITransformer, "tsmixer": TSMixer}
# The recipe whose (paper) settings a model gets when no recipe is named.
DEFAULT_RECIPES = {"itransformer": "forecasting/etth1_itransformer_96", "tsmixer": "forecasting/etth1_tsmixer_96"}
_DATA_KEYS = ("seq_len", "pred_len", "features", "target", "date_column", "split", "ratios", "split_dates", "fill",
              "missing_values", "scale", "freq", "batch_size", "seed")
# Backbone arguments that follow the data or the Forecaster's own settings, not the recipe.
_LINKED = ("seq_len", "pred_len", "num_channels", "num_time_features", "mixer")


def recipe_settings(recipe: str) -> dict[str, Any]:
    """The Forecaster settings a forecasting recipe YAML states (read as data, nothing imported)."""
    from omniseq.recipes.cli import CONFIG_ROOT

    path = Path(recipe) if Path(recipe).is_file() else CONFIG_ROOT / f"{recipe.removesuffix('.yaml')}.yaml"
    if not path.is_file():
        raise ValueError(f"recipe {recipe!r} is neither a YAML file nor a packaged recipe (see `omniseq list`)")
    config = yaml.safe_load(path.read_text())
    model_args = config["model"]["init_args"]
    backbone = model_args["backbone"]
    name = backbone["class_path"].rpartition(".")[2]
    models = {cls.__name__: key for key, cls in MODELS.items()}
    if name not in models:
        raise ValueError(f"recipe {recipe!r} builds {name}; Forecaster supports {sorted(models)}")
    trainer = config.get("trainer", {})
    patience = [c["init_args"].get("patience", 3) for c in trainer.get("callbacks", [])
                if str(c.get("class_path", "")).endswith("EarlyStopping")]
    data = config.get("data", {}).get("init_args", {})
    init = backbone.get("init_args", {})
    return {
        "model": models[name], "mixer": init.get("mixer"),
        "model_options": {k: v for k, v in init.items() if k not in _LINKED},
        "seq_len": data.get("seq_len", 96), "pred_len": data.get("pred_len", 96),
        "batch_size": data.get("batch_size", 32), "lr": model_args.get("lr", 1e-4),
        "lr_decay": model_args.get("lr_decay", 0.5), "max_epochs": trainer.get("max_epochs", 10),
        "patience": patience[0] if patience else 3, "seed": config.get("seed_everything", 0),
    }


class Forecaster:
    """A forecasting model plus the data settings it was fitted with.

    Every setting left as None comes from ``recipe``, by default the paper recipe of the
    model (``forecasting/etth1_itransformer_96``: lr 1e-4 halved after every epoch from the 2nd, d_model =
    d_ff = 256, 2 layers, seq_len = pred_len = 96, batch 32, 10 epochs, patience 3,
    seed 2021; ``forecasting/etth1_tsmixer_96`` for TSMixer).

    Args:
        model: ``itransformer`` or ``tsmixer`` (None: the recipe's, else itransformer).
        mixer: sequence mixer (``attention``, ``gla``, ``mamba``, ``s5``, ``mlp``, ...);
            None = the recipe's (attention for iTransformer, mlp for TSMixer).
        recipe: a forecasting recipe name or YAML path whose settings fill the None ones.
        seq_len, pred_len: lookback and the model's horizon (``predict`` rolls forward past it).
        features, target, date_column, split, ratios, split_dates, fill, missing_values, scale, freq:
            as in :class:`~omniseq.data.forecasting.ForecastingDataModule` (``split="auto"``
            takes the ETT split only for ETT data, else ``ratio`` with ``ratios``; the choice
            is printed).
        model_options: backbone arguments over the recipe's (e.g. ``{"d_model": 128}``).
        max_epochs, batch_size, lr, lr_decay, patience, seed: training settings.
        default_root_dir: where the checkpoints go (``<dir>/checkpoints/best.ckpt``; printed).
            None: a new ``runs/forecaster/version_<n>`` per fit, so no fit overwrites another's.
        trainer_options: extra ``lightning.Trainer`` arguments (e.g. ``limit_train_batches``).
    """

    def __init__(
        self,
        model: str | None = None,
        mixer: str | None = None,
        recipe: str | None = None,
        seq_len: int | None = None,
        pred_len: int | None = None,
        features: str = "M",
        target: str = "OT",
        date_column: str | None = "date",
        split: str = "auto",
        ratios: tuple[float, float, float] = (0.7, 0.1, 0.2),
        split_dates: list[str] | None = None,
        fill: str = "error",
        missing_values: tuple[float, ...] = (),
        scale: bool = True,
        freq: str = "auto",
        model_options: dict | None = None,
        max_epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        lr_decay: float | None = None,
        patience: int | None = None,
        seed: int | None = None,
        default_root_dir: str | Path | None = None,
        trainer_options: dict | None = None,
    ) -> None:
        if model is not None and model not in MODELS:
            raise ValueError(f"model must be one of {tuple(MODELS)}, got {model!r}")
        given = {k: v for k, v in locals().items() if k not in ("self", "recipe")}
        defaults = recipe_settings(recipe or DEFAULT_RECIPES[model or "itransformer"])
        if model is not None and recipe is not None and defaults["model"] != model:
            raise ValueError(f"model={model!r} but recipe {recipe!r} builds {defaults['model']!r}; give one of them")
        config = {k: (defaults.get(k) if v is None else v) for k, v in given.items()}
        config["model_options"] = {**defaults["model_options"], **(model_options or {})}
        config["ratios"] = tuple(ratios)
        config["default_root_dir"] = None if default_root_dir is None else str(default_root_dir)
        config["recipe"] = recipe or DEFAULT_RECIPES[config["model"]]
        self.config = config
        self.task: ForecastingTask | None = None
        self.datamodule: ForecastingDataModule | None = None
        self._meta: dict[str, Any] = {}

    # -- building -----------------------------------------------------------

    def _data_kwargs(self) -> dict[str, Any]:
        return {k: self.config[k] for k in _DATA_KEYS}

    def _backbone(self, num_channels: int, num_time_features: int) -> torch.nn.Module:
        cfg, options = self.config, dict(self.config["model_options"] or {})
        if cfg["model"] == "itransformer":
            return ITransformer(cfg["seq_len"], cfg["pred_len"], mixer=cfg["mixer"] or "attention",
                                num_channels=num_channels, num_time_features=num_time_features, **options)
        return TSMixer(cfg["seq_len"], cfg["pred_len"], num_channels, mixer=cfg["mixer"] or "mlp", **options)

    def _task(self, backbone: torch.nn.Module) -> ForecastingTask:
        return ForecastingTask(backbone, lr=self.config["lr"], lr_decay=self.config["lr_decay"])

    def _make_datamodule(self, data: Any) -> ForecastingDataModule:
        if data is None or isinstance(data, (str, Path)):
            return ForecastingDataModule(None if data is None else str(data), **self._data_kwargs())
        return ForecastingDataModule(data=data, **self._data_kwargs())

    # -- fit / predict --------------------------------------------------------

    def fit(self, data: Any = None, verbose: bool = True) -> Forecaster:
        """Train on ``data``: a DataFrame/Series, an xarray Dataset/DataArray, a file path or
        registered name (``"ETTh1"``), or None for the built-in synthetic series.
        ``verbose`` prints a progress line every 30 s and why training stopped."""
        dm = self._make_datamodule(data)
        dm.setup()
        L.seed_everything(self.config["seed"], verbose=False)
        self.task = self._task(self._backbone(dm.num_channels, dm.num_time_features))
        root = _run_folder(self.config["default_root_dir"])
        best = ModelCheckpoint(dirpath=root / "checkpoints", monitor="val/loss", mode="min", filename="best",
                               enable_version_counter=False)
        progress = fit_callbacks(verbose, self.config["trainer_options"])
        options = {
            "max_epochs": self.config["max_epochs"], "logger": False,
            "enable_progress_bar": progress["enable_progress_bar"],
            "enable_model_summary": False, "default_root_dir": str(root), "accelerator": "auto",
            **(self.config["trainer_options"] or {}),
        }
        early = EarlyStopping(monitor="val/loss", mode="min", patience=self.config["patience"])
        # The user's callbacks run beside the two this method relies on, not instead of them.
        callbacks = [best, early, _StoreSettings(self.config), *progress["callbacks"],
                     *(options.pop("callbacks", None) or [])]
        options.setdefault("plugins", [AtomicCheckpointIO()])  # the best checkpoint is written atomically
        trainer = L.Trainer(callbacks=callbacks, **options)
        trainer.fit(self.task, datamodule=dm)
        if best.best_model_path:
            self.task.load_state_dict(read_checkpoint(best.best_model_path)["state_dict"])
            print(f"Forecaster: best checkpoint {Path(best.best_model_path).resolve()} "
                  "(Forecaster.from_checkpoint reads it)", flush=True)
        self.task.cpu().eval()  # predict/evaluate/plot run on CPU tensors
        self.datamodule = dm
        self._meta = {**dm.series_state(), "is_xarray": type(data).__module__.startswith("xarray")}
        return self

    @classmethod
    def from_checkpoint(cls, path: str | Path, data: Any = None) -> Forecaster:
        """A Forecaster from a ``ForecastingTask`` checkpoint written by ``omniseq fit`` (or ``fit``).

        The checkpoint holds the backbone settings, the weights and the series state the
        DataModule stores (scaling, column names, last lookback), so ``predict`` works at
        once; ``data`` (or ``set_data``) enables ``evaluate``/``plot``.
        """
        checkpoint = read_checkpoint(path)
        series = (checkpoint.get(ForecastingDataModule.__qualname__) or {}).get("series")
        backbone = (checkpoint.get("hyper_parameters") or {}).get("backbone")
        if series is not None and SETTINGS_KEY in checkpoint:  # written by Forecaster.fit
            forecaster = cls(**checkpoint[SETTINGS_KEY])
            forecaster._meta = {**series, "is_xarray": False}
            task = forecaster._task(forecaster._backbone(len(series["input_columns"]), series["num_time_features"]))
            task.load_state_dict(checkpoint["state_dict"])
            forecaster.task = task.eval()
            return forecaster if data is None else forecaster.set_data(data)
        if series is None or not isinstance(backbone, dict):
            raise ValueError(
                f"{path}: not a forecasting checkpoint with its data settings (it lacks the stored series state or "
                "the backbone config of `omniseq fit`); fit again with this version, or use ForecastingTask."
                "load_from_checkpoint with a backbone"
            )
        name = str(backbone.get("class_path", "")).rpartition(".")[2]
        models = {c.__name__: key for key, c in MODELS.items()}
        if name not in models:
            raise ValueError(f"{path}: the checkpoint's backbone is {name!r}; Forecaster reads {sorted(models)}")
        init = dict(backbone.get("init_args") or {})
        hparams, data_hparams = checkpoint["hyper_parameters"], checkpoint.get("datamodule_hyper_parameters") or {}
        settings = {k: data_hparams[k] for k in _DATA_KEYS if k in data_hparams and k not in ("seq_len", "pred_len")}
        forecaster = cls(
            models[name], mixer=init.get("mixer"), seq_len=init["seq_len"], pred_len=init["pred_len"],
            model_options={k: v for k, v in init.items() if k not in _LINKED},
            lr=hparams.get("lr"), lr_decay=hparams.get("lr_decay"), **settings,
        )
        forecaster._meta = {**series, "is_xarray": False}
        task = forecaster._task(forecaster._backbone(len(series["input_columns"]), series["num_time_features"]))
        task.load_state_dict(checkpoint["state_dict"])
        forecaster.task = task.eval()
        return forecaster if data is None else forecaster.set_data(data)

    def _require_fitted(self) -> ForecastingTask:
        if self.task is None:
            raise RuntimeError("call fit() (or Forecaster.load / Forecaster.from_checkpoint) first")
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
        if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)):
            raise TypeError(f"horizon must be a whole number of time steps (an int), got {horizon!r}")
        if horizon <= 0:
            raise ValueError(f"horizon must be positive, got {horizon}")
        if horizon > cfg["pred_len"] and meta["input_columns"] != meta["output_columns"]:
            raise ValueError(
                f"horizon {horizon} > pred_len {cfg['pred_len']} needs features 'M' or 'S' (outputs fed back as "
                f"inputs); with {cfg['features']!r} fit a model with pred_len >= {horizon}"
            )
        mean, std = (None, None) if meta["mean"] is None else (meta["mean"].numpy(), meta["std"].numpy())
        history = meta["history"].numpy()
        scaled = history if mean is None else (history - mean) / std
        dates = pd.DatetimeIndex(meta["dates"])
        steps = -(-horizon // cfg["pred_len"]) * cfg["pred_len"]
        future = pd.date_range(dates[-1], periods=steps + 1, freq=meta["step"])[1:]
        marks = time_features(dates.append(future), meta["freq"])
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

    def evaluate(self, split: str = "test", forecast: str = "model") -> dict[str, float]:
        """MSE and MAE over every window of ``split``, normalised units (the papers' convention),
        plus ``mse_original``/``mae_original`` in the data's units.

        ``forecast="naive"`` scores the naive baseline instead: the last observed value of
        each channel repeated over the horizon.
        """
        dm, task = self._require_data(), self._require_fitted()
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        if forecast not in ("model", "naive"):
            raise ValueError(f"forecast must be 'model' or 'naive', got {forecast!r}")
        outputs = [dm.input_columns.index(c) for c in dm.output_columns]
        loader = torch.utils.data.DataLoader(dm.datasets[split], batch_size=256)
        sums = np.zeros(4)
        count = 0
        with torch.no_grad():
            for batch in loader:
                if forecast == "naive":
                    pred = batch["x"][:, -1:, outputs].expand_as(batch["y"])
                else:
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
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        dataset = dm.datasets[split]
        index = window % len(dataset)
        item = dataset[index]
        with torch.no_grad():
            pred = task(item["x"][None], item["x_mark"][None])[0][..., -item["y"].shape[-1] :]
        names = dm.output_columns
        chosen = names[-channels:] if isinstance(channels, int) else list(channels)
        history = dm.inverse_transform(item["x"][:, [dm.input_columns.index(c) for c in names]]).numpy()
        truth, forecast = dm.inverse_transform(item["y"]).numpy(), dm.inverse_transform(pred).numpy()
        start = dm.borders()[("train", "val", "test").index(split)][0] + index
        dates = dm.dates[start : start + len(history) + len(truth)]
        t_hist, t_future = dates[: len(history)], dates[len(history) :]
        axes = ax if ax is not None else plt.subplots(len(chosen), 1, figsize=(9, 2.2 * len(chosen)), squeeze=False,
                                                      sharex=True)[1][:, 0]
        axes = np.atleast_1d(axes)
        for axis, name in zip(axes, chosen, strict=False):
            j = names.index(name)
            axis.plot(t_hist, history[:, j], color="0.5", label="history")
            axis.plot(t_future, truth[:, j], color="k", label="truth")
            axis.plot(t_future, forecast[:, j], color="C1", label="forecast")
            axis.set_ylabel(name)
        axes[0].legend(loc="upper left", fontsize="small")
        axes[-1].figure.autofmt_xdate()
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
        config = {k: v for k, v in saved["config"].items() if k != "recipe"}
        forecaster = cls(recipe=saved["config"].get("recipe"), **config)
        forecaster._meta = meta = _meta_as_tensors(saved["meta"])
        backbone = forecaster._backbone(len(meta["input_columns"]), meta["num_time_features"])
        backbone.load_state_dict(saved["state_dict"])
        forecaster.task = forecaster._task(backbone).eval()
        return forecaster


SETTINGS_KEY = "omniseq_forecaster_settings"


def _run_folder(default_root_dir: str | None) -> Path:
    """The folder of this fit: the one given, else the next free ``runs/forecaster/version_<n>``."""
    if default_root_dir is not None:
        return Path(default_root_dir).expanduser()
    base = Path("runs/forecaster")
    taken = [int(p.name.split("_")[1]) for p in base.glob("version_*") if p.name.split("_")[1].isdigit()]
    return base / f"version_{max(taken, default=-1) + 1}"


class _StoreSettings(L.Callback):
    """Writes the Forecaster's settings into its checkpoints, so ``from_checkpoint`` rebuilds it."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()
                         if k != "trainer_options"}

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[SETTINGS_KEY] = self.settings


def _meta_as_tensors(meta: dict[str, Any]) -> dict[str, Any]:
    """Files saved before the series state was tensors and strings held numpy and pandas objects."""
    meta = dict(meta)
    for key in ("history", "mean", "std"):
        if isinstance(meta.get(key), np.ndarray):
            meta[key] = torch.as_tensor(meta[key])
    if isinstance(meta.get("dates"), pd.DatetimeIndex):
        meta["dates"] = [t.isoformat() for t in meta["dates"]]
    if not isinstance(meta.get("step"), str):
        meta["step"] = pd.tseries.frequencies.to_offset(meta["step"]).freqstr
    return meta
