"""Atomic file writes: an output file is either complete or absent, never half-written.

Used by every layer that writes user-facing outputs (wavs, overlay PNGs, mixture
lists, saved models), so it imports nothing from omniseq.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds.

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
        os.replace(tmp, path)  # atomic on POSIX and Windows within one directory
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
