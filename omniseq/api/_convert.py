"""``omniseq convert OLD NEW``: rewrite a file of an earlier omniseq version as data.

Earlier versions pickled Python objects into saved files (a ``Separator``'s whole
module, numpy arrays, pandas dates). This version reads files as data only, so such a
file is refused with a message naming this command. Converting unpickles the old file
through an allow-list: omniseq, timm.layers and torch.nn modules, tensors and storages,
numpy arrays and the pandas date types earlier versions saved. Any other global (a
function such as ``os.system``, a foreign class) stops the conversion before it is
called, a module class is only rebuilt from its saved state, never called, no call receives
a module as an argument, and a rebuilt module whose saved state holds hooks or replaces one
of its methods is refused before any of its methods runs. Even so,
unpickling is not as safe as reading data (the allowed rebuild functions of numpy,
pandas and torch take arguments from the file): convert only files you trust. The new file holds tensors, numbers and strings; modules become their
registered name, settings and weights.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import copyreg
import importlib
import pickle
import types
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from omniseq._files import atomic_save, load_file, to_data
from omniseq.recipes.catalogue import registered_classes, registered_name

__all__ = ["convert_file", "main"]

_PLAIN = (str, bytes, int, float, complex, bool, type(None), torch.Tensor, torch.dtype, torch.device, torch.Size)

# Globals (module, name) that pickles of earlier versions reference, besides registered
# omniseq classes, torch.nn modules, torch storages and torch._utils._rebuild_* functions.
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"),
    ("builtins", "complex"), ("builtins", "object"), ("copyreg", "_reconstructor"), ("_codecs", "encode"),
    ("torch", "Size"), ("torch", "device"), ("torch.nn.parameter", "Parameter"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("pandas.core.indexes.datetimes", "_new_DatetimeIndex"), ("pandas.core.indexes.datetimes", "DatetimeIndex"),
    ("pandas.core.indexes.base", "_new_Index"), ("pandas.core.arrays.datetimes", "DatetimeArray"),
    ("pandas._libs.tslibs.timestamps", "_unpickle_timestamp"), ("pandas._libs.tslibs.timestamps", "Timestamp"),
    ("pandas", "DatetimeIndex"), ("pandas", "Timestamp"), ("pandas", "Index"),
    ("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked"), ("pandas.core.arrays", "DatetimeArray"),
    ("pandas.arrays", "DatetimeArray"), ("pandas.core.arrays.datetimes", "DatetimeArray"),
}


def _allowed(module: str, name: str, value: Any) -> bool:
    if (module, name) in _ALLOWED_GLOBALS or isinstance(value, torch.dtype):
        return True
    if module.startswith("numpy.dtypes") and isinstance(value, type):
        return True
    if module.startswith("pandas._libs.tslibs.offsets") and isinstance(value, type):
        return True  # frequency offsets (Hour, Day, ...), plain value types
    if module == "torch._utils" and name.startswith("_rebuild_") and isinstance(value, types.FunctionType):
        return True
    if isinstance(value, type):
        if issubclass(value, torch.storage._StorageBase) or value is torch.storage.TypedStorage:
            return True
        # Modules only (their parts too, such as a separator's encoder); which ones may be
        # converted is decided afterwards by the registry (_as_data).
        return module.startswith(("torch.nn.", "omniseq.", "timm.layers.")) and issubclass(value, nn.Module)
    return False


def _refuse_module_call(func: Any) -> None:
    """Calling a module class runs its ``__init__`` with arguments from the file; a module an
    omniseq file held is rebuilt with ``__new__`` and its saved state, never by a call."""
    if isinstance(func, type) and issubclass(func, nn.Module):
        raise pickle.UnpicklingError(f"it calls {func.__module__}.{func.__qualname__} with arguments from the file, "
                                     "which an omniseq file never did; nothing was run")


def _holds_module(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is, or contains (in tuples, lists, dicts, sets), a module or module class."""
    if isinstance(value, nn.Module) or (isinstance(value, type) and issubclass(value, nn.Module)):
        return True
    if depth < 8 and isinstance(value, (tuple, list, set, frozenset)):
        return any(_holds_module(item, depth + 1) for item in value)
    if depth < 8 and isinstance(value, dict):
        return any(_holds_module(item, depth + 1) for pair in value.items() for item in pair)
    return False


def _refuse_module_argument(func: Any, args: Any) -> None:
    """A module rebuilt from the file has its state from the file; a call that receives one (a
    pandas or numpy rebuild function, say) could run its methods before ``_check_module`` looks at
    it. Earlier omniseq files pass modules to no call but ``copyreg._reconstructor``'s class."""
    if _holds_module(args):
        name = getattr(func, "__qualname__", type(func).__name__)
        raise pickle.UnpicklingError(f"it passes a module to {getattr(func, '__module__', '?')}.{name}, "
                                     "which an omniseq file never did; nothing was run")


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    """``copyreg._reconstructor``, which calls ``base.__init__``: refused for a module base."""
    _refuse_module_call(base)
    _refuse_module_argument(copyreg._reconstructor, (base, state))  # cls alone may be a module class
    return copyreg._reconstructor(cls, base, state)


class _AllowListUnpickler(pickle._Unpickler):
    """Resolves only the globals of ``_allowed``; anything else stops the load before it is
    called. The Python unpickler, because its opcodes can be checked: REDUCE, INST and OBJ
    (the ones that call what they loaded) may not call a module class."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names of protocol <= 2 pickles
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            value = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            value = None
        if not _allowed(module, name, value):
            raise pickle.UnpicklingError(f"it references {module}.{name}, which an omniseq file never held; "
                                         "nothing was run")
        return _reconstructor if value is copyreg._reconstructor else value

    def load_reduce(self) -> None:
        func, args = self.stack[-2], self.stack[-1]
        _refuse_module_call(func)
        if func is not _reconstructor:  # (which checks its own arguments)
            _refuse_module_argument(func, args)
        pickle._Unpickler.load_reduce(self)

    dispatch[pickle.REDUCE[0]] = load_reduce

    def _instantiate(self, klass: Any, args: tuple) -> None:
        _refuse_module_call(klass)
        _refuse_module_argument(klass, args)
        pickle._Unpickler._instantiate(self, klass, args)


def _allow_list_load(file: Any, **kwargs: Any) -> Any:
    return _AllowListUnpickler(file, **kwargs).load()


# torch.load's pickle_module: Unpickler for zip files, load for the legacy format's records.
_allow_list_pickle = types.SimpleNamespace(Unpickler=_AllowListUnpickler, load=_allow_list_load,
                                           __name__="omniseq_allow_list")


def convert_file(old: str | Path, new: str | Path) -> Path:
    """Read ``old`` through the allow-list unpickler, write its data to ``new``; return ``new``."""
    old, new = Path(old), Path(new)
    if not old.is_file():
        raise FileNotFoundError(f"{old}: no such file")
    if new.exists() and new.resolve() == old.resolve():
        raise ValueError(f"give the converted file another name than {old}: the old one is kept until you check it")
    # The one place omniseq unpickles, and only through the allow-list.
    try:
        payload = torch.load(str(old), map_location="cpu", weights_only=False, pickle_module=_allow_list_pickle)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{old}: {err}") from None
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


def _check_module(module: nn.Module, where: str) -> None:
    """An unpickled module's instance dict comes from the file, so before any of its methods
    runs (``state_dict`` below): it may not shadow a method of its class, and it may hold no
    hooks, whose callables ``state_dict`` and friends would call. Submodules too."""
    state, cls = vars(module), type(module)
    for key, value in state.items():
        if callable(getattr(cls, key, None)):
            raise ValueError(f"{where} replaces the method {cls.__name__}.{key} with an object from the file, "
                             "which an omniseq file never did; nothing was run")
        if "hook" in key and isinstance(value, dict) and value:
            raise ValueError(f"{where} holds {key} (functions to call), which an omniseq file never did; "
                             "nothing was run")
    for name, child in state.get("_modules", {}).items():
        if isinstance(child, nn.Module):
            _check_module(child, f"{where}.{name}")


def _as_data(value: Any, where: str) -> Any:
    """``value`` with modules as specs and dict subclasses as dicts; anything else that is not data is an error."""
    if isinstance(value, nn.Module):
        _check_module(value, where)
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
        epilog="Only convert files you trust: reading the old file unpickles it (through an allow-list of "
               "the types earlier versions saved).")
    parser.add_argument("old", help="file written by an earlier omniseq version")
    parser.add_argument("new", help="where to write the converted file")
    args = parser.parse_args(argv)
    try:
        new = convert_file(args.old, args.new)
    except (OSError, ValueError) as err:
        raise SystemExit(f"omniseq convert: {err}") from None
    print(f"omniseq convert: wrote {new}; it reads as data (load it with the usual .load)")
