"""Checkpoints that say which model wrote them, and short errors when one does not fit.

Without this, loading a forecasting checkpoint into a segmentation recipe fails
with a 200-line list of missing and unexpected state-dict keys (or, under
``omniseq test --ckpt_path``, LightningCLI silently swaps the config's model for
the checkpoint's and the run dies on a ``KeyError`` deep in a step).
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CheckpointMismatchError",
    "CheckpointOrigin",
    "check_checkpoint_matches_config",
    "describe_checkpoint",
    "read_checkpoint",
    "short_name",
    "state_dict_mismatch",
]

TASK_KEY = "omniseq_task"
BACKBONE_KEY = "omniseq_backbone"


class CheckpointMismatchError(RuntimeError):
    """A checkpoint written by one model was loaded into another (RuntimeError, as torch's own)."""


def _qualified(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def short_name(class_path: str | None) -> str:
    """The class name of a dotted class path (``"?"`` when unknown)."""
    return class_path.rpartition(".")[2] if class_path else "?"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's top-level dict, memory-mapped (cheap even for large files); tensors only."""
    try:
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - every torch.load failure means "not a readable checkpoint"
        raise ValueError(f"{path}: not a readable PyTorch/Lightning checkpoint ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from err
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: not a Lightning checkpoint (holds a {type(checkpoint).__name__}, not a dict)")
    return checkpoint


def describe_checkpoint(checkpoint: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(task class path, backbone class path)`` of the model that wrote ``checkpoint``, when known.

    Read from the marker the omniseq tasks write, else from the ``_class_path`` that
    LightningCLI stores in the hyper-parameters.
    """
    hparams = checkpoint.get("hyper_parameters") or {}
    task = checkpoint.get(TASK_KEY) or hparams.get("_class_path")
    backbone = checkpoint.get(BACKBONE_KEY)
    if backbone is None and isinstance(hparams.get("backbone"), dict):
        backbone = hparams["backbone"].get("class_path")
    return task, backbone


class CheckpointOrigin:
    """Mixin for the omniseq tasks (put it before ``L.LightningModule`` in the bases).

    Saving writes the task and backbone class into the checkpoint; loading weights
    that do not fit raises :class:`CheckpointMismatchError` with a short summary
    naming both models instead of torch's full key listing.
    """

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[TASK_KEY] = _qualified(self)
        checkpoint[BACKBONE_KEY] = _qualified(self.backbone)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._checkpoint_origin = describe_checkpoint(checkpoint)  # Lightning calls this before load_state_dict

    def _describe(self) -> str:
        return f"{type(self).__name__} (backbone {type(self.backbone).__name__})"

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except RuntimeError:
            problem = state_dict_mismatch(self.state_dict(), state_dict)
            if problem is None:
                raise
            task, backbone = getattr(self, "_checkpoint_origin", (None, None))
            origin = f"{short_name(task)} (backbone {short_name(backbone)})" if task else "an unrecorded model"
            raise CheckpointMismatchError(
                f"checkpoint weights do not fit {self._describe()}: {problem}. The checkpoint was written by "
                f"{origin}; load it with the task and backbone settings it was trained with"
            ) from None

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        try:
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
        except CheckpointMismatchError:
            raise
        except (pickle.UnpicklingError, EOFError) as err:  # torch.load's way of saying "not a checkpoint"
            raise ValueError(f"{checkpoint_path}: not a readable PyTorch/Lightning checkpoint "
                             f"({type(err).__name__}: {err})") from err
        except (TypeError, ValueError, KeyError, RuntimeError) as err:
            # Only inspect the file once loading has failed: the usual path reads it once.
            task, backbone = _origin(checkpoint_path)
            if task is None or _is_subclass(task, cls):
                raise
            raise CheckpointMismatchError(
                f"{checkpoint_path} is a checkpoint of {short_name(task)} (backbone {short_name(backbone)}); "
                f"{cls.__name__}.load_from_checkpoint cannot load it. Use {short_name(task)}.load_from_checkpoint, "
                f"or the recipe that trained it"
            ) from err


def _resolve(class_path: str) -> type | None:
    module, _, name = class_path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None
    return found if isinstance(found, type) else None


def _is_subclass(class_path: str, cls: type | None) -> bool:
    found = _resolve(class_path)
    return found is not None and cls is not None and issubclass(found, cls)


def _origin(path: str | Path) -> tuple[str | None, str | None]:
    """``describe_checkpoint`` of a file, or ``(None, None)`` when it cannot be read that way."""
    try:
        return describe_checkpoint(read_checkpoint(path))
    except ValueError:
        return None, None


def state_dict_mismatch(own: dict[str, Any], given: dict[str, Any], show: int = 3) -> str | None:
    """A one-line summary of how ``given`` differs from ``own`` (None when the keys and shapes agree)."""
    missing = [k for k in own if k not in given]
    unexpected = [k for k in given if k not in own]
    shapes = [
        f"{k} {tuple(given[k].shape)} in the checkpoint vs {tuple(own[k].shape)} in the model"
        for k in own
        if k in given and hasattr(given[k], "shape") and tuple(given[k].shape) != tuple(own[k].shape)
    ]
    parts = [
        f"{len(items)} {label} (e.g. {', '.join(items[:show])})"
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
        if items
    ]
    return "; ".join(parts) if parts else None


def check_checkpoint_matches_config(config: Any) -> None:
    """Under ``omniseq fit|test|predict --ckpt_path``, refuse a checkpoint of another task class.

    LightningCLI replaces the config's model by the hyper-parameters stored in the
    checkpoint, so without this check a forecasting checkpoint given to a segmentation
    recipe runs a forecasting model on image batches.
    """
    subcommand = config.get("subcommand")
    if not subcommand:
        return
    section = config[subcommand]
    ckpt_path, model = section.get("ckpt_path"), section.get("model")
    if not ckpt_path or not Path(str(ckpt_path)).is_file() or model is None:
        return
    expected = model.get("class_path") if hasattr(model, "get") else None
    task, backbone = _origin(ckpt_path)
    if expected is None or task is None or task == expected or _is_subclass(task, _resolve(expected)):
        return
    raise CheckpointMismatchError(
        f"--ckpt_path {ckpt_path} is a checkpoint of {short_name(task)} (backbone {short_name(backbone)}), but the "
        f"config builds {short_name(expected)}; pass the recipe the checkpoint was trained with "
        f"(its config.yaml is saved in the run folder)"
    )

