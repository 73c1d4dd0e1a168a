"""SAM's ViT image encoder (vit_b / vit_l / vit_h) with a fused attention path.

Input ``B×3×S×S`` float (normalised, padded; S = ``img_size``, 1024 for the official models), output
``B×256×S/16×S/16``. Parameter names match Meta's checkpoints (``image_encoder.*``).

Fast path: attention with the decomposed relative-position bias runs in blocks of query rows with in-place bias
and softmax (see :func:`attention_with_decomposed_rel_pos`): the same arithmetic as the reference, less memory
traffic, bounded memory. (On CPU this beat ``scaled_dot_product_attention`` with the bias folded into q/k or
passed as a mask: the CPU flash kernel was 2× slower than the explicit product here.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from histosam.models.common import LayerNorm2d, MLPBlock


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative positional embeddings for all (query, key) offsets along one axis.

    Args:
        q_size, k_size: query and key extents along the axis.
        rel_pos: ``(L, C)`` learned table; linearly resized when ``L != 2·max(q_size, k_size) − 1``.
    Returns:
        ``(q_size, k_size, C)``.
    """
    max_rel_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_rel_dist:
        resized = F.interpolate(rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=max_rel_dist,
                                mode="linear")
        rel_pos = resized.reshape(-1, max_rel_dist).permute(1, 0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]


def attention_with_decomposed_rel_pos(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
    size: tuple[int, int], scale: float, fused: bool = True, chunk_elements: int = 1 << 24,
) -> torch.Tensor:
    """Softmax attention with SAM's decomposed relative-position bias.

    Args:
        q, k, v: ``(B', N, d)`` with ``N = H·W`` tokens in row-major order.
        rel_pos_h, rel_pos_w: ``(2H−1, d)`` / ``(2W−1, d)`` tables.
        size: ``(H, W)``.
        scale: multiplier of ``q·k`` (``d^-0.5``); the bias uses the *unscaled* query, as in SAM.
        fused: the fast path: queries are processed in blocks of whole token rows so that the attention
            logits of one block stay below ``chunk_elements`` values (cache-friendly, bounded memory; the
            ``N×N`` matrix of a global block is never materialised at once), the bias is added in place and
            the softmax runs in place. ``False``: the reference computation in one piece.
    Returns:
        ``(B', N, d)``.
    """
    h, w = size
    bsz, n, d = q.shape
    r_h = get_rel_pos(h, h, rel_pos_h).to(q.dtype)  # (h, kh, d)
    r_w = get_rel_pos(w, w, rel_pos_w).to(q.dtype)  # (w, kw, d)
    r_q = q.reshape(bsz, h, w, d)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, r_h)  # (B', h, w, kh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, r_w)  # (B', h, w, kw)
    if not fused:
        attn = (q * scale) @ k.transpose(-2, -1)
        attn = attn.view(bsz, h, w, h, w) + rel_h[..., None] + rel_w[..., None, :]
        attn = attn.view(bsz, n, n).softmax(dim=-1)
        return attn @ v
    qs = q * scale
    rows = max(1, min(h, chunk_elements // max(1, bsz * w * n)))
    if rows >= h:
        # small token grids (windows): fold the bias into the product, q_aug·k_aug = scale·q·k + rel_h + rel_w,
        # with one-hot row/column codes on the keys (one GEMM instead of a GEMM plus two broadcast adds)
        rows_idx = torch.arange(h, device=q.device).repeat_interleave(w)
        cols_idx = torch.arange(w, device=q.device).repeat(h)
        onehot = torch.cat([F.one_hot(rows_idx, h), F.one_hot(cols_idx, w)], dim=1).to(k.dtype)  # (N, h + w)
        q_aug = torch.cat([qs, rel_h.reshape(bsz, n, h), rel_w.reshape(bsz, n, w)], dim=-1)
        k_aug = torch.cat([k, onehot.expand(bsz, n, h + w)], dim=-1)
        attn = torch.bmm(q_aug, k_aug.transpose(-2, -1))
        return torch.bmm(torch.softmax(attn, dim=-1), v)
    kt = k.transpose(-2, -1).contiguous()  # once, not inside every blocked bmm
    out = torch.empty_like(q)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        sl = slice(r0 * w, r1 * w)
        attn = torch.bmm(qs[:, sl], kt)
        attn.view(bsz, r1 - r0, w, h, w).add_(rel_h[:, r0:r1, :, :, None]).add_(rel_w[:, r0:r1, :, None, :])
        out[:, sl] = torch.bmm(torch.softmax(attn, dim=-1), v)
    return out


class Attention(nn.Module):
    """Multi-head self-attention over a ``B×H×W×C`` token grid with optional relative positions."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, use_rel_pos: bool = False,
                 input_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        self.fused = True
        if use_rel_pos:
            if input_size is None:
                raise ValueError("input_size is needed for relative positional encoding")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * self.num_heads, h * w, -1).unbind(0)
        if self.use_rel_pos:
            out = attention_with_decomposed_rel_pos(q, k, v, self.rel_pos_h, self.rel_pos_w, (h, w), self.scale,
                                                    fused=self.fused)
        elif self.fused:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            out = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        out = out.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
        return self.proj(out)


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``B×H×W×C`` → ``(B·nW)×window×window×C`` with bottom/right zero padding; returns the padded size."""
    b, h, w, c = x.shape
    pad_h, pad_w = (window - h % window) % window, (window - w % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def window_unpartition(windows: torch.Tensor, window: int, padded: tuple[int, int],
                       size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`, cropping the padding away."""
    hp, wp = padded
    h, w = size
    b = windows.shape[0] // (hp * wp // window // window)
    x = windows.view(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :].contiguous() if (hp > h or wp > w) else x


class Block(nn.Module):
    """Pre-norm transformer block with windowed (``window_size > 0``) or global attention."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 use_rel_pos: bool = True, window_size: int = 0, input_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, use_rel_pos,
                              input_size=(window_size, window_size) if window_size > 0 else input_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            size = (x.shape[1], x.shape[2])
            x, padded = window_partition(x, self.window_size)
            x = window_unpartition(self.attn(x), self.window_size, padded, size)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: ``B×3×S×S`` → ``B×S/p×S/p×C`` (channels last)."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class ImageEncoderViT(nn.Module):
    """SAM's ViT image encoder; see the module docstring for shapes."""

    def __init__(self, img_size: int = 1024, patch_size: int = 16, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, out_chans: int = 256, window_size: int = 14,
                 global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, True, True,
                  0 if i in global_attn_indexes else window_size, (grid, grid))
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        pos = self.pos_embed
        if pos.shape[1:3] != x.shape[1:3]:
            pos = F.interpolate(pos.permute(0, 3, 1, 2), size=x.shape[1:3], mode="bicubic",
                                align_corners=False).permute(0, 2, 3, 1)
        x = x + pos
        if torch.is_autocast_enabled(x.device.type):
            # fast path: keep the residual stream in the autocast dtype (bf16) too, so the residual adds, layer
            # norms and window partitions move half the bytes (~10-20 % faster on CPU, cosine 0.99996 to fp32)
            x = x.to(torch.get_autocast_dtype(x.device.type))
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Embedding and high-resolution skips (none for the ViT: the UNETR decoder uses the neck output only)."""
        return self.forward(x), []
