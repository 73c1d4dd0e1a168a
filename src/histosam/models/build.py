"""Builders: one function per architecture, composed from the pure modules (like SAM's ``build_sam.py``).

``build_model(name, **overrides)`` returns a randomly initialised :class:`SegmentAnything`; the registry and
loader (:mod:`histosam.registry`) put weights in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from histosam.models.image_encoder import ImageEncoderViT
from histosam.models.mask_decoder import MaskDecoder
from histosam.models.nano import NanoEncoder, NanoInstanceDecoder
from histosam.models.prompt_encoder import PromptEncoder
from histosam.models.sam import ModelConfig, SegmentAnything
from histosam.models.transformer import TwoWayTransformer
from histosam.models.unetr import UNETRDecoder

#: ViT hyper-parameters of the official SAM sizes
VIT_CONFIGS: dict[str, dict[str, Any]] = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
    # a very small ViT-SAM for tests: 256-px frame, 16×16 embedding
    "tiny": dict(embed_dim=64, depth=2, num_heads=2, global_attn_indexes=(1,), img_size=256, window_size=4),
}

ARCHITECTURES: dict[str, Callable[..., SegmentAnything]] = {}


def register(name: str) -> Callable[[Callable[..., SegmentAnything]], Callable[..., SegmentAnything]]:
    def deco(fn: Callable[..., SegmentAnything]) -> Callable[..., SegmentAnything]:
        ARCHITECTURES[name] = fn
        return fn

    return deco


def _instance_decoder(kind: str | None):
    if kind is None:
        return None
    if kind in ("unetr", "unetr_interp"):
        return UNETRDecoder(256, 3, conv_transpose=(kind == "unetr"))
    raise ValueError(f"instance decoder {kind!r} does not fit a ViT model (use 'unetr' or 'unetr_interp')")


def _sam_heads(image_size: int, embedding: int) -> tuple[PromptEncoder, MaskDecoder]:
    prompt = PromptEncoder(256, (embedding, embedding), (image_size, image_size), 16)
    decoder = MaskDecoder(256, TwoWayTransformer(depth=2, embedding_dim=256, num_heads=8, mlp_dim=2048))
    return prompt, decoder


def _build_vit(arch: str, instance_decoder: str | None = None, **overrides: Any) -> SegmentAnything:
    params = dict(img_size=1024, window_size=14)
    params.update(VIT_CONFIGS[arch])
    params.update(overrides)
    encoder = ImageEncoderViT(**params)
    size = params["img_size"]
    prompt, decoder = _sam_heads(size, size // 16)
    config = ModelConfig(architecture=arch, name=arch, image_size=size, resize_longest_side=True,
                         instance_decoder=instance_decoder, overrides=dict(overrides))
    return SegmentAnything(encoder, prompt, decoder, _instance_decoder(instance_decoder), config)


for _arch in VIT_CONFIGS:
    register(_arch)(lambda instance_decoder=None, _a=_arch, **kw: _build_vit(_a, instance_decoder, **kw))


@register("nano")
def build_nano(instance_decoder: str | None = "nano", image_size: int = 512, **overrides: Any) -> SegmentAnything:
    """histosam-nano: convolutional encoder (stride 8) + SAM prompt encoder/mask decoder + nano instance decoder."""
    encoder = NanoEncoder(**overrides)
    prompt, decoder = _sam_heads(image_size, image_size // 8)
    inst = NanoInstanceDecoder(256, widths=encoder.widths[:2]) if instance_decoder else None
    config = ModelConfig(architecture="nano", name="nano", image_size=image_size, resize_longest_side=False,
                         instance_decoder="nano" if instance_decoder else None, mpp=0.25, overrides=dict(overrides))
    return SegmentAnything(encoder, prompt, decoder, inst, config)


def build_model(architecture: str, **kwargs: Any) -> SegmentAnything:
    """Randomly initialised model of a registered architecture (``list(ARCHITECTURES)``)."""
    if architecture == "vit_t":
        from histosam.models.tiny_vit import build_vit_t  # optional, heavier import

        return build_vit_t(**kwargs)
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES) + ['vit_t']}")
    return ARCHITECTURES[architecture](**kwargs)


def build_from_config(config: ModelConfig) -> SegmentAnything:
    """Rebuild the architecture described by a saved :class:`ModelConfig` (weights not loaded)."""
    kwargs = dict(config.overrides)
    if config.architecture == "nano":
        model = build_model("nano", instance_decoder=config.instance_decoder, image_size=config.image_size, **kwargs)
    else:
        model = build_model(config.architecture, instance_decoder=config.instance_decoder, **kwargs)
    model.config = config
    return model
