"""Model files are data: no loader runs code from a file or builds a class a file names.

Every loader (``load_file``, ``read_checkpoint``, the API objects' ``load`` and
``from_checkpoint``, ``Task.load_from_checkpoint``, ``pretrained=``, the Lightning
checkpoint IO and ``omniseq test --ckpt_path``) is fed, in every file format (zip
``torch.save``, raw pickle, legacy non-zip ``torch.save``, Lightning checkpoint, API
saved file), a pickle whose ``__reduce__`` would create a sentinel file, and files naming
``subprocess.Popen`` as the class to build. The sentinel must never appear and the error
must name the file. Files of earlier versions are refused with the conversion command,
which converts them.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from omniseq._files import UnreadableFileError, UnsafeFileError, from_data, load_file, to_data
from omniseq.api import DNAEncoder, Forecaster, Segmenter, Separator
from omniseq.api._convert import convert_file
from omniseq.api._saved import KIND_KEY
from omniseq.backbones.dna import DNAModel
from omniseq.backbones.separators import MaskSeparator
from omniseq.recipes.checkpoints import AtomicCheckpointIO, read_checkpoint
from omniseq.recipes.cli import main
from omniseq.recipes.forecasting import ForecastingTask
from omniseq.recipes.genomics import SequenceClassificationTask, load_backbone_weights


class RunsCode:
    """Unpickling this object creates ``sentinel`` (what an attacker's payload would do)."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return eval, (f"open({str(self.sentinel)!r}, 'w').close()",)


def tiny_dna() -> DNAModel:
    return DNAModel(dim=8, depth=1, mixer_options={"d_state": 4})


def lightning_payload(evil: object) -> dict:
    return {"state_dict": {"backbone.w": torch.zeros(1)}, "pytorch-lightning_version": "2.6.6",
            "hyper_parameters": {"lr": evil}, "epoch": 0, "global_step": 0}


# The payload of each kind of file, with the code-running object inside.
PAYLOADS: dict[str, Callable[[object], object]] = {
    "plain": lambda evil: {"state_dict": {"w": torch.zeros(2)}, "extra": evil},
    "lightning": lightning_payload,
    "forecaster": lambda evil: {"config": {}, "meta": evil, "state_dict": {}, KIND_KEY: "Forecaster"},
    "separator": lambda evil: {"model": evil, "sample_rate": 8000, "chunk": 1, "overlap": 0, KIND_KEY: "Separator"},
    "dna_encoder": lambda evil: {"backbone_class": "omniseq.backbones.dna.DNAModel", "backbone_config": evil,
                                 "backbone_state": {}, "tokenizer": {}, "head_state": None, KIND_KEY: "DNAEncoder"},
}


def write(path: Path, payload: object, fmt: str) -> Path:
    if fmt == "zip":
        torch.save(payload, path)
    elif fmt == "legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    return path


LOADERS: dict[str, Callable[[Path], object]] = {
    "load_file": load_file,
    "read_checkpoint": read_checkpoint,
    "checkpoint_io": lambda p: AtomicCheckpointIO().load_checkpoint(p),
    "Forecaster.load": Forecaster.load,
    "Separator.load": Separator.load,
    "Separator.from_checkpoint": Separator.from_checkpoint,
    "DNAEncoder.load": DNAEncoder.load,
    "DNAEncoder.from_checkpoint": DNAEncoder.from_checkpoint,
    "Segmenter.load": Segmenter.load,
    "Segmenter.from_checkpoint": Segmenter.from_checkpoint,
    "Forecaster.from_checkpoint": Forecaster.from_checkpoint,
    "ForecastingTask.load_from_checkpoint": ForecastingTask.load_from_checkpoint,
    "pretrained=": lambda p: SequenceClassificationTask(tiny_dna(), num_classes=2, pretrained=str(p)),
    "load_backbone_weights": lambda p: load_backbone_weights(tiny_dna(), p),
    "omniseq test --ckpt_path": lambda p: main(["test", "--config", "forecasting/demo_itransformer", "--ckpt_path",
                                                str(p)]),
}


# Every loader meets every payload in every format; the CLI (seconds a parse) meets the checkpoint only.
CASES = [(loader, kind, fmt) for loader in sorted(LOADERS) for kind in sorted(PAYLOADS)
         for fmt in ("zip", "legacy", "raw_pickle") if kind == "lightning" or not loader.startswith("omniseq")]


@pytest.mark.parametrize(("loader", "kind", "fmt"), CASES)
def test_a_pickle_that_runs_code_is_refused_before_it_runs(tmp_path, loader, kind, fmt):
    sentinel = tmp_path / "SENTINEL"
    path = write(tmp_path / f"{kind}.{fmt}.pt", PAYLOADS[kind](RunsCode(sentinel)), fmt)
    with pytest.raises(UnsafeFileError, match=rf"{path.name} (holds Python objects|is a raw pickle).*omniseq convert"):
        LOADERS[loader](path)
    assert not sentinel.exists()


def popen_checkpoint(tmp_path: Path, where: str) -> Path:
    """A Lightning checkpoint whose hyper-parameters ask for ``subprocess.Popen``."""
    sentinel = str(tmp_path / "SENTINEL")
    backbone = {"class_path": "omniseq.backbones.itransformer.ITransformer", "init_args": {"seq_len": 8, "pred_len": 4}}
    hparams = {"_class_path": "omniseq.recipes.forecasting.ForecastingTask", "backbone": backbone, "lr": 1e-3,
               "_instantiator": "lightning.pytorch.cli.instantiate_module"}
    popen = {"class_path": "subprocess.Popen", "init_args": {"args": ["touch", sentinel]}}
    if where == "task":
        hparams = {**hparams, "_class_path": "subprocess.Popen", "args": ["touch", sentinel]}
    else:
        hparams = {**hparams, "backbone": popen}
    payload = {"state_dict": {}, "pytorch-lightning_version": "2.6.6", "hyper_parameters": hparams,
               "epoch": 0, "global_step": 0, "loops": {}, "callbacks": {}, "optimizer_states": [], "lr_schedulers": []}
    path = tmp_path / f"popen_{where}.ckpt"
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("where", ["task", "backbone"])
@pytest.mark.parametrize("load", [
    pytest.param(ForecastingTask.load_from_checkpoint, id="Task.load_from_checkpoint"),
    pytest.param(Separator.from_checkpoint, id="Separator.from_checkpoint"),
    pytest.param(DNAEncoder.from_checkpoint, id="DNAEncoder.from_checkpoint"),
    pytest.param(lambda p: main(["test", "--config", "forecasting/demo_itransformer", "--ckpt_path", str(p)]),
                 id="omniseq-test--ckpt_path"),
])
def test_a_checkpoint_naming_a_foreign_class_builds_nothing(tmp_path, load, where):
    path = popen_checkpoint(tmp_path, where)
    with pytest.raises(UnsafeFileError, match=rf"checkpoint \S*{path.name} asks to build 'subprocess.Popen', which is "
                       r"not an omniseq class"):
        load(path)
    assert not (tmp_path / "SENTINEL").exists()


@pytest.mark.parametrize(("load", "match"), [
    pytest.param(Forecaster.from_checkpoint, r"the checkpoint's backbone is 'Popen'; Forecaster reads",
                 id="Forecaster.from_checkpoint"),
    pytest.param(Segmenter.from_checkpoint, r"its backbone is recorded as 'subprocess\.Popen'",
                 id="Segmenter.from_checkpoint"),
])
def test_api_from_checkpoint_builds_only_its_own_models(tmp_path, load, match):
    path = popen_checkpoint(tmp_path, "backbone")
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["ForecastingDataModule"] = {"series": {"input_columns": ["a"], "num_time_features": 4}}
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match=rf"{path.name}: .*{match}"):
        load(path)
    assert not (tmp_path / "SENTINEL").exists()


def popen_saved_file(tmp_path: Path, kind: str, key: str) -> Path:
    sentinel = str(tmp_path / "SENTINEL")
    if kind == "DNAEncoder":
        payload = {key: "subprocess.Popen", "backbone_config": {"args": ["touch", sentinel]}, "backbone_state": {},
                   "tokenizer": {}, "head_state": None}
    else:
        payload = {"model": {"name": "subprocess.Popen", "config": {"args": ["touch", sentinel]}, "state_dict": {}},
                   "sample_rate": 8000, "chunk": 8000, "overlap": 0}
    path = tmp_path / f"{kind}.pt"
    torch.save({**payload, KIND_KEY: kind}, path)
    return path


@pytest.mark.parametrize(("kind", "key", "load"), [
    pytest.param("DNAEncoder", "backbone", DNAEncoder.load, id="DNAEncoder-backbone"),
    pytest.param("DNAEncoder", "backbone_class", DNAEncoder.load, id="DNAEncoder-old-backbone_class"),
    pytest.param("Separator", "model", Separator.load, id="Separator-model"),
])
def test_a_saved_file_naming_a_foreign_class_builds_nothing(tmp_path, kind, key, load):
    path = popen_saved_file(tmp_path, kind, key)
    with pytest.raises(UnsafeFileError, match=rf"{kind} file \S*{path.name} asks to build 'subprocess.Popen', which is "
                       r"not a registered omniseq backbone"):
        load(path)
    assert not (tmp_path / "SENTINEL").exists()


# -- missing, empty, truncated -----------------------------------------------------------------


def real_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"w": torch.randn(256, 256)}, "pytorch-lightning_version": "2.6.6"}, path)
    return path


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize(("damage", "error", "match"), [
    pytest.param(lambda p: p.unlink(), FileNotFoundError, r"no such (checkpoint )?file", id="missing"),
    pytest.param(lambda p: p.write_bytes(b""), UnreadableFileError, r"is empty \(0 bytes\): its write was cut off",
                 id="empty"),
    pytest.param(lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), UnreadableFileError,
                 r"is truncated or damaged \(\d+ bytes, no zip directory at its end\)", id="truncated"),
])
def test_a_missing_empty_or_truncated_file_is_named(tmp_path, loader, damage, error, match):
    path = real_checkpoint(tmp_path)
    damage(path)
    with pytest.raises(error, match=rf"{path.name}.*{match}"):
        LOADERS[loader](path)


def test_safetensors_weights_load_as_pretrained(tmp_path):
    from safetensors.torch import save_file

    source = tiny_dna()
    save_file({f"backbone.{k}": v.clone().contiguous() for k, v in source.state_dict().items()}, tmp_path / "w.safetensors")
    target = tiny_dna()
    load_backbone_weights(target, tmp_path / "w.safetensors")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_plain_data_round_trip_keeps_arrays_dates_and_steps():
    dates = pd.date_range("2021-03-28", periods=5, freq="h", tz="Europe/Paris", unit="s")
    value = {"a": np.arange(6.0).reshape(2, 3), "d": dates, "step": dates.freq, "gap": pd.Timedelta("90min"),
             "when": pd.Timestamp("2020-01-01 12:00"), "t": (1, np.float32(2.5)), "s": np.array(["x", "y"]),
             "m": dates.to_numpy()}
    back = from_data(to_data(value))
    np.testing.assert_array_equal(back["a"], value["a"])
    pd.testing.assert_index_equal(back["d"], dates)
    assert back["d"].freq == dates.freq and back["step"] == dates.freq and back["gap"] == value["gap"]
    assert back["when"] == value["when"] and back["t"] == (1, 2.5) and list(back["s"]) == ["x", "y"]
    np.testing.assert_array_equal(back["m"], value["m"])


# -- files of earlier versions: refused with the command, which converts them ------------------


def old_separator_file(tmp_path: Path, record_settings: bool) -> tuple[Path, MaskSeparator]:
    """A Separator file as earlier versions wrote it: the whole module pickled."""
    model = MaskSeparator(channels=8, masker_options={"dim": 8, "chunk_size": 10, "depth": 1, "num_repeats": 1})
    if not record_settings:
        del model.config  # earlier versions did not record them
    path = tmp_path / "old_separator.pt"
    torch.save({"model": model, "sample_rate": 8000, "chunk": 8000, "overlap": 800, KIND_KEY: "Separator"}, path)
    return path, model


@pytest.mark.parametrize("record_settings", [True, False])
def test_old_separator_file_is_refused_then_converted(tmp_path, record_settings):
    old, model = old_separator_file(tmp_path, record_settings)
    with pytest.raises(UnsafeFileError, match=rf"{old.name} holds Python objects such as "
                       r"omniseq\.backbones\.separators\.MaskSeparator.*`omniseq convert \S+old_separator\.pt"):
        Separator.load(old)
    new = tmp_path / "new.pt"
    main(["convert", str(old), str(new)])
    wav = torch.randn(1, 800)
    if record_settings:
        separator = Separator.load(new)
    else:
        with pytest.raises(ValueError, match=r"new\.pt holds the weights of a mask_separator but not the settings"):
            Separator.load(new)
        fresh = MaskSeparator(channels=8, masker_options={"dim": 8, "chunk_size": 10, "depth": 1, "num_repeats": 1})
        separator = Separator.load(new, model=fresh)
    assert (separator.chunk, separator.overlap) == (8000, 800)
    with torch.no_grad():
        assert torch.equal(separator.model.eval()(wav), model.eval()(wav))


def test_old_forecaster_file_with_numpy_and_pandas_converts(tmp_path):
    forecaster = Forecaster(seq_len=16, pred_len=8, max_epochs=1, model_options={"d_model": 8, "d_ff": 8, "depth": 1},
                            trainer_options={"limit_train_batches": 2, "limit_val_batches": 1, "logger": False,
                                             "enable_model_summary": False})
    frame = pd.DataFrame({"date": pd.date_range("2020", periods=120, freq="h"),
                          "a": np.sin(np.arange(120) / 5), "OT": np.cos(np.arange(120) / 7)})
    forecaster.fit(frame)
    old = tmp_path / "old_forecaster.pt"  # what earlier versions wrote: numpy and pandas objects pickled
    meta = forecaster._meta  # now tensors and strings; the old form held numpy arrays and pandas dates
    old_meta = {**meta, "history": meta["history"].numpy(), "mean": meta["mean"].numpy(), "std": meta["std"].numpy(),
                "dates": pd.DatetimeIndex(meta["dates"]), "step": pd.tseries.frequencies.to_offset(meta["step"])}
    torch.save({"config": forecaster.config, "meta": old_meta,
                "state_dict": forecaster.task.backbone.state_dict(), KIND_KEY: "Forecaster"}, old)
    with pytest.raises(UnsafeFileError, match=r"old_forecaster\.pt holds Python objects.*omniseq convert"):
        Forecaster.load(old)
    new = convert_file(old, tmp_path / "new.pt")
    pd.testing.assert_frame_equal(Forecaster.load(new).predict(8), forecaster.predict(8))


def test_old_dna_encoder_file_with_a_class_path_still_loads(tmp_path):
    encoder = DNAEncoder(tiny_dna())
    old = tmp_path / "old_encoder.pt"
    torch.save({"backbone_class": "omniseq.backbones.dna.DNAModel", "backbone_config": encoder.backbone.config,
                "backbone_state": encoder.backbone.state_dict(), "tokenizer": encoder.tokenizer.config(),
                "head_state": None, "head_shape": None, KIND_KEY: "DNAEncoder"}, old)
    loaded = DNAEncoder.load(old)
    np.testing.assert_array_equal(loaded.embed(["ACGTAC"])["pooled"], encoder.embed(["ACGTAC"])["pooled"])


def test_convert_refuses_a_foreign_class_and_writes_nothing(tmp_path):
    old = tmp_path / "old.pt"
    torch.save({"model": torch.nn.Linear(2, 2), KIND_KEY: "Separator"}, old)
    with pytest.raises(SystemExit, match=r"omniseq convert: file\['model'\] holds a Linear, which is not a registered"):
        main(["convert", str(old), str(tmp_path / "new.pt")])
    assert not (tmp_path / "new.pt").exists()


def test_save_refuses_an_unregistered_module(tmp_path):
    with pytest.raises(ValueError, match=r"Separator\.save: Linear cannot be saved: a saved file rebuilds a registered"):
        Separator(torch.nn.Linear(2, 2)).save(tmp_path / "s.pt")
    assert list(tmp_path.iterdir()) == []


def test_convert_refuses_a_payload_that_would_run_code(tmp_path):
    sentinel, old = tmp_path / "SENTINEL", tmp_path / "old.pt"
    torch.save({"model": RunsCode(sentinel), KIND_KEY: "Separator"}, old)
    with pytest.raises(SystemExit, match=r"old\.pt: it references builtins\.eval, which an omniseq file never held"):
        main(["convert", str(old), str(tmp_path / "new.pt")])
    assert not sentinel.exists() and not (tmp_path / "new.pt").exists()


class CallsAModuleClass:
    """Pickles as a call of an allowed module class (its ``__init__`` would run), directly
    or through ``copyreg._reconstructor`` with that class as the base."""

    def __init__(self, through_reconstructor: bool) -> None:
        self.through_reconstructor = through_reconstructor

    def __reduce__(self):
        import copyreg

        if self.through_reconstructor:
            return copyreg._reconstructor, (torch.nn.Linear, torch.nn.Linear, 3)
        return torch.nn.Linear, (3, 3)


@pytest.mark.parametrize("through_reconstructor", [False, True])
def test_convert_refuses_a_call_of_an_allowed_module_class(tmp_path, through_reconstructor):
    old = tmp_path / "old.pt"
    torch.save({"model": CallsAModuleClass(through_reconstructor), KIND_KEY: "Separator"}, old)
    with pytest.raises(SystemExit, match=r"old\.pt: it calls torch\.nn\.modules\.linear\.Linear with arguments"):
        main(["convert", str(old), str(tmp_path / "new.pt")])
    assert not (tmp_path / "new.pt").exists()


class PassesAModule:
    """Pickles as a call of an allowed pandas rebuild function with a rebuilt module among its
    arguments: pandas would read the module (its methods, its state from the file) before
    the converted payload is ever checked."""

    def __reduce__(self):
        from pandas.core.indexes.base import _new_Index

        return _new_Index, (__import__("pandas").Index, {"data": torch.nn.Identity()})


def test_convert_refuses_a_call_that_receives_a_module(tmp_path):
    old = tmp_path / "old.pt"
    torch.save({"model": PassesAModule(), KIND_KEY: "Separator"}, old)
    with pytest.raises(SystemExit, match=r"old\.pt: it passes a module to pandas\.core\.indexes\.base\._new_Index"):
        main(["convert", str(old), str(tmp_path / "new.pt")])
    assert not (tmp_path / "new.pt").exists()


@pytest.mark.parametrize("plant", ["state_dict_hook", "method_in_instance_dict"])
def test_convert_runs_no_callable_the_file_put_into_a_module(tmp_path, plant):
    """An allowed class (here torch.nn.Identity) stored as a hook of a submodule, or in a module's
    instance dict under a method's name, would be called by state_dict(); it is refused first."""
    old, _ = old_separator_file(tmp_path, record_settings=True)
    payload = torch.load(old, weights_only=False)
    child_name, child = next(iter(payload["model"].named_children()))
    if plant == "state_dict_hook":
        child._state_dict_hooks[0] = torch.nn.Identity
        match = rf"file\['model'\]\.{child_name} holds _state_dict_hooks \(functions to call\)"
    else:
        payload["model"].__dict__["state_dict"] = torch.nn.Identity
        match = r"file\['model'\] replaces the method MaskSeparator\.state_dict with an object from the file"
    torch.save(payload, old)
    with pytest.raises(SystemExit, match=match):
        main(["convert", str(old), str(tmp_path / "new.pt")])
    assert not (tmp_path / "new.pt").exists()


def test_convert_reads_the_legacy_format_through_the_allow_list_too(tmp_path):
    """A file that is not a zip takes torch.load's legacy path, whose first record is
    unpickled with the pickle module's ``load``: that goes through the allow-list as well."""
    sentinel, old = tmp_path / "SENTINEL", tmp_path / "old.pt"
    old.write_bytes(pickle.dumps(RunsCode(sentinel)))
    with pytest.raises(SystemExit, match=r"old\.pt: it references builtins\.eval, which an omniseq file never held"):
        main(["convert", str(old), str(tmp_path / "new.pt")])
    assert not sentinel.exists() and not (tmp_path / "new.pt").exists()


def test_convert_help_says_to_trust_the_file(capsys):
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    assert "Only convert files you trust" in capsys.readouterr().out


def test_every_task_data_module_and_separator_model_is_registered():
    """A task or data module missing from the registries could not be resumed from its own checkpoint."""
    import importlib
    import pkgutil

    import omniseq.data
    import omniseq.recipes
    from omniseq.data.loaders import ResumableDataModuleMixin
    from omniseq.recipes.catalogue import registered_class, registered_classes
    from omniseq.recipes.checkpoints import CheckpointOrigin

    for package in (omniseq.recipes, omniseq.data):
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{module.name}")

    def subclasses(cls: type) -> set[type]:
        found = set(cls.__subclasses__())
        return found.union(*(subclasses(c) for c in found)) if found else found

    registered = set(registered_classes().values())
    for cls in subclasses(CheckpointOrigin) | subclasses(ResumableDataModuleMixin) | {MaskSeparator}:
        path = f"{cls.__module__}.{cls.__qualname__}"
        if cls.__module__.startswith("omniseq."):
            assert path in registered, f"{path} is not in omniseq.recipes.catalogue"
            assert registered_class(path) is cls
    assert registered_class("subprocess.Popen") is None and registered_class("os.system") is None


def test_load_from_checkpoint_with_your_own_backbone_is_allowed(tmp_path):
    from omniseq.backbones.itransformer import ITransformer

    class MyBackbone(ITransformer):
        """A user's own class, named in their checkpoint."""

    task = ForecastingTask(MyBackbone(16, 8, num_channels=2, d_model=8, d_ff=8, depth=1))
    checkpoint = {"state_dict": task.state_dict(), "pytorch-lightning_version": "2.6.6",
                  "hyper_parameters": {"backbone": {"class_path": "my_lab.models.MyBackbone", "init_args": {}}}}
    torch.save(checkpoint, tmp_path / "mine.ckpt")
    with pytest.raises(UnsafeFileError, match=r"mine\.ckpt asks to build 'my_lab\.models\.MyBackbone'"):
        ForecastingTask.load_from_checkpoint(tmp_path / "mine.ckpt")
    backbone = MyBackbone(16, 8, num_channels=2, d_model=8, d_ff=8, depth=1)
    loaded = ForecastingTask.load_from_checkpoint(tmp_path / "mine.ckpt", backbone=backbone)
    for key, value in task.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
