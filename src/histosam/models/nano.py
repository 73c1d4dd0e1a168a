"""histosam-nano: a compact convolutional encoder and instance decoder for CPU-friendly inference.

The encoder maps a normalised ``B×3×S×S`` frame (any S divisible by 16; 512 for the shipped model, at the
native ~0.25 µm/px of 40× scans) to SAM's ``B×256×S/8×S/8`` embedding consumed by the standard prompt encoder
and mask decoder, plus high-resolution skips (strides 2 and 4) for the instance decoder. The instance decoder
returns ``B×3×S×S`` sigmoid maps (foreground, centre distance, boundary distance) like micro-sam's UNETR.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from histosam.errors import ParameterError
from histosam.models.common import LayerNorm2d
from histosam.models.fused_conv import FoldedConv
from histosam.models.heads import AIS_CHANNELS, HeadContract, instance_head, sam_prompt_heads, tissue_head
from histosam.models.registry import register


class ConvNormAct(nn.Sequential):
    """``Conv2d → [BatchNorm2d] → [GELU]`` (an ``nn.Sequential``: state-dict keys ``0.*`` conv, ``1.*`` norm).

    CPU inference runs it as one oneDNN convolution (:mod:`histosam.models.fused_conv`: norm folded into the
    weights, GELU as a post-op; ~2× faster per layer on a 2-core EPYC); training, autograd and GPUs run the plain
    modules.
    """

    def __init__(self, conv: nn.Conv2d, norm: nn.BatchNorm2d | None, act: bool) -> None:
        layers: list[nn.Module] = [conv] + ([norm] if norm is not None else []) + ([nn.GELU()] if act else [])
        super().__init__(*layers)
        self._fused = FoldedConv()
        self._has_norm, self._gelu = norm is not None, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._fused(self, self[0], self[1] if self._has_norm else None, self._gelu, x)
        return out if out is not None else super().forward(x)


def conv_bn(in_ch: int, out_ch: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True,
            dilation: int = 1) -> ConvNormAct:
    """``Conv2d(k, stride, 'same' padding, no bias) → BatchNorm2d → [GELU]``."""
    return ConvNormAct(nn.Conv2d(in_ch, out_ch, k, stride, dilation * (k // 2), dilation=dilation, groups=groups,
                                 bias=False), nn.BatchNorm2d(out_ch), act)


class InvertedResidual(nn.Module):
    """``x + project(dw3×3(expand(x)))`` (MobileNetV2-style, dilation for context)."""

    def __init__(self, channels: int, expansion: int = 2, dilation: int = 1) -> None:
        super().__init__()
        hidden = channels * expansion
        self.expand = conv_bn(channels, hidden, 1)
        self.dw = conv_bn(hidden, hidden, 3, groups=hidden, dilation=dilation)
        self.project = conv_bn(hidden, channels, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.dw(self.expand(x)))


class NanoEncoder(nn.Module):
    """Convolutional encoder: frame ``B×3×S×S`` → embedding ``B×256×S/8×S/8`` and skips at S/2 and S/4."""

    def __init__(self, widths: tuple[int, int, int, int] = (24, 48, 96, 160), depths: tuple[int, int, int] = (1, 3, 3),
                 out_chans: int = 256) -> None:
        super().__init__()
        self.widths = widths
        c2, c4, c8, c16 = widths
        self.stem = nn.Sequential(conv_bn(3, c2, 3, 2), conv_bn(c2, c2, 3, 1, groups=c2), conv_bn(c2, c2, 1))
        self.down4 = conv_bn(c2, c4, 3, 2)
        self.stage4 = nn.Sequential(*[InvertedResidual(c4, 2) for _ in range(depths[0])])
        self.down8 = conv_bn(c4, c8, 3, 2)
        self.stage8 = nn.Sequential(*[InvertedResidual(c8, 2, d) for d in (1, 2, 1)[: depths[1]]])
        self.down16 = conv_bn(c8, c16, 3, 2)
        self.stage16 = nn.Sequential(*[InvertedResidual(c16, 3, d) for d in (1, 2, 4)[: depths[2]]])
        self.neck = nn.Sequential(nn.Conv2d(c8 + c16, out_chans, 1, bias=False), LayerNorm2d(out_chans),
                                  nn.Conv2d(out_chans, out_chans, 3, padding=1, groups=out_chans // 8, bias=False),
                                  LayerNorm2d(out_chans))

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(embedding B×256×S/8×S/8, [skip S/2 (widths[0] ch), skip S/4 (widths[1] ch)])``."""
        s2 = self.stem(x)
        s4 = self.stage4(self.down4(s2))
        s8 = self.stage8(self.down8(s4))
        s16 = self.stage16(self.down16(s8))
        up = F.interpolate(s16, size=s8.shape[-2:], mode="bilinear", align_corners=False)
        return self.neck(torch.cat([s8, up], dim=1)), [s2, s4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


class NanoInstanceDecoder(nn.Module):
    """Embedding + skips → ``B×3×S×S`` sigmoid maps (fg, centre distance, boundary distance)."""

    contract = HeadContract("instances", ("embedding", "skips", "frame"), AIS_CHANNELS, needs_padded_frame=True,
                            batch_dependent=False)

    def __init__(self, embed_dim: int = 256, widths: tuple[int, int] = (24, 48),
                 hidden: tuple[int, int, int] = (64, 40, 24), out_channels: int = 3) -> None:
        super().__init__()
        h8, h4, h2 = hidden
        self.reduce = conv_bn(embed_dim, h8, 1)
        self.block8 = InvertedResidual(h8, 2)
        self.fuse4 = conv_bn(h8 + widths[1], h4, 1)
        self.block4 = InvertedResidual(h4, 2)
        self.fuse2 = conv_bn(h4 + widths[0], h2, 1)
        self.block2 = InvertedResidual(h2, 2)
        self.fuse1 = conv_bn(h2 + 3, 16, 1)
        self.refine1 = ConvNormAct(nn.Conv2d(16, 16, 3, padding=1, groups=16), None, act=True)
        self.out_conv = nn.Conv2d(16, out_channels, 1)

    def forward(self, embedding: torch.Tensor, skips: list[torch.Tensor], image: torch.Tensor | None = None
                ) -> torch.Tensor:
        return torch.sigmoid(self.out_conv(self.features(embedding, skips, image)))

    def features(self, embedding: torch.Tensor, skips: list[torch.Tensor], image: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """The 16-channel full-resolution features before the output convolution (``B×16×S×S``)."""
        s2, s4 = skips
        x = self.block8(self.reduce(embedding))
        x = F.interpolate(x, size=s4.shape[-2:], mode="bilinear", align_corners=False)
        x = self.block4(self.fuse4(torch.cat([x, s4], dim=1)))
        x = F.interpolate(x, size=s2.shape[-2:], mode="bilinear", align_corners=False)
        x = self.block2(self.fuse2(torch.cat([x, s2], dim=1)))
        full = (2 * s2.shape[-2], 2 * s2.shape[-1])
        x = F.interpolate(x, size=full, mode="bilinear", align_corners=False)
        if image is None:
            image = torch.zeros(x.shape[0], 3, *full, dtype=x.dtype, device=x.device)
        x = self.fuse1(torch.cat([x, image.to(x.dtype)], dim=1))
        return x + self.refine1(x)


class NanoClassDecoder(NanoInstanceDecoder):
    """PathoSAM's semantic decoder for histosam-nano: the instance decoder's architecture with one output channel
    per class (background first), returning **logits** ``B×K×S×S`` (softmax over K gives class probabilities).
    Initialised from the instance decoder (PathoSAM's "from the AIS decoder" strategy) by
    :meth:`from_instance_decoder`."""

    def __init__(self, class_names: tuple[str, ...] | list[str], embed_dim: int = 256,
                 widths: tuple[int, int] = (24, 48)) -> None:
        super().__init__(embed_dim, widths, out_channels=len(class_names))
        self.class_names = tuple(class_names)

    @property
    def contract(self) -> HeadContract:  # type: ignore[override]
        return HeadContract("classes", ("embedding", "skips", "frame"), self.class_names, needs_padded_frame=True)

    def forward(self, embedding: torch.Tensor, skips: list[torch.Tensor], image: torch.Tensor | None = None
                ) -> torch.Tensor:
        return self.out_conv(self.features(embedding, skips, image))

    @classmethod
    def from_instance_decoder(cls, inst: NanoInstanceDecoder, class_names, widths: tuple[int, int]
                              ) -> NanoClassDecoder:
        """A class decoder whose trunk copies ``inst``'s weights (the output convolution starts fresh)."""
        head = cls(class_names, widths=widths)
        state = {k: v for k, v in inst.state_dict().items() if not k.startswith("out_conv.")}
        head.load_state_dict(state, strict=False)
        return head


#: receptive field of histosam-nano's instance maps (encoder + instance decoder): an output pixel depends on input
#: pixels at most 213 px away (measured by back-propagation, tests/test_tiling_model_maps.py)
NANO_RECEPTIVE_RADIUS = 213


@register("nano", instance_head="nano", tiling=(1024, 224, 0))  # halo 224 >= the receptive radius
def build_nano(instance_decoder: str | None = "nano", image_size: int = 512, class_names: list[str] | None = None,
               tissue: dict[str, Any] | None = None, mask_decoder: str = "sam",
               mask_decoder_options: dict[str, Any] | None = None, **overrides: Any):
    """histosam-nano: convolutional encoder (stride 8) + SAM prompt encoder/mask decoder + nano instance decoder
    (``instance_decoder``: ``"nano"`` or ``None``) + optional class head (``class_names``, background first) +
    optional tissue head (``tissue``: a :func:`~histosam.models.heads.tissue_head` spec); ``mask_decoder``:
    ``"sam"`` or ``"refine"`` (Kim et al.'s, :mod:`histosam.models.refine_decoder`)."""
    from histosam.models.sam import ModelConfig, SegmentAnything

    if instance_decoder not in (None, "nano"):
        raise ParameterError(f"instance decoder {instance_decoder!r} does not fit the nano encoder (use 'nano')")
    encoder = NanoEncoder(**overrides)
    prompt, decoder = sam_prompt_heads(image_size, image_size // 8, mask_decoder, mask_decoder_options)
    inst = instance_head(instance_decoder, skip_widths=encoder.widths[:2])
    config = ModelConfig(architecture="nano", name="nano", image_size=image_size, resize_longest_side=False,
                         instance_decoder=instance_decoder, mpp=0.25, class_names=list(class_names or []),
                         tissue=dict(tissue or {}), overrides=dict(overrides), mask_decoder=mask_decoder,
                         mask_decoder_options=dict(getattr(decoder, "options", {})))
    classes = NanoClassDecoder(class_names, widths=encoder.widths[:2]) if class_names else None
    regions = tissue_head(tissue, image_size, image_size // 8) if tissue else None
    return SegmentAnything(encoder, prompt, decoder, inst, config, class_decoder=classes, tissue_decoder=regions)
