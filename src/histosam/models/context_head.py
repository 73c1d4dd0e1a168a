"""WSI-SAM's multi-resolution head (role ``context``): HR/LR tokens, a dual mask decoder and token aggregation.

A high-resolution (HR) frame at the working resolution and a concentric low-resolution (LR) frame of a
``scale``-times wider field (resampled to the same frame size) are encoded separately. SAM's mask decoder runs on
both (one batched call): the HR frame's tokens are SAM's output tokens (IoU + 4 mask tokens), the learnable **HR
token** (1×256) and the prompt tokens; the LR frame's the same with the **LR token** and the prompts mapped into
the LR frame. The updated HR and LR tokens are **averaged** (token aggregation) and one MLP turns the mean into
the weights of a point-wise product with the **fused mask features** of each frame, giving the HR mask (HR frame)
and the LR mask (LR frame), both at the mask decoder's output grid (4× the embedding).

Fusion (the "light fusion module"): ``upscaled + refine(upscaled) + late(embedding) + Σ early_i(skip_i)``:
``upscaled`` are the mask decoder's upscaled image features (C/8 = 32 channels), ``refine`` a per-pixel
two-layer MLP on them (1×1 convolutions; lighter than HQ-SAM's two 3×3 convolutions, so that one prompt with
context costs about twice SAM's decoding: the spatial terms are the per-frame ones), ``late`` two transposed
convolutions of the frame's embedding (as HQ-SAM/WSI-SAM's ``embedding_encoder``), ``early_i`` a 1×1
projection of each encoder skip (histosam-nano: the stride-2 and stride-4 features; the ViTs have none) resized to
the output grid. histosam's choices beyond the
paper: the identity path and zero-initialised last layers of ``refine``/``late``/``early`` make the fused features
equal SAM's at initialisation, and the tokens and MLP start as copies of SAM's first mask token and its
hypernetwork MLP (:meth:`ContextHead.init_from_decoder`), so training starts from SAM's single-mask output.

The head holds only its own weights (tokens, MLP, fusion): the mask decoder it runs is the model's
(``masks`` role), passed in by :meth:`~histosam.models.sam.SegmentAnything.decode_context`; WSI-SAM's setting
keeps it frozen. The per-frame part of the fusion (``late`` + ``early``) depends on the image only and can be
computed once per frame (:meth:`ContextHead.frame_features`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from histosam.models.common import MLP, LayerNorm2d
from histosam.models.heads import HeadContract

__all__ = ["ContextHead", "CONTEXT_CONTRACT", "attach_context_head", "context_spec"]

CONTEXT_CONTRACT = HeadContract("context", ("embedding", "skips", "prompts"),
                                ("hr_mask_logits", "lr_mask_logits", "iou_predictions"), needs_padded_frame=True)
#: LR field / HR field (WSI-SAM: 10× HR with 5× LR of a 1024 frame; histosam: 4× wider, one pyramid step of 4)
DEFAULT_SCALE = 4


class ContextHead(nn.Module):
    """HR/LR tokens, fusion module and token aggregation (see the module docstring).

    Args:
        dim: transformer width of the mask decoder (256).
        early_channels: channels of the encoder skips used as early features (nano: ``widths[:2]``; ``()``: none).
        scale: LR field / HR field (metadata for callers; the head itself is scale-free).
    """

    contract = CONTEXT_CONTRACT

    def __init__(self, dim: int = 256, early_channels: tuple[int, ...] | list[int] = (),
                 scale: int = DEFAULT_SCALE) -> None:
        super().__init__()
        c8 = dim // 8
        self.dim, self.scale = dim, int(scale)
        self.early_channels = tuple(int(c) for c in early_channels)
        self.hr_token = nn.Embedding(1, dim)
        self.lr_token = nn.Embedding(1, dim)
        self.token_mlp = MLP(dim, dim, c8, 3)
        self.refine = nn.Sequential(nn.Linear(c8, c8), nn.GELU(), nn.Linear(c8, c8))  # per pixel, on rows
        self.late = nn.Sequential(nn.ConvTranspose2d(dim, dim // 4, 2, 2), LayerNorm2d(dim // 4), nn.GELU(),
                                  nn.ConvTranspose2d(dim // 4, c8, 2, 2))
        self.early = nn.ModuleList(nn.Conv2d(c, c8, 1) for c in self.early_channels)
        for last in [self.refine[-1], self.late[-1], *self.early]:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def init_from_decoder(self, decoder: nn.Module) -> ContextHead:
        """Start the HR/LR tokens from SAM's first mask token and the MLP from its hypernetwork MLP."""
        with torch.no_grad():
            token = decoder.mask_tokens.weight[:1]
            self.hr_token.weight.copy_(token)
            self.lr_token.weight.copy_(token)
            self.token_mlp.load_state_dict(decoder.output_hypernetworks_mlps[0].state_dict())
        return self

    def image_features(self, embedding: torch.Tensor, skips: list[torch.Tensor] | None) -> torch.Tensor:
        """The per-frame fusion terms ``late(embedding) + Σ early_i(skip_i)``: ``B×C/8×4h×4w``."""
        feat = self.late(embedding)
        size = feat.shape[-2:]
        for proj, skip in zip(self.early, skips or []):
            x = proj(skip)
            feat = feat + (x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="bilinear",
                                                                         align_corners=False))
        return feat

    def frame_features(self, embedding: torch.Tensor, skips: list[torch.Tensor] | None) -> torch.Tensor:
        """:meth:`image_features` in the mask decoder's row order (``B×16hw×C/8``, see :func:`_upscale_rows`): what
        :meth:`forward` consumes; computed once per frame and cached by callers."""
        f = self.image_features(embedding, skips)
        b, c, hh, ww = f.shape
        h, w = hh // 4, ww // 4
        # image row 4y + 2a + c', column 4x + 2b + d → row order (y, x, a, b, c', d)
        return f.view(b, c, h, 2, 2, w, 2, 2).permute(0, 2, 5, 3, 6, 4, 7, 1).reshape(b, 16 * h * w, c)

    def forward(self, decoder: nn.Module, image_pe: torch.Tensor, hr_embedding: torch.Tensor,
                hr_sparse: torch.Tensor, hr_dense: torch.Tensor, lr_embedding: torch.Tensor,
                lr_sparse: torch.Tensor, lr_dense: torch.Tensor, hr_features: torch.Tensor,
                lr_features: torch.Tensor, lr_mask: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Dual decoding.

        Args:
            decoder: the model's SAM :class:`~histosam.models.mask_decoder.MaskDecoder` (its transformer, output
                tokens, upscaling and IoU head are used as they are).
            image_pe: ``1×C×h×w`` dense positional encoding (the same grid for both frames).
            hr_embedding, lr_embedding: ``1×C×h×w`` (shared by all prompt sets) or ``B×C×h×w``.
            hr_sparse, lr_sparse: ``B×K×C`` prompt tokens of each frame (the same prompts, mapped).
            hr_dense, lr_dense: ``B×C×h×w`` (or ``1×…``) dense prompt embeddings.
            hr_features, lr_features: :meth:`frame_features` of each frame (``1×`` or ``B×16hw×C/8``).
            lr_mask: also compute the LR mask (training; inference needs only the LR token, so ``False`` skips
                the LR frame's upscaling and fusion).
        Returns:
            HR logits ``B×1×4h×4w`` (HR frame), LR logits ``B×1×4h×4w`` (LR frame; ``None`` without
            ``lr_mask``), SAM's IoU prediction of its single mask in the HR frame ``B×1``.
        """
        b = hr_sparse.shape[0]
        h, w = hr_embedding.shape[-2:]
        out = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        n_out = out.shape[0]

        def run(emb, dense, sparse, token):
            tokens = torch.cat([out, token], 0).unsqueeze(0).expand(b, -1, -1).to(sparse.dtype)
            tokens = torch.cat([tokens, sparse], 1)
            if emb.shape[0] == 1 and (dense.shape[0] == 1 or dense.stride(0) == 0):
                src = emb + dense[:1]  # one image for every prompt set: the transformer shares it
            else:
                src = emb.expand(b, -1, -1, -1) + dense
            return decoder.transformer(src, image_pe, tokens)

        hs_hr, img_hr = run(hr_embedding, hr_dense, hr_sparse, self.hr_token.weight)
        hs_lr, img_lr = run(lr_embedding, lr_dense, lr_sparse, self.lr_token.weight)
        agg = 0.5 * (hs_hr[:, n_out] + hs_lr[:, n_out])  # token aggregation: mean of the updated HR and LR tokens
        weights = self.token_mlp(agg).unsqueeze(1)  # B×1×C/8

        def mask(img, feats):
            up = _upscale_rows(decoder, img)
            fused = up + self.refine(up) + feats
            logits = torch.bmm(weights, fused.transpose(1, 2))  # B×1×16hw, rows (y, x, a, b, c, d)
            logits = logits.view(b, 1, h, w, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7)
            return logits.reshape(b, 1, 4 * h, 4 * w)

        hr_logits = mask(img_hr, hr_features)
        lr_logits = mask(img_lr, lr_features) if lr_mask else None
        iou = decoder.iou_prediction_head(hs_hr[:, 0])[:, :1]
        return hr_logits, lr_logits, iou


def _upscale_rows(decoder: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    """The mask decoder's ``output_upscaling`` of image tokens ``B×hw×C`` (row-major), computed as the decoder
    does: one GEMM per kernel-2 stride-2 transposed convolution on the token rows (the same arithmetic as the
    modules), giving ``B×16hw×C/8`` in row order (pixel (y, x), then the sub-pixels (a, b) and (c, d); image row
    ``4y + 2a + c``, column ``4x + 2b + d``). The fusion is per pixel, so the features never need image order;
    only the one-channel logits are reordered."""
    from histosam.models.mask_decoder import _transposed_conv_rows

    up1, norm, act1, up2, act2 = decoder.output_upscaling
    x = _transposed_conv_rows(up1, rows)
    x = act1(F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps))
    return act2(_transposed_conv_rows(up2, x))


def context_spec(model: nn.Module, scale: int = DEFAULT_SCALE) -> dict[str, Any]:
    """The ``ModelConfig.context`` spec of a context head that fits ``model``'s encoder: the skips of a nano
    encoder (``widths[:2]``) as early features, none for the ViTs."""
    widths = getattr(model.image_encoder, "widths", None)
    return {"early_channels": [int(c) for c in widths[:2]] if widths else [], "scale": int(scale)}


def attach_context_head(model: nn.Module, spec: dict[str, Any] | None = None, init: bool = True) -> ContextHead:
    """Give ``model`` a context head (``spec``: :func:`context_spec` by default, stored in ``config.context``);
    ``init``: start it from the model's mask decoder (:meth:`ContextHead.init_from_decoder`)."""
    from histosam.models.heads import context_head

    spec = dict(spec or context_spec(model))
    head = context_head(spec)
    if init:
        head.init_from_decoder(model.mask_decoder)
    model.context_decoder = head.to(model.device)
    model.config.context = spec
    return head
