"""SAM's ViT image encoder (vit_b / vit_l / vit_h) with a fused attention path.

Input ``B×3×S×S`` float (normalised, padded; S = ``img_size``, 1024 for the official models), output
``B×256×S/16×S/16``. Parameter names match Meta's checkpoints (``image_encoder.*``).

Fast path (``Attention.fused``, the default; exact fp32 mode keeps it, it only reorders float additions): global
attention runs per head in blocks of query rows (bias written first as a K=2 product, ``scale·q·kᵀ`` accumulated
onto it by one GEMM, softmax in place, ``·v``), reading the heads as strided views of the qkv projection and writing
straight into the token-major layout of the output projection; windowed attention projects only the real tokens (a
padded zero token projects to exactly the qkv bias) and folds the bias into one GEMM, in cache-sized chunks of
windows; under autocast the residual stream and layer norms stay in bf16. (On CPU this beat
``scaled_dot_product_attention`` with the bias folded into q/k or passed as a mask: the CPU flash kernel was 2-4×
slower than the explicit product here.) On CUDA, global attention runs as ``scaled_dot_product_attention`` per block
of query rows with the block's bias as the mask (:func:`_attention_blocks_sdpa`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from histosam.models.common import LayerNorm2d, MLPBlock
from histosam.models.fused_linear import linear


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
    size: tuple[int, int], scale: float, fused: bool = True, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax attention with SAM's decomposed relative-position bias.

    Args:
        q, k, v: ``(B', N, d)`` with ``N = H·W`` tokens in row-major order; any strides whose last dimension is
            contiguous (e.g. head views of the qkv projection, no copy needed).
        rel_pos_h, rel_pos_w: ``(2H−1, d)`` / ``(2W−1, d)`` tables.
        size: ``(H, W)``.
        scale: multiplier of ``q·k`` (``d^-0.5``); the bias uses the *unscaled* query, as in SAM.
        fused: the fast path. Grids of at most ``_SMALL_GRID_TOKENS`` tokens (windows) fold the bias into one
            GEMM; larger grids (global attention) run in blocks of heads × whole query rows
            (:func:`_attention_blocks`), so the ``N×N`` logits are never materialised at once.
            ``False``: the reference computation in one piece.
        out: optional ``(B', N, d)`` destination (may be a strided view).
    Returns:
        ``(B', N, d)`` (``out`` when given).
    """
    h, w = size
    bsz, n, d = q.shape
    r_h = get_rel_pos(h, h, rel_pos_h).to(q.dtype)  # (h, kh, d)
    r_w = get_rel_pos(w, w, rel_pos_w).to(q.dtype)  # (w, kw, d)
    if not fused:
        rel_h, rel_w = _rel_bias(q, r_h, r_w, size)
        attn = (q * scale) @ k.transpose(-2, -1)
        attn = attn.view(bsz, h, w, h, w) + rel_h[..., None] + rel_w[..., None, :]
        result = attn.view(bsz, n, n).softmax(dim=-1) @ v
    elif n <= _SMALL_GRID_TOKENS:
        # small token grids (windows): fold the bias into the product, q_aug·k_aug = scale·q·k + rel_h + rel_w,
        # with one-hot row/column codes on the keys (one GEMM instead of a GEMM plus two broadcast adds)
        rel_h, rel_w = _rel_bias(q, r_h, r_w, size)
        rows_idx = torch.arange(h, device=q.device).repeat_interleave(w)
        cols_idx = torch.arange(w, device=q.device).repeat(h)
        onehot = torch.cat([F.one_hot(rows_idx, h), F.one_hot(cols_idx, w)], dim=1).to(k.dtype)  # (N, h + w)
        q_aug = torch.cat([q * scale, rel_h.reshape(bsz, n, h), rel_w.reshape(bsz, n, w)], dim=-1)
        k_aug = torch.cat([k, onehot.expand(bsz, n, h + w)], dim=-1)
        result = _softmax_attention(q_aug, k_aug, v)
    else:
        blocks = _attention_blocks_sdpa if _sdpa_global_attention(q.device) else _attention_blocks
        return blocks(q, k, v, r_h, r_w, size, scale, q.new_empty(q.shape) if out is None else out)
    if out is None:
        return result
    out.copy_(result)
    return out


def _softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q·kᵀ)·v`` for ``(B', N, e)`` q/k and ``(B', N, d)`` v. At CPU inference in chunks of the batch of
    ~1 M logits each (one buffer, softmax in place), which stay in cache between the three steps (the
    windowed attention of a 1024² ViT-B image: 300 windows × heads, 11.5 M logits at once otherwise)."""
    if q.device.type != "cpu" or (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))):
        return torch.bmm(torch.softmax(torch.bmm(q, k.transpose(-2, -1)), dim=-1), v)
    bsz, n, _ = q.shape
    chunk = max(1, min(bsz, _CPU_BLOCK_LOGITS // (n * k.shape[1])))
    result = v.new_empty(bsz, n, v.shape[-1])
    logits = q.new_empty(chunk, n, k.shape[1])
    for b0 in range(0, bsz, chunk):
        b1 = min(bsz, b0 + chunk)
        attn = logits[: b1 - b0]
        torch.bmm(q[b0:b1], k[b0:b1].transpose(-2, -1), out=attn)
        torch.bmm(torch.softmax(attn, dim=-1, out=attn), v[b0:b1], out=result[b0:b1])
    return result


_SMALL_GRID_TOKENS = 1024
# logits per chunk of the windowed attention at CPU inference (2 MB in bf16: ~15 % faster than all 300
# window-heads of a 1024² ViT-B image at once on a 2-core EPYC)
_CPU_BLOCK_LOGITS = 1 << 20
# logits per block of the global attention: on CPU one head × 512 query rows × N keys (~2 M values, 4 MB in bf16)
# keeps the block in cache (~1.4× faster than 16 M values over all heads on a 2-core EPYC); on GPUs all heads at
# once, 16 M values per block (as measured on an H100)
_CPU_BLOCK_QUERIES = 512
_GPU_BLOCK_ELEMENTS = 1 << 24


def _rel_bias(q: torch.Tensor, r_h: torch.Tensor, r_w: torch.Tensor,
              size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column bias terms ``(B', H, W, kh)`` and ``(B', H, W, kw)`` from the unscaled queries."""
    h, w = size
    r_q = q.reshape(q.shape[0], h, w, -1)
    return torch.einsum("bhwc,hkc->bhwk", r_q, r_h), torch.einsum("bhwc,wkc->bhwk", r_q, r_w)


def attention_block_plan(device_type: str, bsz: int, size: tuple[int, int]) -> tuple[int, int]:
    """``(heads, token rows)`` per block of the global attention: one head × ~512 queries on CPU, all heads ×
    ~16 M logits on GPUs."""
    h, w = size
    if device_type == "cpu":
        return 1, max(1, min(h, _CPU_BLOCK_QUERIES // w))
    return bsz, max(1, min(h, _GPU_BLOCK_ELEMENTS // (bsz * w * h * w)))


def _attention_blocks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r_h: torch.Tensor, r_w: torch.Tensor,
                      size: tuple[int, int], scale: float, out: torch.Tensor) -> torch.Tensor:
    """Global attention in blocks of heads × query rows, written into ``out``.

    The reference's arithmetic with one reordering: ``(rel_h + rel_w) + scale·q·kᵀ`` instead of
    ``(scale·q·kᵀ + rel_h) + rel_w`` (fp32 results differ in the last bits only).
    """
    h, w = size
    bsz, n, _ = q.shape
    heads, rows = attention_block_plan(q.device.type, bsz, size)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, r_h, r_w))
    logits = None if grad else q.new_empty(min(heads, bsz), rows * w, n)
    for b0 in range(0, bsz, heads):
        hb = slice(b0, b0 + heads)
        # per head once, not in every row block: kᵀ and v contiguous (bmm would copy a strided operand on each
        # call), the queries scaled
        qb, kt, vb = q[hb], k[hb].transpose(-2, -1).contiguous(), v[hb].contiguous()
        rel_h, rel_w = _rel_bias(qb, r_h, r_w, size)
        q_scaled = qb * scale
        if not grad:  # each query's bias rel_h[kh] + rel_w[kw] as the product [rel_h, 1] · [1; rel_w]
            rows_h, cols_w = _outer_sum_factors(rel_h, rel_w)
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            sl = slice(r0 * w, r1 * w)
            if grad:  # autograd cannot go through out= and the reused buffer
                bias = (rel_h[:, r0:r1, :, :, None] + rel_w[:, r0:r1, :, None, :]).reshape(qb.shape[0], -1, n)
                probs = torch.softmax(torch.baddbmm(bias, q_scaled[:, sl], kt), dim=-1)
            else:  # the bias first, then the GEMM accumulates scale·q·kᵀ onto it, softmax in place
                attn = logits.view(-1)[: qb.shape[0] * (r1 - r0) * w * n].view(qb.shape[0], (r1 - r0) * w, n)
                torch.bmm(rows_h[:, sl].reshape(-1, h, 2), cols_w[:, sl].reshape(-1, 2, w), out=attn.view(-1, h, w))
                attn.baddbmm_(q_scaled[:, sl], kt)
                probs = torch.softmax(attn, dim=-1, out=attn)  # the probabilities stay in the cached block
            out[hb, sl] = torch.bmm(probs, vb)
    return out


def _outer_sum_factors(rel_h: torch.Tensor, rel_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B', H, W, kh)`` and ``(B', H, W, kw)`` bias terms → ``(B', N, kh, 2)`` and ``(B', N, 2, kw)`` factors
    whose batched product is each query's ``kh × kw`` bias ``rel_h[kh] + rel_w[kw]``.

    The products are by one, so the GEMM's single rounding gives exactly ``rel_h + rel_w`` (in bf16 too: fp32
    accumulation, one rounding, as the elementwise add); on CPU it writes the bias ~3× faster than the
    broadcasting add.
    """
    b, h, w, kh = rel_h.shape
    rows_h = torch.stack([rel_h, torch.ones_like(rel_h)], dim=-1).view(b, h * w, kh, 2)
    cols_w = torch.stack([torch.ones_like(rel_w), rel_w], dim=-2).view(b, h * w, 2, rel_w.shape[-1])
    return rows_h, cols_w


def _sdpa_global_attention(device: torch.device) -> bool:
    """Global attention through ``scaled_dot_product_attention`` (with the bias as its mask) on CUDA, where its
    fused kernels avoid the logits' round trips through memory; the explicit product on CPU (faster there)."""
    return device.type == "cuda"


def _attention_blocks_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r_h: torch.Tensor,
                           r_w: torch.Tensor, size: tuple[int, int], scale: float,
                           out: torch.Tensor) -> torch.Tensor:
    """Global attention in blocks of query rows (all heads at once, ~16 M logits per block, see
    :func:`attention_block_plan`), each one ``scaled_dot_product_attention`` call with that block's
    ``rel_h + rel_w`` materialised as the float mask; written into ``out``. Same arguments as
    :func:`_attention_blocks`."""
    h, w = size
    bsz, n, _ = q.shape
    _, rows = attention_block_plan("cuda", bsz, size)
    rel_h, rel_w = _rel_bias(q, r_h, r_w, size)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        sl = slice(r0 * w, r1 * w)
        bias = (rel_h[:, r0:r1, :, :, None] + rel_w[:, r0:r1, :, None, :]).reshape(bsz, (r1 - r0) * w, n)
        out[:, sl] = F.scaled_dot_product_attention(q[:, sl], k, v, attn_mask=bias.to(q.dtype), scale=scale)
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

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: tuple[int, int],
                out: torch.Tensor | None = None) -> torch.Tensor:
        """``(B', N, d)`` queries, keys, values → ``(B', N, d)`` (into ``out`` when given)."""
        if self.use_rel_pos:
            return attention_with_decomposed_rel_pos(q, k, v, self.rel_pos_h, self.rel_pos_w, size, self.scale,
                                                     fused=self.fused, out=out)
        if self.fused:
            result = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            result = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        return result if out is None else out.copy_(result)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        n, heads = h * w, self.num_heads
        qkv = linear(self.qkv, x).view(b, n, 3, heads, c // heads)
        if not self.fused:
            q, k, v = qkv.permute(2, 0, 3, 1, 4).reshape(3, b * heads, n, -1).unbind(0)
            out = self._attend(q, k, v, (h, w))
            return self.proj(out.view(b, heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, c))
        # fast path: each image's heads are strided views of the projection (no q/k/v copies) and the result is
        # written straight into the token-major layout the output projection reads
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, N, d) views
        out = qkv.new_empty(b, n, heads, c // heads)
        for i in range(b):
            self._attend(q[i], k[i], v[i], (h, w), out=out[i].transpose(0, 1))
        return linear(self.proj, out.view(b, h, w, c))

    def forward_windows(self, x: torch.Tensor, window: int) -> torch.Tensor:
        """Windowed attention over ``B×H×W×C`` (fast path; equal to partition → :meth:`forward` → unpartition).

        SAM pads the normalised tokens with zeros before the qkv projection; a zero token projects to exactly
        the qkv bias, so the projection runs on the real tokens only and the padding is filled with the bias.
        Window partition and head split are one copy, and so are head merge and unpartition; the output
        projection runs on the real tokens only.
        """
        b, h, w, c = x.shape
        heads = self.num_heads
        pad_h, pad_w = (window - h % window) % window, (window - w % window) % window
        hp, wp = h + pad_h, w + pad_w
        qkv = linear(self.qkv, x)
        if pad_h or pad_w:
            padded = qkv.new_empty(b, hp, wp, 3 * c)
            padded[:, :h, :w] = qkv
            fill = self.qkv.bias.to(qkv.dtype) if self.qkv.bias is not None else 0.0
            padded[:, h:] = fill
            padded[:, :h, w:] = fill
            qkv = padded
        qkv = qkv.view(b, hp // window, window, wp // window, window, 3, heads, c // heads)
        q, k, v = qkv.permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(3, -1, window * window, c // heads).unbind(0)
        out = self._attend(q, k, v, (window, window))
        out = out.view(b, hp // window, wp // window, heads, window, window, -1)
        out = out.permute(0, 1, 4, 2, 5, 3, 6).reshape(b, hp, wp, c)
        return linear(self.proj, out[:, :h, :w].contiguous() if (pad_h or pad_w) else out)


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
        x = _layer_norm(self.norm1, x)
        if self.window_size > 0 and self.attn.fused:
            x = self.attn.forward_windows(x, self.window_size)
        elif self.window_size > 0:
            size = (x.shape[1], x.shape[2])
            x, padded = window_partition(x, self.window_size)
            x = window_unpartition(self.attn(x), self.window_size, padded, size)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(_layer_norm(self.norm2, x))


def _layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)``, but a bf16/fp16 input under autocast stays in its dtype (statistics in fp32 inside the kernel).

    Autocast runs layer norm in fp32, which costs a cast of the input and of the output (the next linear casts
    back); the result after that cast is the same.
    """
    if x.dtype == torch.float32 or not torch.is_autocast_enabled(x.device.type):
        return norm(x)
    with torch.autocast(x.device.type, enabled=False):
        return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: ``B×3×S×S`` → ``B×S/p×S/p×C`` (channels last)."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # token-major and contiguous whatever the input's memory format (an NCHW input would otherwise leave
        # the whole residual stream strided: every linear copies, every add is slow)
        return self.proj(x).permute(0, 2, 3, 1).contiguous()


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
