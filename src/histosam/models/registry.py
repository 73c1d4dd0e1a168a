"""The architecture registry (timm's rule): each encoder file registers its builders with :func:`register` when it
is imported; this module only collects and looks them up. :mod:`histosam.models.build` is the public entry point.

A builder is ``fn(instance_decoder: str | None = ..., **overrides) -> SegmentAnything`` returning a randomly
initialised model whose ``config`` rebuilds it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from histosam.errors import ParameterError

__all__ = ["ARCHITECTURES", "register", "get_builder", "list_architectures", "default_instance_head",
           "architecture_tiling", "PROVIDERS"]

Builder = Callable[..., Any]

#: name -> builder, filled by the encoder modules as they are imported
ARCHITECTURES: dict[str, Builder] = {}

#: the modules that register architectures (imported on the first lookup)
PROVIDERS = ("histosam.models.vit", "histosam.models.nano", "histosam.models.tiny_vit")


#: name -> the instance (AIS) head that fits the architecture when one is added (training a decoder)
INSTANCE_HEADS: dict[str, str] = {}
#: name -> (tile, halo, whole_below): the engine's default tiling for the architecture, in working pixels; images
#: whose longest side is at most ``whole_below`` are one tile (0: never)
TILINGS: dict[str, tuple[int, int, int]] = {}

#: PathoSAM's tiling for SAM-family models (resized tiles): 384 + 2·64, images up to 512 px whole
SAM_TILING = (384, 64, 512)


def register(name: str, instance_head: str = "unetr",
             tiling: tuple[int, int, int] = SAM_TILING) -> Callable[[Builder], Builder]:
    """Decorator: register ``fn`` as the builder of architecture ``name`` (a name registers once);
    ``instance_head`` is the AIS head kind that fits its encoder (:func:`histosam.models.heads.instance_head`);
    ``tiling`` its default ``(tile, halo, whole_below)`` (see :data:`TILINGS`)."""
    def deco(fn: Builder) -> Builder:
        if name in ARCHITECTURES and ARCHITECTURES[name] is not fn:
            raise ValueError(f"architecture {name!r} is registered twice")
        ARCHITECTURES[name] = fn
        INSTANCE_HEADS[name] = instance_head
        TILINGS[name] = tiling
        return fn

    return deco


def architecture_tiling(name: str) -> tuple[int, int, int]:
    """``(tile, halo, whole_below)`` registered for architecture ``name`` (SAM's for unknown custom ones)."""
    if name not in TILINGS:
        _import_providers()
    return TILINGS.get(name, SAM_TILING)


def default_instance_head(name: str) -> str:
    """The AIS head kind that fits architecture ``name``."""
    get_builder(name)
    return INSTANCE_HEADS[name]


def _import_providers() -> None:
    for module in PROVIDERS:
        importlib.import_module(module)


def list_architectures() -> list[str]:
    """Names of every registered architecture, sorted."""
    _import_providers()
    return sorted(ARCHITECTURES)


def get_builder(name: str) -> Builder:
    """The builder of ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in ARCHITECTURES:
        _import_providers()
    if name not in ARCHITECTURES:
        raise ParameterError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name]
