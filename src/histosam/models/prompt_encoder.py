"""SAM's prompt encoder: points, boxes and low-resolution masks → sparse and dense embeddings.

Coordinates are (x, y) pixels in the model's **input frame** (after resizing, before padding; the frame is
``input_image_size`` = (S, S)). Parameter names match Meta's checkpoints (``prompt_encoder.*``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from histosam.models.common import LayerNorm2d


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of normalised (x, y) coordinates: ``[sin(2π(2c−1)G), cos(2π(2c−1)G)]``."""

    def __init__(self, num_pos_feats: int = 128, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:
        """``(..., 2)`` coordinates in [0, 1] → ``(..., 2·num_pos_feats)``."""
        coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix.to(coords.dtype)
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int], spacing: tuple[int, int] | None = None) -> torch.Tensor:
        """Dense encoding of an ``h×w`` grid of cell centres: ``(C, h, w)``.

        Cell centres sit at ``(i + 0.5) / spacing`` (``spacing`` defaults to ``size``, SAM's grid over the whole
        frame); a smaller grid with the reference spacing covers a smaller frame at the same resolution.
        """
        h, w = size
        sh, sw = spacing if spacing is not None else size
        device = self.positional_encoding_gaussian_matrix.device
        y = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / sh
        x = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / sw
        yy, xx = torch.meshgrid(y, x, indexing="ij")
        return self._encode(torch.stack([xx, yy], dim=-1)).permute(2, 0, 1)

    def forward_with_coords(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Pixel (x, y) coordinates ``(B, N, 2)`` in a frame of ``image_size`` = (H, W) → ``(B, N, C)``."""
        coords = coords.clone().float()
        coords[..., 0] = coords[..., 0] / image_size[1]
        coords[..., 1] = coords[..., 1] / image_size[0]
        return self._encode(coords)


class PromptEncoder(nn.Module):
    """Encodes prompts for the mask decoder.

    Args:
        embed_dim: prompt embedding width (256).
        image_embedding_size: (h, w) of the image embedding (64, 64).
        input_image_size: (H, W) of the padded input frame (1024, 1024).
        mask_in_chans: hidden channels of the mask downscaler (16).
    """

    def __init__(self, embed_dim: int = 256, image_embedding_size: tuple[int, int] = (64, 64),
                 input_image_size: tuple[int, int] = (1024, 1024), mask_in_chans: int = 16) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Positional encoding of the image embedding grid: ``1×C×h×w``.

        ``size`` (h, w) other than ``image_embedding_size`` gives the grid of a frame of another size at the same
        pixel spacing (used by fully convolutional encoders that take variable frames; points are always
        normalised by ``input_image_size``, so both stay aligned).
        """
        size = tuple(size) if size is not None else self.image_embedding_size
        return self.pe_layer(size, spacing=self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points + 0.5  # shift to pixel centres
        if pad:
            points = torch.cat([points, torch.zeros_like(points[:, :1])], dim=1)
            labels = torch.cat([labels, -torch.ones_like(labels[:, :1])], dim=1)
        emb = self.pe_layer.forward_with_coords(points, self.input_image_size)
        labels = labels[..., None]
        emb = torch.where(labels == -1, self.not_a_point_embed.weight.to(emb.dtype), emb)
        emb = emb + (labels == 0) * self.point_embeddings[0].weight + (labels == 1) * self.point_embeddings[1].weight
        return emb

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        emb = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        emb[:, 0, :] += self.point_embeddings[2].weight[0]
        emb[:, 1, :] += self.point_embeddings[3].weight[0]
        return emb

    def forward(self, points: tuple[torch.Tensor, torch.Tensor] | None, boxes: torch.Tensor | None,
                masks: torch.Tensor | None,
                embedding_size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed prompts.

        Args:
            points: ``(coords B×N×2 float (x, y) input frame, labels B×N int: 1 fg, 0 bg, −1 padding)`` or None.
            boxes: ``B×4`` ``[x0, y0, x1, y1]`` input frame, or None.
            masks: ``B×1×4h×4w`` low-resolution logits, or None.
            embedding_size: (h, w) of the image embedding when it differs from ``image_embedding_size``.
        Returns:
            sparse ``B×K×C`` (points then box corners; a padding point is appended when there is no box),
            dense ``B×C×h×w``.
        """
        if points is not None:
            bs = points[0].shape[0]
        elif boxes is not None:
            bs = boxes.shape[0]
        elif masks is not None:
            bs = masks.shape[0]
        else:
            bs = 1
        device = self.point_embeddings[0].weight.device
        sparse = torch.empty((bs, 0, self.embed_dim), device=device)
        if points is not None:
            sparse = torch.cat([sparse, self._embed_points(points[0], points[1], pad=boxes is None)], dim=1)
        if boxes is not None:
            sparse = torch.cat([sparse, self._embed_boxes(boxes)], dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            h, w = embedding_size if embedding_size is not None else self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(bs, -1, h, w)
        return sparse, dense
