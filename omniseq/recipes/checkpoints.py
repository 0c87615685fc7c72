"""Checkpoints that say which model wrote them, and short errors when one does not fit.

Without this, loading a forecasting checkpoint into a segmentation recipe fails
with a 200-line list of missing and unexpected state-dict keys (or, under
``omniseq test --ckpt_path``, LightningCLI silently swaps the config's model for
the checkpoint's and the run dies on a ``KeyError`` deep in a step).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn

from omniseq._files import UnreadableFileError, UnsafeFileError, atomic_path, load_file
from omniseq.recipes.catalogue import registered_class

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointMismatchError",
    "CheckpointOrigin",
    "check_checkpoint_classes",
    "check_checkpoint_matches_config",
    "checked_ckpt_path",
    "describe_checkpoint",
    "readable_checkpoint",
    "resolve_last_checkpoint",
    "read_checkpoint",
    "use_atomic_checkpoints",
    "short_name",
    "state_dict_mismatch",
]

TASK_KEY = "omniseq_task"
BACKBONE_KEY = "omniseq_backbone"


class CheckpointMismatchError(RuntimeError):
    """A checkpoint written by one model was loaded into another (RuntimeError, as torch's own)."""


def _qualified(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _qualified_class(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def short_name(class_path: str | None) -> str:
    """The class name of a dotted class path (``"?"`` when unknown)."""
    return class_path.rpartition(".")[2] if class_path else "?"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's top-level dict, memory-mapped (cheap even for large files); data only.

    Read by :func:`omniseq._files.load_file`: a missing, empty, truncated or unsafe file
    raises an error naming it.
    """
    checkpoint = load_file(path, what="checkpoint", mmap=True)
    if not isinstance(checkpoint, dict):
        raise UnreadableFileError(
            f"checkpoint {path}: not a Lightning checkpoint (holds a {type(checkpoint).__name__}, not a dict)")
    return checkpoint


def _class_paths(tree: Any) -> Iterator[str]:
    """Every ``class_path`` / ``_class_path`` value in a nested hyper-parameter tree."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key in ("class_path", "_class_path"):
                yield value
            else:
                yield from _class_paths(value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from _class_paths(value)


def check_checkpoint_classes(checkpoint: dict[str, Any], path: str | Path, trusted: Iterable[str] = (),
                             given: Iterable[str] = ()) -> None:
    """Refuse a checkpoint whose hyper-parameters name a class omniseq does not register.

    Lightning and LightningCLI rebuild the model and data module from the class paths
    stored in a checkpoint, which imports and calls them. Only omniseq's registered
    classes (:mod:`omniseq.recipes.catalogue`) and the ``trusted`` class paths (those of
    the user's own config) may be rebuilt; hyper-parameters in ``given`` are replaced by
    the caller's own values (``load_from_checkpoint(path, backbone=...)``) and not built.
    """
    trusted, given = set(trusted), set(given)
    hparams = {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if k not in given}
    sections = [hparams, checkpoint.get("datamodule_hyper_parameters")]
    for class_path in _class_paths(sections):
        if class_path in trusted or registered_class(class_path) is not None:
            continue
        raise UnsafeFileError(
            f"checkpoint {path} asks to build {class_path!r}, which is not an omniseq class; omniseq rebuilds "
            "only its registered backbones, tasks and data modules from a file (`omniseq list`). If this is your "
            "own class, name it in your config (configs are code you trust)")


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

    Saving writes the task and backbone class into the checkpoint, and writes the file
    atomically (:class:`AtomicCheckpointIO`) whichever Trainer runs the task; loading weights
    that do not fit raises :class:`CheckpointMismatchError` with a short summary
    naming both models instead of torch's full key listing.
    """

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[TASK_KEY] = _qualified(self)
        checkpoint[BACKBONE_KEY] = _qualified(self.backbone)
        if self._trainer is not None:  # Lightning writes the file right after this hook: make it atomic
            use_atomic_checkpoints(self._trainer)

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
        if isinstance(checkpoint_path, (str, os.PathLike)):
            # Read as data and check the classes it names before Lightning rebuilds them.
            # The class this is called on is the caller's choice (code), so it is trusted too.
            check_checkpoint_classes(read_checkpoint(checkpoint_path), checkpoint_path,
                                     trusted=[_qualified_class(cls)], given=kwargs)
        kwargs["weights_only"] = True
        try:
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
        except (CheckpointMismatchError, UnreadableFileError):
            raise
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
    """The registered omniseq class of a class path read from a file (never an import of it)."""
    return registered_class(class_path)


def _is_subclass(class_path: str, cls: type | None) -> bool:
    found = _resolve(class_path)
    return found is not None and cls is not None and issubclass(found, cls)


def _origin(path: str | Path) -> tuple[str | None, str | None]:
    """``describe_checkpoint`` of a file, or ``(None, None)`` when it cannot be read that way."""
    try:
        return describe_checkpoint(read_checkpoint(path))
    except (ValueError, OSError):
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



# -- writing and choosing checkpoints -------------------------------------------------------

PREVIOUS_SUFFIX = ".previous"


def _is_last(path: Path) -> bool:
    return path.suffix == ".ckpt" and path.stem.startswith("last")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO whose files are complete or absent, and read as data.

    A checkpoint is written to a temporary file in its own directory, fsynced and
    renamed onto its name (Lightning's own writer stages it under ``$TMPDIR`` and copies
    it over the old file in place, which a kill turns into a 0-byte ``last.ckpt``).
    The ``last*.ckpt`` being replaced is kept as ``last.ckpt.previous`` (a hard link,
    no copy), the fallback of :func:`readable_checkpoint`. Loading goes through
    :func:`omniseq._files.load_file` and refuses classes omniseq does not register.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)  # remote storage: Lightning's own
            return
        import torch

        path = Path(path)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
            if _is_last(path) and path.is_file() and not path.is_symlink():
                _keep_previous(path)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        return read_checkpoint(path)  # restoring rebuilds no class: the model exists already


def _keep_previous(path: Path) -> None:
    """Hard-link ``path`` as ``path.previous`` (replacing an older one atomically)."""
    previous = path.with_name(path.name + PREVIOUS_SUFFIX)
    staged = path.with_name(f".{path.name}{PREVIOUS_SUFFIX}.partial")
    staged.unlink(missing_ok=True)
    try:
        os.link(path, staged)
    except OSError:  # no hard links here (some network filesystems): keep no backup
        return
    os.replace(staged, previous)


def use_atomic_checkpoints(trainer: Any) -> None:
    """Give ``trainer`` an :class:`AtomicCheckpointIO` unless it was given a checkpoint IO of its own."""
    strategy = trainer.strategy
    if type(getattr(strategy, "checkpoint_io", None)) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()


def readable_checkpoint(path: str | Path) -> Path:
    """``path`` if it reads as a checkpoint, else (for a ``last*.ckpt``) the previous good one, with a warning.

    The fallback is ``last.ckpt.previous`` (the ``last`` replaced by the latest save), then
    the newest other readable ``*.ckpt`` in the same folder. Any other unreadable file
    raises the error of :func:`read_checkpoint`, which names it and says why.
    """
    path = Path(path)
    try:
        read_checkpoint(path)
        return path
    except (UnreadableFileError, FileNotFoundError) as err:
        if isinstance(err, UnsafeFileError) or not _is_last(path):
            raise
        problem = err
    previous = path.with_name(path.name + PREVIOUS_SUFFIX)
    others = sorted((p for p in path.parent.glob("*.ckpt") if p != path), key=lambda p: p.stat().st_mtime, reverse=True)
    for candidate in ([previous] if previous.is_file() else []) + others:
        try:
            read_checkpoint(candidate)
        except (UnreadableFileError, OSError):
            continue
        rank_zero_warn(f"omniseq: {problem}. Resuming from the previous good checkpoint {candidate} instead.")
        return candidate
    raise problem


def checked_ckpt_path(ckpt_path: str | Path, config: dict[str, Any]) -> str:
    """``--ckpt_path``, checked before LightningCLI reads it: readable (else the previous good
    ``last``), and naming only registered classes or the classes of the user's ``config``."""
    path = readable_checkpoint(ckpt_path)
    trusted = set(_class_paths({key: config.get(key) for key in ("model", "data")}))
    check_checkpoint_classes(read_checkpoint(path), path, trusted=trusted)
    return str(path)


def resolve_last_checkpoint(trainer: Any) -> str | None:
    """What ``ckpt_path="last"`` means for ``trainer`` (Lightning's rule: the newest
    ``last*.ckpt`` of its ``ModelCheckpoint`` callbacks), falling back from an unreadable
    one to the previous good checkpoint with a warning. ``"last"`` itself when none exists
    (Lightning then warns and starts afresh)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    candidates: set[str] = set()
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            candidates |= callback._find_last_checkpoints(trainer)
    existing = [Path(p) for p in candidates if Path(p).is_file()]
    if not existing:
        return "last"
    return str(readable_checkpoint(max(existing, key=lambda p: p.stat().st_mtime)))
