"""omniseq: fast sequence backbones shared across vision, time series, audio and genomics."""

__version__ = "0.1.0"

# Importing these registers the vision models in timm.
from omniseq.backbones import hierarchical as _hierarchical  # noqa: E402,F401
from omniseq.backbones import vit as _vit  # noqa: E402,F401
