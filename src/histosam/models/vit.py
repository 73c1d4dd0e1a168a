"""SAM's ViT architectures (``vit_b``, ``vit_l``, ``vit_h`` and the small test ``tiny``): hyper-parameters and
builders, registered in :mod:`histosam.models.registry`. The encoder itself is
:class:`~histosam.models.image_encoder.ImageEncoderViT`."""

from __future__ import annotations

from typing import Any

from histosam.errors import ParameterError
from histosam.models.heads import instance_head, sam_prompt_heads
from histosam.models.image_encoder import ImageEncoderViT
from histosam.models.registry import register
from histosam.models.sam import ModelConfig, SegmentAnything

#: ViT hyper-parameters of the official SAM sizes
VIT_CONFIGS: dict[str, dict[str, Any]] = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
    # a very small ViT-SAM for tests: 256-px frame, 16×16 embedding
    "tiny": dict(embed_dim=64, depth=2, num_heads=2, global_attn_indexes=(1,), img_size=256, window_size=4),
}


def build_vit(arch: str, instance_decoder: str | None = None, mask_decoder: str = "sam",
              mask_decoder_options: dict[str, Any] | None = None, **overrides: Any) -> SegmentAnything:
    """SAM with the ViT of ``arch`` (a key of :data:`VIT_CONFIGS`), 1024-px frame (stride 16), optional UNETR,
    SAM's mask decoder or Kim et al.'s (``mask_decoder="refine"``, :mod:`histosam.models.refine_decoder`)."""
    if instance_decoder not in (None, "unetr", "unetr_interp"):
        raise ParameterError(f"instance decoder {instance_decoder!r} does not fit a ViT model (use 'unetr' or "
                         "'unetr_interp')")
    params: dict[str, Any] = dict(img_size=1024, window_size=14)
    params.update(VIT_CONFIGS[arch])
    params.update(overrides)
    encoder = ImageEncoderViT(**params)
    size = params["img_size"]
    prompt, decoder = sam_prompt_heads(size, size // 16, mask_decoder, mask_decoder_options)
    config = ModelConfig(architecture=arch, name=arch, image_size=size, resize_longest_side=True,
                         instance_decoder=instance_decoder, overrides=dict(overrides), mask_decoder=mask_decoder,
                         mask_decoder_options=dict(getattr(decoder, "options", {})))
    return SegmentAnything(encoder, prompt, decoder, instance_head(instance_decoder), config)


for _arch in VIT_CONFIGS:
    register(_arch)(lambda instance_decoder=None, mask_decoder="sam", mask_decoder_options=None, _a=_arch, **kw:
                    build_vit(_a, instance_decoder, mask_decoder, mask_decoder_options, **kw))
