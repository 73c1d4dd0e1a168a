"""SAM's two-way transformer (tokens ↔ image cross-attention), parameter names as in Meta's checkpoints."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from histosam.models.common import MLPBlock


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections; ``downsample_rate`` shrinks the inner width."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError("num_heads must divide the internal dimension")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``q: Bq×Nq×C``, ``k, v: Bk×Nk×C`` → ``B×Nq×C`` with ``B = max(Bq, Bk)``; a batch of 1 on either side
        is shared by every item of the other (each input is projected once, not once per item)."""
        bq, nq, bk = q.shape[0], q.shape[1], k.shape[0]
        q, k, v = self.q_proj(q), self.k_proj(k), self.v_proj(v)
        if bk == 1 and bq > 1:  # keys shared by all query sets: attend as one long query sequence
            out = F.scaled_dot_product_attention(self._heads(q.reshape(1, bq * nq, -1)), self._heads(k),
                                                 self._heads(v))
            b = bq
        else:
            if bq == 1 and bk > 1:
                q = q.expand(bk, -1, -1)
            out = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v))
            b = out.shape[0]
        return self.out_proj(out.transpose(1, 2).reshape(b, nq, -1))


class TwoWayAttentionBlock(nn.Module):
    """Self-attention on tokens, token→image, MLP, image→token (post-norm)."""

    def __init__(self, embedding_dim: int, num_heads: int, mlp_dim: int = 2048, attention_downsample_rate: int = 2,
                 skip_first_layer_pe: bool = False) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor,
                key_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """``depth`` two-way blocks then a final token→image attention."""

    def __init__(self, depth: int = 2, embedding_dim: int = 256, num_heads: int = 8, mlp_dim: int = 2048,
                 attention_downsample_rate: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, attention_downsample_rate, i == 0)
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(self, image_embedding: torch.Tensor, image_pe: torch.Tensor,
                point_embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``image_embedding, image_pe: B×C×h×w`` or ``1×C×h×w``; ``point_embedding: B×N×C`` → (tokens B×N×C,
        image B×hw×C).

        An image embedding of batch 1 is shared by all B prompt sets: the first block projects it once for the
        token→image and image→token attentions (the same arithmetic as repeating it B times; B× less work for
        those projections, the bulk of automatic mask generation), and the image→token update makes it per-prompt.
        """
        keys = image_embedding.flatten(2).permute(0, 2, 1)
        key_pe = image_pe.flatten(2).permute(0, 2, 1)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        out = self.final_attn_token_to_image(queries + point_embedding, keys + key_pe, keys)
        if keys.shape[0] != queries.shape[0]:
            keys = keys.expand(queries.shape[0], -1, -1)
        return self.norm_final_attn(queries + out), keys
