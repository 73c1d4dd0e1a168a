"""SAM's two-way transformer (tokens ↔ image cross-attention), parameter names as in Meta's checkpoints."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from histosam.models.common import MLPBlock


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections; ``downsample_rate`` shrinks the inner width.

    Cross-attention between a few prompt tokens and the many image tokens runs factored (:meth:`_few_queries`,
    :meth:`_few_keys`): the projection of the many tokens is folded into the few, so the image tokens meet one
    ``C × heads·tokens`` matrix instead of a ``C × internal_dim`` projection (2.3× fewer multiply-adds per prompt
    set for SAM's 7 tokens, 8 heads, 128 inner channels), and the per-head softmax runs over plain GEMM outputs.
    The same map up to float reassociation; used whenever ``heads × few tokens < internal_dim``.
    """

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

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """``q: Bq×Nq×C``, ``k, v: Bk×Nk×C`` → ``B×Nq×C`` with ``B = max(Bq, Bk)``; a batch of 1 on either side
        is shared by every item of the other (each input is projected once, not once per item). With
        ``residual`` (broadcastable to the result), ``residual + attention`` (one pass fewer over many queries)."""
        bq, nq, bk, nk = q.shape[0], q.shape[1], k.shape[0], k.shape[1]
        if nq < nk and self.num_heads * nq < self.internal_dim and bq >= bk:
            out = self._few_queries(q, k, v)
            return out if residual is None else residual + out
        if nk < nq and self.num_heads * nk < self.internal_dim and bk >= bq:
            return self._few_keys(q, k, v, residual)
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
        out = self.out_proj(out.transpose(1, 2).reshape(b, nq, -1))
        return out if residual is None else residual + out

    def _head_weights(self, proj: nn.Linear) -> torch.Tensor:
        """A projection's weight as ``heads × head_dim × C``."""
        return proj.weight.view(self.num_heads, -1, proj.weight.shape[1])

    def _few_queries(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Few queries (tokens, ``B×Nq×C``) over many keys (image, ``Bk×N×C``, ``Bk`` 1 or B).

        Per head h: ``logits = scale·q_h·(W_k,h·k + b_k,h)ᵀ = (scale·W_k,hᵀ·q_h)·kᵀ + const``, and the constant
        (``b_k``'s term) is the same for every key, which the softmax ignores; ``softmax·(W_v,h·v + b_v,h) =
        W_v,h·(softmax·v) + b_v,h`` because each softmax row sums to 1.
        """
        b, nq, c = q.shape
        heads = self.num_heads
        qh = self.q_proj(q).view(b, nq, heads, -1)  # (B, Nq, H, d)
        scale = qh.shape[-1] ** -0.5
        folded = torch.einsum("bjhd,hdc->bhjc", qh * scale, self._head_weights(self.k_proj)).reshape(b, -1, c)
        if k.shape[0] == 1:  # one image for all prompt sets: two plain GEMMs over every set's rows
            attn = torch.softmax(folded.reshape(-1, c) @ k[0].transpose(0, 1), dim=-1)  # (B·H·Nq, N)
            mixed = (attn @ v[0]).view(b, heads, nq, c)
        else:
            attn = torch.softmax(torch.bmm(folded, k.transpose(1, 2)), dim=-1)  # (B, H·Nq, N)
            mixed = torch.bmm(attn, v).view(b, heads, nq, c)
        out = torch.einsum("bhjc,hdc->bjhd", mixed, self._head_weights(self.v_proj))
        if self.v_proj.bias is not None:
            out = out + self.v_proj.bias.view(heads, -1)
        return self.out_proj(out.reshape(b, nq, -1))

    def _few_keys(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  residual: torch.Tensor | None = None) -> torch.Tensor:
        """Many queries (image, ``Bq×N×C``, ``Bq`` 1 or B) over few keys (tokens, ``B×Nk×C``).

        Per head h: ``logits = scale·(W_q,h·q + b_q,h)·k_hᵀ = q·(scale·W_q,hᵀ·k_h) + scale·b_q,h·k_hᵀ`` (a bias per
        key), and ``out_proj(Σ_h softmax_h·v_h) = Σ_h softmax_h·(v_h·W_o,hᵀ + b_o/H)``, since each head's softmax
        sums to 1: the image tokens meet two ``C × H·Nk`` / ``H·Nk × C`` matrices, and the output bias and the
        residual ride on the last GEMM.
        """
        b, nk, c = k.shape
        heads = self.num_heads
        kh = self.k_proj(k).view(b, nk, heads, -1)  # (B, Nk, H, d)
        vh = self.v_proj(v).view(b, nk, heads, -1)
        scale = kh.shape[-1] ** -0.5
        folded = torch.einsum("bjhd,hdc->bchj", kh * scale, self._head_weights(self.q_proj))  # (B, C, H, Nk)
        bias = (torch.einsum("bjhd,hd->bhj", kh * scale, self.q_proj.bias.view(heads, -1))
                if self.q_proj.bias is not None else kh.new_zeros(b, heads, nk))
        w_out = self.out_proj.weight.view(c, heads, -1)  # (C, H, d)
        values = torch.einsum("bjhd,chd->bhjc", vh, w_out).reshape(b, heads * nk, c)  # (B, H·Nk, C)
        if self.out_proj.bias is not None:
            values = values + self.out_proj.bias / heads
        n = q.shape[1]
        if q.shape[0] == 1:  # one image for all prompt sets: the logits of every set from one GEMM
            logits = torch.addmm(bias.reshape(-1), q[0], folded.permute(1, 0, 2, 3).reshape(c, -1))
            attn = _softmax_short_rows(logits.view(n, b, heads, nk)).view(n, b, heads * nk).transpose(0, 1)
        else:
            logits = torch.baddbmm(bias.reshape(b, 1, -1), q, folded.reshape(b, c, -1))  # (B, N, H·Nk)
            attn = _softmax_short_rows(logits.view(b, n, heads, nk)).view(b, n, heads * nk)
        if residual is None:
            return torch.bmm(attn, values)
        return torch.baddbmm(residual, attn, values)


def _softmax_short_rows(x: torch.Tensor) -> torch.Tensor:
    """Softmax over a short last axis (a few prompt tokens), in place on ``x`` when no gradient is needed:
    ``torch.softmax`` spends ~6× longer on rows of 7 values (per-row overhead) than these three passes."""
    if torch.is_grad_enabled() and x.requires_grad:
        return torch.softmax(x, dim=-1)
    x = x.sub_(x.amax(dim=-1, keepdim=True)).exp_()
    return x.div_(x.sum(dim=-1, keepdim=True))


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
        keys_pe = keys + key_pe  # used by both cross-attentions (keys do not change in between)
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, keys_pe, keys))
        queries = self.norm3(queries + self.mlp(queries))
        keys = self.norm4(self.cross_attn_image_to_token(keys_pe, queries + query_pe, queries, residual=keys))
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
