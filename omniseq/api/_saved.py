"""The files behind ``save``/``load`` of the notebook objects: written atomically, and read
back with an error that says what the file is when it is not what ``load`` expects."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from omniseq._files import atomic_path
from omniseq.recipes.checkpoints import describe_checkpoint, short_name

__all__ = ["load_payload", "save_payload"]

KIND_KEY = "omniseq_saved_by"


def save_payload(payload: dict[str, Any], path: str | Path, kind: str) -> Path:
    """``torch.save`` of ``payload`` tagged with ``kind`` (``"Forecaster"``, ...); all or nothing."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            torch.save({**payload, KIND_KEY: kind}, tmp)
    except (pickle.PicklingError, TypeError, AttributeError) as err:
        raise ValueError(
            f"{kind}.save: {path} was not written: the settings hold an object that cannot be saved "
            f"({type(err).__name__}: {err}); keep options such as trainer_options to plain values"
        ) from err
    return path


def load_payload(path: str | Path, kind: str, required: tuple[str, ...], weights_only: bool,
                 has_from_checkpoint: bool = False) -> dict[str, Any]:
    """Read a file written by ``<kind>.save``; ValueError naming what it is otherwise.

    ``has_from_checkpoint``: ``<kind>.from_checkpoint`` exists, so the error for a Lightning
    training checkpoint points there.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected one written by {kind}.save)")
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=weights_only)
    except Exception as err:  # noqa: BLE001 - torch.load has no single error type for "not this kind of file"
        raise ValueError(f"{path}: not a file written by {kind}.save ({_load_failure(err)})") from err
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
        raise ValueError(
            f"{path}: not a file written by {kind}.save (missing {missing}; it holds keys {sorted(payload)[:8]})"
        )
    return payload


def _load_failure(err: Exception) -> str:
    """One line on why torch.load refused the file (its own messages run to a page)."""
    text = str(err)
    unsupported = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if unsupported:
        return f"it holds Python objects such as {unsupported.group(1)}, which a weights-only load refuses"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(err).__name__}: {first}"
