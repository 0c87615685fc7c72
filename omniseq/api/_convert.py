"""``omniseq convert OLD NEW``: rewrite a file of an earlier omniseq version as data.

Earlier versions pickled Python objects into saved files (a ``Separator``'s whole
module, numpy arrays, pandas dates). This version reads files as data only, so such a
file is refused with a message naming this command. Converting UNPICKLES the old file,
which runs whatever code it holds: run it only on files you trust. The new file holds
tensors, numbers and strings; modules become their registered name, settings and weights.
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from omniseq._files import atomic_save, load_file, to_data
from omniseq.recipes.catalogue import registered_classes, registered_name

__all__ = ["convert_file", "main"]

_PLAIN = (str, bytes, int, float, complex, bool, type(None), torch.Tensor, torch.dtype, torch.device, torch.Size)


def convert_file(old: str | Path, new: str | Path) -> Path:
    """Read ``old`` trusting it (full unpickling), write its data to ``new``; return ``new``."""
    old, new = Path(old), Path(new)
    if not old.is_file():
        raise FileNotFoundError(f"{old}: no such file")
    if new.exists() and new.resolve() == old.resolve():
        raise ValueError(f"give the converted file another name than {old}: the old one is kept until you check it")
    # The one place omniseq unpickles: the user vouches for this file by running the command.
    payload = torch.load(str(old), map_location="cpu", weights_only=False)
    converted = to_data(_as_data(payload, "file"))
    if isinstance(converted, dict) and isinstance(converted.get("backbone_class"), str):
        converted["backbone"] = _registered_path_name(converted.pop("backbone_class"))  # DNAEncoder files
    atomic_save(converted, new)
    load_file(new, what="converted file")  # proves the new file reads as data
    return new


def _registered_path_name(class_path: str) -> str:
    names = {path: name for name, path in registered_classes().items()}
    if class_path not in names:
        raise ValueError(f"the file names class {class_path!r}, which is not a registered omniseq backbone")
    return names[class_path]


def _as_data(value: Any, where: str) -> Any:
    """``value`` with modules as specs and dict subclasses as dicts; anything else that is not data is an error."""
    if isinstance(value, nn.Module):
        name = registered_name(type(value))
        if name is None:
            raise ValueError(f"{where} holds a {type(value).__name__}, which is not a registered omniseq backbone")
        config = getattr(value, "config", None)
        return {"name": name, "config": config if isinstance(config, dict) else None, "state_dict": value.state_dict()}
    if isinstance(value, OrderedDict):
        return OrderedDict((k, _as_data(v, f"{where}[{k!r}]")) for k, v in value.items())
    if isinstance(value, dict):
        return {k: _as_data(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_as_data(v, f"{where}[{i}]") for i, v in enumerate(value))
    data = to_data(value)
    if data is value and not isinstance(value, _PLAIN):
        raise ValueError(f"{where} holds a {type(value).__name__}, which has no data form; it cannot be converted")
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="omniseq convert", description=__doc__.split("\n\n")[1],
        epilog="Only convert files you trust: reading the old file runs the code it holds.")
    parser.add_argument("old", help="file written by an earlier omniseq version")
    parser.add_argument("new", help="where to write the converted file")
    args = parser.parse_args(argv)
    try:
        new = convert_file(args.old, args.new)
    except (OSError, ValueError) as err:
        raise SystemExit(f"omniseq convert: {err}") from None
    print(f"omniseq convert: wrote {new}; it reads as data (load it with the usual .load)")
