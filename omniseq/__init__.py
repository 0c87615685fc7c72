"""omniseq: fast sequence backbones shared across vision, time series, audio and genomics."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

__version__ = "0.1.0"

# Large CPU tensors on transparent huge pages (PyTorch's own switch, read at torch's first
# allocation, so it takes effect when omniseq is imported before torch allocates, as the CLI
# does). Steps that allocate and free hundreds of MB each (ConvS5 on a grid) spent a fifth of
# their CPU time in page faults and held freed memory; 2 MB pages cut both (README, "ConvS5 on
# a 33 x 49 grid"). THP_MEM_ALLOC_ENABLE=0 turns it off.
#
# torch's OpenMP workers (GNU libgomp on Linux) spin 300,000 rounds after every parallel region
# before they sleep; on two threads that spinning was a sixth of a ConvS5 grid step's
# CPU-seconds, and it stalls work the main thread runs between regions. 10,000 rounds cut the
# step's CPU-seconds by 17% and left a small forecasting step as fast (README, Troubleshooting).
# libgomp reads it when it loads, so it too needs omniseq imported before torch; a value set
# by the user wins.
if sys.platform.startswith("linux"):
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

# The vision models are timm citizens: `timm.create_model("vig_tiny_patch16_224")` works
# after `import omniseq`. Registering them needs torch and timm (seconds to import), which
# `omniseq --help` and `omniseq list` must not pay, so they are registered when timm is
# imported (at once if it already is). Importing `omniseq.backbones` registers them too.


def _register_vision_models() -> None:
    importlib.import_module("omniseq.backbones")


class _RegisterAfterTimm:
    """A one-shot meta-path hook: once the module ``timm`` has executed, register ours."""

    def find_spec(self, name: str, path=None, target=None):
        if name != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_timm = spec.loader.exec_module

        def exec_module(module) -> None:
            exec_timm(module)
            _register_vision_models()

        spec.loader.exec_module = exec_module
        return spec


if "timm" in sys.modules:
    _register_vision_models()
elif not any(isinstance(hook, _RegisterAfterTimm) for hook in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterTimm())
