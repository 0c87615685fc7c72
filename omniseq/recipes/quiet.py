"""Silence Lightning's own noise, and nothing else.

Only messages raised inside Lightning about Lightning are dropped: its advert for a
cloud logger, torch's deprecation of ``LeafSpec`` that Lightning's own
``utilities/_pytree.py`` triggers (fixed upstream; nothing a user can act on), and the
model summary's note that it sizes a bf16-mixed model as fp32 (every bf16 recipe would
print it). Warnings about the user's model, data or configuration still show.
"""

from __future__ import annotations

import logging
import warnings

_ADVERT_PREFIX = "💡 Tip:"


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_ADVERT_PREFIX)


_FILTER = _DropAdverts()


def silence_lightning_noise() -> None:
    """Idempotent: install the filters once per process."""
    warnings.filterwarnings(
        "ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
    warnings.filterwarnings(
        "ignore", message=r"Precision \S+ is not supported by the model summary",
        module=r"lightning\.pytorch\.utilities\.model_summary",
    )
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
