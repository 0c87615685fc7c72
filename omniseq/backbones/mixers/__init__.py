"""Sequence mixers behind one contract; importing this package registers them all."""

from omniseq.backbones.mixers import (  # noqa: F401  (registration side effects)
    attention,
    fsmn,
    gla,
    mamba,
    mlp,
    ssm,
    vig,
)
from omniseq.backbones.mixers.registry import (
    Mixer,
    build_mixer,
    get_mixer_class,
    list_mixers,
    register_mixer,
)

__all__ = ["Mixer", "build_mixer", "get_mixer_class", "list_mixers", "register_mixer"]
