"""histosam: Segment Anything for histopathology.

Public API (lazy imports keep ``import histosam`` light):

- :func:`histosam.load_model` - build a model from a registry name or a checkpoint path.
- :class:`histosam.Predictor` - interactive (prompt-based) segmentation.
- :func:`histosam.segment` - automatic instance segmentation of an image of any size.
- :func:`histosam.list_models` - the registered model names (``histosam models`` lists their details).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "load_model": ("histosam.registry.loader", "load_model"),
    "Predictor": ("histosam.inference.predictor", "Predictor"),
    "segment": ("histosam.automatic", "segment"),
    "list_models": ("histosam.registry.entries", "list_models"),
}

if TYPE_CHECKING:  # pragma: no cover
    from histosam.automatic import segment
    from histosam.inference.predictor import Predictor
    from histosam.registry.entries import list_models
    from histosam.registry.loader import load_model


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'histosam' has no attribute {name!r}")


__all__ = ["Predictor", "list_models", "load_model", "segment", "__version__"]
