"""High-level objects for notebooks: fit, predict, plot, save/load.

Each is built on the same DataModules and tasks as the CLI recipes and imported
lazily, so ``from omniseq.api import Forecaster`` does not load the audio or
genomics stacks.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "Forecaster": "omniseq.api.forecaster",
    "Segmenter": "omniseq.api.segmenter",
    "Separator": "omniseq.api.separator",
    "DNAEncoder": "omniseq.api.dna_encoder",
}

__all__ = ["DNAEncoder", "Forecaster", "Segmenter", "Separator"]

if TYPE_CHECKING:
    from omniseq.api.dna_encoder import DNAEncoder
    from omniseq.api.forecaster import Forecaster
    from omniseq.api.segmenter import Segmenter
    from omniseq.api.separator import Separator


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'omniseq.api' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
