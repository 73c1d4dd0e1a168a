"""SAM-Path's tissue head: trainable **class prompts** fed to a mask decoder in place of points and boxes, one mask
per class, and an optional **second encoder** whose features are fused with the image embedding.

Frames and shapes (``S``: the model's square input frame side; ``h = w = S / stride``: the embedding grid):

- ``embedding``: ``B×256×h×w`` float, the main encoder's image embedding.
- ``frame``: ``B×3×S×S`` float, the normalised input (consumed by the second encoder only).
- output: logits ``B×(K+1)×4h×4w`` in the padded input frame at 4× the embedding resolution (stride 2 of the
  frame for histosam's stride-8 encoders): channels ``0..K-1`` are the tissue classes (background first),
  channel ``K`` is the **interior** of region instances (each region shrunk away from its border), whose connected
  components seed the region instances, so that touching glands come apart. As in
  SAM-Path, each channel is its own mask: a sigmoid gives its score; the class map is the argmax of the K class
  scores.

Each class prompt is a set of ``tokens`` learnable 256-d embeddings that take the place of the sparse prompt
embeddings of SAM's mask decoder; the dense prompt is a learnable "no mask" embedding, as SAM's. All K+1 prompts
share one decoder, batched (``B·(K+1)`` decoder calls in one).

The fusion (``FeatureFusion``): ``embedding + conv1×1(GELU(conv1×1([embedding, second])))``, the last
convolution zero-initialised so that an untrained branch leaves the embedding unchanged (a model trained without
the branch gives the same output once one is added).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from histosam.models.heads import HeadContract
from histosam.models.mask_decoder import MaskDecoder
from histosam.models.prompt_encoder import PositionEmbeddingRandom
from histosam.models.transformer import TwoWayTransformer

__all__ = ["ClassPromptHead", "FeatureFusion", "INTERIOR"]

#: name of the extra output channel: the interior of region instances (the seeds of the instances)
INTERIOR = "interior"


class FeatureFusion(nn.Module):
    """``embedding B×C×h×w`` + second features ``B×C2×h'×w'`` (resized to h×w, bilinear) → ``B×C×h×w``."""

    def __init__(self, embed_dim: int, second_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.mix = nn.Conv2d(embed_dim + second_dim, hidden, 1)
        self.out = nn.Conv2d(hidden, embed_dim, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, embedding: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        if second.shape[-2:] != embedding.shape[-2:]:
            second = F.interpolate(second, size=embedding.shape[-2:], mode="bilinear", align_corners=False)
        return embedding + self.out(F.gelu(self.mix(torch.cat([embedding, second.to(embedding.dtype)], dim=1))))


class ClassPromptHead(nn.Module):
    """Class prompts + mask decoder (+ second encoder and fusion): see the module docstring.

    Args:
        class_names: the tissue classes, background first (at least 2).
        image_size: the model frame side S; embedding_side: h (= S / encoder stride).
        tokens: prompt tokens per class.
        mlp_dim, depth: the two-way transformer's MLP width and depth (SAM's: 2048, 2; lighter here by default).
        second_encoder: any module whose ``forward(frame)`` returns ``B×C2×h'×w'`` features (a histosam encoder,
            or a user's pretrained pathology encoder registered as such), or ``None``.
        second_dim: C2 (required with ``second_encoder``).
    """

    def __init__(self, class_names: list[str] | tuple[str, ...], image_size: int, embedding_side: int,
                 tokens: int = 4, mlp_dim: int = 512, depth: int = 2, second_encoder: nn.Module | None = None,
                 second_dim: int | None = None) -> None:
        super().__init__()
        if len(class_names) < 2:
            raise ValueError("a tissue head needs at least two classes (background first)")
        if (second_encoder is None) != (second_dim is None):
            raise ValueError("give second_encoder and second_dim together")
        self.class_names = tuple(class_names)
        self.image_size, self.embedding_side = image_size, embedding_side
        self.class_prompts = nn.Parameter(torch.randn(len(class_names) + 1, tokens, 256) * 0.1)
        self.no_mask_embed = nn.Parameter(torch.zeros(1, 256, 1, 1))
        self.pe_layer = PositionEmbeddingRandom(128)
        self.decoder = MaskDecoder(256, TwoWayTransformer(depth=depth, embedding_dim=256, num_heads=8,
                                                          mlp_dim=mlp_dim), num_multimask_outputs=0)
        self.second_encoder = second_encoder
        self.fusion = FeatureFusion(256, second_dim) if second_dim is not None else None

    @property
    def contract(self) -> HeadContract:
        return HeadContract("tissue", ("embedding", "frame"), (*self.class_names, INTERIOR), needs_padded_frame=True)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def fuse(self, embedding: torch.Tensor, frame: torch.Tensor | None) -> torch.Tensor:
        """The embedding after fusion with the second encoder's features (unchanged without a branch)."""
        if self.second_encoder is None or self.fusion is None:
            return embedding
        if frame is None:
            raise ValueError("this tissue head has a second encoder: it needs the input frame")
        return self.fusion(embedding, self.second_encoder(frame))

    def forward(self, embedding: torch.Tensor, frame: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``B×(K+1)×4h×4w`` (see the module docstring)."""
        emb = self.fuse(embedding, frame)
        b, _, h, w = emb.shape
        p = self.class_prompts.shape[0]
        sparse = self.class_prompts.to(emb.dtype).unsqueeze(0).expand(b, -1, -1, -1).reshape(b * p, -1, 256)
        src = emb.repeat_interleave(p, dim=0)
        dense = self.no_mask_embed.to(emb.dtype).expand(b * p, -1, h, w)
        pe = self.pe_layer((h, w)).unsqueeze(0).to(emb.dtype)
        logits, _ = self.decoder(src, pe, sparse, dense, multimask_output=False)
        return logits.view(b, p, 4 * h, 4 * w)

    @staticmethod
    def probabilities(logits: torch.Tensor) -> torch.Tensor:
        """Logits ``B×(K+1)×H×W`` → per-channel scores in [0, 1] (sigmoid, SAM-Path's per-class masks)."""
        return logits.sigmoid()

    def spec(self) -> dict[str, Any]:
        """What rebuilds this head's shape (stored in ``ModelConfig.tissue``)."""
        return {"classes": list(self.class_names), "tokens": int(self.class_prompts.shape[1]),
                "mlp_dim": self.decoder.transformer.layers[0].mlp.lin1.out_features,
                "depth": len(self.decoder.transformer.layers)}
