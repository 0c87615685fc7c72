"""The files behind ``save``/``load`` of the notebook objects: written atomically as plain
data (tensors, numbers, strings; numpy and pandas values through ``omniseq._files.to_data``),
and read back as data with an error that says what the file is when it is not what ``load``
expects."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from omniseq._files import (
    UnreadableFileError,
    UnsafeFileError,
    atomic_path,
    from_data,
    load_file,
    to_data,
)
from omniseq.recipes.checkpoints import describe_checkpoint, short_name

__all__ = ["load_module", "load_payload", "module_spec", "save_payload"]

KIND_KEY = "omniseq_saved_by"


def save_payload(payload: dict[str, Any], path: str | Path, kind: str) -> Path:
    """``torch.save`` of ``payload`` tagged with ``kind`` (``"Forecaster"``, ...); all or nothing."""
    path = Path(path)
    data = to_data({**payload, KIND_KEY: kind})
    _check_plain(data, f"{kind}.save: {path} was not written")
    try:
        with atomic_path(path) as tmp:
            torch.save(data, tmp)
    except (pickle.PicklingError, TypeError, AttributeError) as err:
        raise ValueError(
            f"{kind}.save: {path} was not written: the settings hold an object that cannot be saved "
            f"({type(err).__name__}: {err}); keep options such as trainer_options to plain values"
        ) from err
    return path


def load_payload(path: str | Path, kind: str, required: tuple[str, ...],
                 has_from_checkpoint: bool = False) -> dict[str, Any]:
    """Read a file written by ``<kind>.save`` as data; ValueError naming what it is otherwise.

    ``has_from_checkpoint``: ``<kind>.from_checkpoint`` exists, so the error for a Lightning
    training checkpoint points there. Files are read as data only (:func:`omniseq._files.load_file`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected one written by {kind}.save)")
    payload = load_file(path, what=f"{kind} file")
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: not a file written by {kind}.save (it holds a {type(payload).__name__})")
    saved_by = payload.get(KIND_KEY)
    if saved_by is not None and saved_by != kind:
        raise ValueError(f"{path} was written by {saved_by}.save, not {kind}.save; read it with {saved_by}.load")
    if "state_dict" in payload and "pytorch-lightning_version" in payload:
        task, backbone = describe_checkpoint(payload)
        task_name = short_name(task) if task else "the task that wrote it"
        written = f" of {task_name} (backbone {short_name(backbone)})" if task else ""
        alternative = f" or {kind}.from_checkpoint" if has_from_checkpoint else ""
        raise ValueError(
            f"{path} is a Lightning training checkpoint{written}, not a file written by {kind}.save; "
            f"read it with {task_name}.load_from_checkpoint{alternative}"
        )
    missing = [key for key in required if key not in payload]
    if missing:
        raise UnreadableFileError(
            f"{path}: not a file written by {kind}.save (missing {missing}; it holds keys {sorted(payload)[:8]})"
        )
    return from_data(payload)


def _check_plain(tree: Any, context: str, where: str = "") -> None:
    """Refuse to write anything a weights-only load would refuse to read back."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            _check_plain(value, context, f"{where}[{key!r}]")
    elif isinstance(tree, (list, tuple, set)):
        for i, value in enumerate(tree):
            _check_plain(value, context, f"{where}[{i}]")
    elif not isinstance(tree, (str, bytes, int, float, complex, bool, type(None), torch.Tensor, torch.dtype,
                               torch.device, torch.Size)):
        raise ValueError(
            f"{context}: the settings hold an object that cannot be saved (a {type(tree).__name__} at "
            f"{where or 'top level'}; files are data, not Python objects); keep options such as trainer_options "
            "to plain values"
        )


def module_spec(module: torch.nn.Module, kind: str) -> dict[str, Any]:
    """A registered module as data: its registered name, the arguments it was built with, its weights."""
    from omniseq.recipes.catalogue import registered_name

    name = registered_name(type(module))
    config = getattr(module, "config", None)
    if name is None or not isinstance(config, dict):
        raise ValueError(
            f"{kind}.save: {type(module).__name__} cannot be saved: a saved file rebuilds a registered omniseq "
            "backbone (`omniseq list`) from the settings it recorded when built; save its state_dict() yourself"
        )
    return {"name": name, "config": config, "state_dict": module.state_dict()}


def load_module(spec: dict[str, Any], path: str | Path, kind: str,
                module: torch.nn.Module | None = None) -> torch.nn.Module:
    """The module a :func:`module_spec` describes, built from omniseq's registry by name; or
    ``module`` with the file's weights loaded (needed when the file recorded no settings)."""
    from omniseq.recipes.catalogue import registered_class

    if module is not None:
        module.load_state_dict(spec["state_dict"])
        return module
    if spec.get("config") is None:
        raise ValueError(
            f"{kind} file {path} holds the weights of a {spec.get('name')} but not the settings it was built with "
            f"(converted from an earlier version); build that model yourself and pass it: "
            f"{kind}.load({str(path)!r}, model=...)"
        )
    cls = registered_class(spec.get("name"))
    if cls is None:
        raise UnsafeFileError(
            f"{kind} file {path} asks to build {spec.get('name')!r}, which is not a registered omniseq backbone "
            "(`omniseq list`); omniseq builds only its own classes from a file"
        )
    module = cls(**spec["config"])
    module.load_state_dict(spec["state_dict"])
    return module
