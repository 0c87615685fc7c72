"""Files as data: atomic, fsynced writes, and ONE loading function for every model file.

- :func:`atomic_path` — an output file is either complete or absent, never half-written:
  it is written beside its target, fsynced, then ``os.replace``\\ d onto it.
- :func:`load_file` — every model file, checkpoint and ``pretrained=`` weight file the
  library reads goes through it: ``torch.load(weights_only=True)`` or safetensors,
  nothing else. A raw pickle is refused before a byte of it is unpickled, because
  unpickling is what runs code (https://docs.python.org/3/library/pickle.html).
- :func:`to_data` / :func:`from_data` — numpy arrays and pandas dates as plain tensors
  and strings, so a saved file needs no Python objects.

Used by every layer, so it imports nothing from omniseq.
"""

from __future__ import annotations

import os
import re
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "UnreadableFileError",
    "UnsafeFileError",
    "atomic_path",
    "atomic_save",
    "convert_hint",
    "from_data",
    "fsync_path",
    "load_file",
    "to_data",
]

ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = b"\x80"  # the PROTO opcode that starts every pickle of protocol 2 and later
SAFETENSORS_SUFFIX = ".safetensors"


class UnreadableFileError(ValueError):
    """A model file or checkpoint that is empty, cut short, or not a model file at all."""


class UnsafeFileError(UnreadableFileError):
    """A file that holds Python objects (code) where omniseq reads data only."""


def convert_hint(path: str | os.PathLike) -> str:
    """The one-off conversion command for a file of an earlier omniseq version."""
    path = Path(path)
    new = path.with_name(f"{path.stem}.converted{path.suffix or '.pt'}")
    return (f"if you trust this file and it was written by an earlier omniseq version, convert it once with "
            f"`omniseq convert {path} {new}` (that command runs the code in the file; never use it on a file "
            f"from someone you do not trust)")


# -- writing ----------------------------------------------------------------------------


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file (or a directory entry) to disk; directories cannot be opened on Windows."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (IsADirectoryError, PermissionError):
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds.

    The temporary file is in the same directory (so the move is a rename, never a copy
    across filesystems) and is fsynced before the rename, and the directory after it:
    a crash at any moment leaves the old file or the new one, never a truncated one.
    The temporary name keeps ``path``'s suffix, so writers that pick the format from
    the name (soundfile, PIL, matplotlib, pandas) behave as they would on ``path``.
    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name the writer creates itself (not mkstemp's 0600 file), so the output
    # gets the usual permissions of the user's umask.
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.partial{path.suffix}")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)  # atomic on POSIX and Windows within one directory
        fsync_path(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)``, all or nothing (see :func:`atomic_path`)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


# -- reading ----------------------------------------------------------------------------


def load_file(path: str | os.PathLike, what: str = "model file", mmap: bool = False) -> Any:
    """Read a model file or checkpoint as data; every error names ``path`` and says why.

    ``.safetensors`` files are read with safetensors; anything else must be a zip-format
    ``torch.save`` file (what torch has written since 1.6) and is read with
    ``torch.load(weights_only=True, map_location="cpu")``. Raises FileNotFoundError for a
    missing file, :class:`UnreadableFileError` for an empty, truncated or foreign one and
    :class:`UnsafeFileError` for one that holds Python objects.
    """
    import torch

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path}: no such file")
    if path.is_dir():
        raise UnreadableFileError(f"{what} {path} is a directory, not a file")
    size = path.stat().st_size
    if size == 0:
        raise UnreadableFileError(
            f"{what} {path} is empty (0 bytes): its write was cut off (a crash or a full disk); "
            "use an earlier checkpoint or save it again")
    if path.suffix == SAFETENSORS_SUFFIX:
        return _load_safetensors(path, what)
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:1] == PICKLE_PROTO:
        raise UnsafeFileError(
            f"{what} {path} is a raw pickle (or a legacy non-zip torch.save file), which can run code when it "
            f"is read, so omniseq does not open it; {convert_hint(path)}")
    if head != ZIP_MAGIC:
        raise UnreadableFileError(
            f"{what} {path} is not a model file: it starts with {head!r}, not as a zip-format torch.save file "
            f"or a {SAFETENSORS_SUFFIX} file does")
    if not zipfile.is_zipfile(path):
        raise UnreadableFileError(
            f"{what} {path} is truncated or damaged ({size} bytes, no zip directory at its end): its write "
            "was cut off; use an earlier checkpoint or save it again")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - torch.load has no single error type for "not data"
        raise _load_error(path, what, err) from err


def _load_safetensors(path: Path, what: str) -> dict[str, Any]:
    from safetensors.torch import load_file as load_safetensors

    try:
        return load_safetensors(str(path), device="cpu")
    except Exception as err:  # noqa: BLE001 - safetensors raises its own SafetensorError
        raise UnreadableFileError(f"{what} {path}: not a readable safetensors file ({err})") from err


def _load_error(path: Path, what: str, err: Exception) -> UnreadableFileError:
    """One line on why the weights-only load refused the file (torch's own runs to a page)."""
    text = str(err)
    unsupported = re.search(r"GLOBAL ([\w.]+)", text)
    if "Weights only load failed" in text or unsupported:
        name = f" such as {unsupported.group(1)}" if unsupported else ""
        return UnsafeFileError(
            f"{what} {path} holds Python objects{name}, not only tensors and plain values; omniseq reads files "
            f"as data only, so it does not run them; {convert_hint(path)}")
    first = text.strip().splitlines()[0] if text.strip() else ""
    return UnreadableFileError(f"{what} {path}: not a readable torch file ({type(err).__name__}: {first})")


# -- plain data -------------------------------------------------------------------------

TYPE_KEY = "__omniseq_type__"


def to_data(obj: Any) -> Any:
    """``obj`` with numpy arrays/scalars and pandas dates turned into tensors, numbers and
    strings that a weights-only load accepts (undone by :func:`from_data`)."""
    import numpy as np
    import torch

    if isinstance(obj, dict):
        return {key: to_data(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_data(value) for value in obj)
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "biufc":
            return {TYPE_KEY: "ndarray", "data": torch.from_numpy(np.ascontiguousarray(obj))}
        if obj.dtype.kind in "mM":  # datetime64 / timedelta64, in their own unit
            return {TYPE_KEY: "datetime64", "dtype": obj.dtype.str, "data": torch.from_numpy(obj.view(np.int64).copy())}
        return {TYPE_KEY: "ndarray_list", "data": to_data(obj.tolist())}
    if isinstance(obj, np.generic):
        return obj.item()
    return _pandas_to_data(obj)


def _pandas_to_data(obj: Any) -> Any:
    import sys

    pd = sys.modules.get("pandas")  # pandas objects only exist if pandas was imported
    if pd is None:
        return obj
    import torch

    if isinstance(obj, pd.DatetimeIndex):
        return {TYPE_KEY: "DatetimeIndex", "data": torch.as_tensor(obj.asi8.copy()), "tz": str(obj.tz or ""),
                "unit": getattr(obj, "unit", "ns"), "freq": obj.freqstr,
                "name": obj.name if isinstance(obj.name, (str, type(None))) else str(obj.name)}
    if isinstance(obj, pd.Timestamp):
        return {TYPE_KEY: "Timestamp", "value": obj.isoformat()}
    if isinstance(obj, pd.Timedelta):
        return {TYPE_KEY: "Timedelta", "value": int(obj.value)}
    if isinstance(obj, pd.DateOffset):
        return {TYPE_KEY: "DateOffset", "value": obj.freqstr}
    return obj


def from_data(obj: Any) -> Any:
    """The inverse of :func:`to_data`."""
    if isinstance(obj, list):
        return [from_data(value) for value in obj]
    if isinstance(obj, tuple):
        return tuple(from_data(value) for value in obj)
    if not isinstance(obj, dict):
        return obj
    kind = obj.get(TYPE_KEY)
    if kind is None:
        return {key: from_data(value) for key, value in obj.items()}
    import numpy as np

    if kind == "ndarray":
        return obj["data"].numpy().copy()
    if kind == "datetime64":
        return obj["data"].numpy().view(obj["dtype"]).copy()
    if kind == "ndarray_list":
        return np.array(from_data(obj["data"]))
    import pandas as pd

    if kind == "DatetimeIndex":
        index = pd.DatetimeIndex(obj["data"].numpy().view(f"datetime64[{obj['unit']}]"), name=obj["name"])
        index = index.tz_localize("UTC").tz_convert(obj["tz"]) if obj["tz"] else index
        return pd.DatetimeIndex(index, freq=obj["freq"]) if obj["freq"] else index
    if kind == "Timestamp":
        return pd.Timestamp(obj["value"])
    if kind == "Timedelta":
        return pd.Timedelta(obj["value"], unit="ns")
    if kind == "DateOffset":
        return pd.tseries.frequencies.to_offset(obj["value"])
    raise UnreadableFileError(f"unknown stored value type {kind!r}")
