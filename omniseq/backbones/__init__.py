"""Sequence backbones: mixers behind one contract (``backbones.mixers``), the
residual ``Block`` (``backbones.blocks``) and the named architectures built from them."""

# Registers the vision models in timm and the "windowed" mixer (omniseq/__init__.py says why here).
from omniseq.backbones import hierarchical as _hierarchical  # noqa: F401
from omniseq.backbones import vit as _vit  # noqa: F401
