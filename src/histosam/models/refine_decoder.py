"""Kim et al.'s refinement mask decoder ("Evaluation and improvement of Segment Anything Model for interactive
histopathology image segmentation", MICCAI-W 2023, Fig. 2c and Sec. 2.3): a **mask-decoder variant** with
:class:`~histosam.models.mask_decoder.MaskDecoder`'s call signature and outputs, so the predictor, the QuPath
server and the evaluation protocols use it unchanged (role ``masks``; ``multimask``, ``mask_input`` and the IoU
scores keep their meaning).

Against SAM's decoder:

1. the two-way transformer, the IoU/mask tokens and the IoU head are SAM's (same parameter names, so
   :meth:`RefineMaskDecoder.from_sam_decoder` copies them);
2. after the transformer, a **global self-attention block** runs over the (prompt-conditioned) image tokens:
   pre-norm multi-head self-attention with SAM's positional encoding added to queries and keys, then an MLP, both
   residual (their output projections start at zero, so the block starts as the identity);
3. **deeper upsampling**: two *UpConvBlocks* (3×3 conv, 3×3 conv halving the channels, shortcut, then a 2×2
   up-convolution) and ``depth − 2`` *ConvBlocks* (3×3 conv, 3×3 conv halving the channels, shortcut), instance
   norm and GELU between the layers (the paper's ``depth = 3``: 256 → 128 → 64 → 32 channels at 4× the
   embedding's resolution);
4. **no dot product** between the output (mask) tokens and the upscaled image embedding: a 1×1 convolution maps
   the last block's features to one logit map per mask output (index 0 the single-mask output, 1..3 the
   multimask outputs, as SAM's). The prompts reach the masks through the two-way transformer, which rewrites the
   image tokens of every prompt set.

Options (``ModelConfig.mask_decoder_options``): ``depth`` (blocks, ≥ 2; 3), ``attn_heads`` (8),
``attn_downsample`` (1), ``mlp_dim`` (1024), ``norm`` (``"instance"``, the paper's, or ``"layer"``: per-pixel
layer norm, which makes the upsampling path independent of the decoded window's content), ``min_channels`` (16).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from histosam.errors import ParameterError
from histosam.models.common import MLP, LayerNorm2d, MLPBlock
from histosam.models.heads import MASKS_CONTRACT
from histosam.models.mask_decoder import two_way_pass
from histosam.models.transformer import Attention, TwoWayTransformer

#: the options a refine decoder takes and their defaults (see the module docstring)
REFINE_DEFAULTS: dict[str, Any] = {"depth": 3, "attn_heads": 8, "attn_downsample": 1, "mlp_dim": 1024,
                                   "norm": "instance", "min_channels": 16}


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "layer":
        return LayerNorm2d(channels)
    raise ParameterError(f"unknown refine-decoder norm {kind!r} (use 'instance' or 'layer')")


class GlobalAttentionBlock(nn.Module):
    """Pre-norm self-attention over all image tokens (``B×N×C``) + MLP, both residual; starts as the identity."""

    def __init__(self, dim: int, num_heads: int = 8, downsample_rate: int = 1, mlp_dim: int = 1024) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, downsample_rate)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim)
        for lin in (self.attn.out_proj, self.mlp.lin2):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        qk = y + pe
        x = self.attn(qk, qk, y, residual=x)
        return x + self.mlp(self.norm2(x))


class ConvBlock(nn.Module):
    """``conv3×3 → norm → GELU → conv3×3 (C_in → C_out) → norm``, plus a shortcut (1×1 conv when the width
    changes), then GELU."""

    def __init__(self, c_in: int, c_out: int, norm: str = "instance") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_in, 3, padding=1)
        self.norm1 = _norm(norm, c_in)
        self.conv2 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = _norm(norm, c_out)
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm1(self.conv1(x)))
        return self.act(self.norm2(self.conv2(y)) + self.shortcut(x))


class UpConvBlock(ConvBlock):
    """A :class:`ConvBlock` followed by a 2×2 stride-2 up-convolution, norm and GELU (twice the resolution)."""

    def __init__(self, c_in: int, c_out: int, norm: str = "instance") -> None:
        super().__init__(c_in, c_out, norm)
        self.up = nn.ConvTranspose2d(c_out, c_out, kernel_size=2, stride=2)
        self.norm3 = _norm(norm, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm3(self.up(super().forward(x))))


class RefineMaskDecoder(nn.Module):
    """Kim et al.'s mask decoder (see the module docstring); a drop-in for
    :class:`~histosam.models.mask_decoder.MaskDecoder`: ``forward(image_embeddings, image_pe, sparse, dense,
    multimask_output) -> (logits B×M×4h×4w, iou B×M)``."""

    contract = MASKS_CONTRACT
    kind = "refine"

    def __init__(self, transformer_dim: int = 256, transformer: nn.Module | None = None,
                 num_multimask_outputs: int = 3, iou_head_depth: int = 3, iou_head_hidden_dim: int = 256,
                 depth: int = 3, attn_heads: int = 8, attn_downsample: int = 1, mlp_dim: int = 1024,
                 norm: str = "instance", min_channels: int = 16) -> None:
        super().__init__()
        if int(depth) < 2:
            raise ParameterError(f"the refine decoder needs depth >= 2 (two up-sampling blocks), got {depth}")
        self.transformer_dim = transformer_dim
        self.transformer = transformer if transformer is not None else TwoWayTransformer(
            depth=2, embedding_dim=transformer_dim, num_heads=8, mlp_dim=2048)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)
        self.global_attention = GlobalAttentionBlock(transformer_dim, int(attn_heads), int(attn_downsample),
                                                     int(mlp_dim))
        widths = [transformer_dim]
        for _ in range(int(depth)):
            widths.append(max(widths[-1] // 2, int(min_channels)))
        blocks: list[nn.Module] = [UpConvBlock(widths[i], widths[i + 1], norm) for i in range(2)]
        blocks += [ConvBlock(widths[i], widths[i + 1], norm) for i in range(2, int(depth))]
        self.blocks = nn.Sequential(*blocks)
        self.output_conv = nn.Conv2d(widths[-1], self.num_mask_tokens, 1)
        self.options = {"depth": int(depth), "attn_heads": int(attn_heads), "attn_downsample": int(attn_downsample),
                        "mlp_dim": int(mlp_dim), "norm": norm, "min_channels": int(min_channels)}

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse_prompt_embeddings: torch.Tensor,
                dense_prompt_embeddings: torch.Tensor, multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`MaskDecoder.forward`: ``B×M×4h×4w`` logits and ``B×M`` IoU predictions (M = 3 or 1)."""
        masks, iou = self.predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        sl = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sl], iou[:, sl]

    def predict_masks(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                      dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``num_mask_tokens`` masks and IoU predictions."""
        b = sparse.shape[0]
        hs, src, (h, w) = two_way_pass(self, image_embeddings, image_pe, sparse, dense)  # src: B'×hw×C
        c = src.shape[-1]
        if src.shape[0] != b:
            src = src.expand(b, -1, -1)
        pe = image_pe.flatten(2).transpose(1, 2).to(src.dtype)  # 1×hw×C
        src = self.global_attention(src, pe)
        x = src.transpose(1, 2).reshape(b, c, h, w)
        masks = self.output_conv(self.blocks(x))
        return masks, self.iou_prediction_head(hs[:, 0, :])

    @classmethod
    def from_sam_decoder(cls, decoder: nn.Module, **options: Any) -> RefineMaskDecoder:
        """A refine decoder whose transformer, tokens and IoU head are copies of SAM decoder ``decoder``'s (every
        tensor whose name and shape match; the attention block, up-sampling blocks and output convolution start
        fresh). ``options``: see :data:`REFINE_DEFAULTS`."""
        opts = resolve_options(options)
        iou_layers = decoder.iou_prediction_head.layers
        new = cls(transformer_dim=decoder.transformer_dim, transformer=copy.deepcopy(decoder.transformer),
                  num_multimask_outputs=decoder.num_mask_tokens - 1, iou_head_depth=len(iou_layers),
                  iou_head_hidden_dim=iou_layers[0].out_features, **opts)
        own = new.state_dict()
        shared = {k: v for k, v in decoder.state_dict().items() if k in own and own[k].shape == v.shape}
        new.load_state_dict(shared, strict=False)
        new.copied_from_sam = sorted(shared)  # type: ignore[attr-defined]
        return new.to(next(decoder.parameters()).device)


def resolve_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """``options`` over :data:`REFINE_DEFAULTS`; unknown keys are a :class:`ParameterError`."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(REFINE_DEFAULTS))
    if unknown:
        raise ParameterError(f"unknown refine-decoder option(s) {unknown}; known: {sorted(REFINE_DEFAULTS)}")
    return {**REFINE_DEFAULTS, **options}


MASK_DECODERS = ("sam", "refine")


def use_mask_decoder(model: nn.Module, kind: str, options: dict[str, Any] | None = None) -> nn.Module:
    """Give ``model`` (a :class:`~histosam.models.sam.SegmentAnything`) the mask decoder ``kind``: ``"refine"``
    replaces a SAM decoder by :meth:`RefineMaskDecoder.from_sam_decoder` (a refine decoder is kept as it is when
    ``options`` are none or match); ``"sam"`` keeps a SAM decoder. Updates ``model.config``. Returns ``model``."""
    if kind not in MASK_DECODERS:
        raise ParameterError(f"unknown mask decoder {kind!r} (use one of {', '.join(MASK_DECODERS)})")
    current = model.mask_decoder
    if kind == "sam":
        if isinstance(current, RefineMaskDecoder):
            raise ParameterError("the model has a refine mask decoder; a SAM decoder cannot be made from it")
        return model
    if isinstance(current, RefineMaskDecoder):
        wanted = resolve_options(options)
        if options and wanted != current.options:
            raise ParameterError(f"the model's refine decoder has options {current.options}, not {wanted}")
    else:
        model.mask_decoder = RefineMaskDecoder.from_sam_decoder(current, **(options or {}))
    model.config.mask_decoder = "refine"
    model.config.mask_decoder_options = dict(model.mask_decoder.options)
    return model
