"""Build models by architecture name. The builders live beside their encoders (:mod:`histosam.models.vit`,
:mod:`histosam.models.nano`, :mod:`histosam.models.tiny_vit`) and register themselves in
:mod:`histosam.models.registry`; this module only looks them up.

``build_model(name, **overrides)`` returns a randomly initialised :class:`SegmentAnything`; the registry and
loader (:mod:`histosam.registry`) put weights in.
"""

from __future__ import annotations

from typing import Any

from histosam.models.registry import ARCHITECTURES, get_builder, list_architectures, register
from histosam.models.sam import ModelConfig, SegmentAnything

__all__ = ["build_model", "build_from_config", "list_architectures", "register", "ARCHITECTURES"]


def build_model(architecture: str, **kwargs: Any) -> SegmentAnything:
    """Randomly initialised model of a registered architecture (:func:`list_architectures`)."""
    return get_builder(architecture)(**kwargs)


def build_from_config(config: ModelConfig) -> SegmentAnything:
    """Rebuild the architecture described by a saved :class:`ModelConfig` (weights not loaded)."""
    import inspect

    builder = get_builder(config.architecture)
    kwargs = dict(config.overrides)
    accepted = inspect.signature(builder).parameters
    if "image_size" in accepted:  # builders whose frame is a free parameter
        kwargs.setdefault("image_size", config.image_size)
    if getattr(config, "class_names", None):
        if "class_names" not in accepted:
            from histosam.errors import CheckpointError

            raise CheckpointError(f"the {config.architecture} architecture has no class head")
        kwargs.setdefault("class_names", list(config.class_names))
    if getattr(config, "tissue", None):
        if "tissue" not in accepted:
            from histosam.errors import CheckpointError

            raise CheckpointError(f"the {config.architecture} architecture has no tissue head")
        kwargs.setdefault("tissue", dict(config.tissue))
    if getattr(config, "mask_decoder", "sam") != "sam":
        if "mask_decoder" not in accepted:
            from histosam.errors import CheckpointError

            raise CheckpointError(f"the {config.architecture} architecture has no {config.mask_decoder!r} mask "
                                  "decoder")
        kwargs.setdefault("mask_decoder", config.mask_decoder)
        kwargs.setdefault("mask_decoder_options", dict(config.mask_decoder_options or {}))
    model = builder(instance_decoder=config.instance_decoder, **kwargs)
    model.config = config
    return model
