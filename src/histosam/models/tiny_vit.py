"""TinyViT-5M image encoder of MobileSAM (``vit_t``), with the parameter names of MobileSAM's checkpoints.

Architecture (input ``B×3×S×S`` normalised, S = 1024 for MobileSAM; every stage keeps a ``B×C×H×W`` or
``B×L×C`` layout as noted):

- ``patch_embed``: two stride-2 3×3 ``conv+BN`` (GELU between): ``S`` → ``S/4``, 64 channels.
- ``layers.0``: 2 MBConv blocks (1×1 expand ×4, depthwise 3×3, 1×1 project, residual), then a patch merging
  (1×1, depthwise 3×3 stride 2, 1×1) to 128 channels at ``S/8``; output tokens ``B×L×C``.
- ``layers.1`` / ``layers.2`` / ``layers.3``: TinyViT blocks (windowed attention with learned relative
  position biases → residual → depthwise 3×3 ``local_conv`` → residual MLP) with dims 128/160/320, heads
  4/5/10, windows 7/14/7. ``layers.1`` merges to ``S/16``; ``layers.2`` merges to 320 channels *without*
  striding (MobileSAM keeps ``S/16`` for the last stage).
- ``neck``: 1×1 conv → LayerNorm2d → 3×3 conv → LayerNorm2d, giving ``B×256×S/16×S/16`` (64×64 for 1024).
- ``norm_head`` / ``head``: the ImageNet classifier of TinyViT, unused, kept so that checkpoints load strictly.

Faithful details: windows are zero-padded at the bottom/right *before* attention (padded tokens take part in
attention; they pass through the attention LayerNorm), q/k/v are interleaved per head in ``qkv``, and the
attention bias of a window position pair is indexed by the absolute offset ``(|dy|, |dx|)``. The index table
``attention_bias_idxs`` is a non-persistent buffer, as in MobileSAM (its checkpoints do not store it; the loader
drops it when a file does).

Parity: ``tests/test_parity_mobile_sam.py`` compares histosam on random weights in MobileSAM's checkpoint layout
with MobileSAM's stack (the TinyViT that ultralytics ships with MobileSAM's parameter names, inside
segment-anything's predictor): exact fp32 embeddings within 2e-6 of their scale, identical point/box masks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from histosam.errors import ParameterError
from histosam.models.common import LayerNorm2d
from histosam.models.fused_conv import FoldedConv
from histosam.models.fused_linear import linear
from histosam.models.heads import instance_head, sam_prompt_heads
from histosam.models.registry import register

#: TinyViT-5M as built by MobileSAM's ``build_sam_vit_t``
VIT_T_CONFIG: dict[str, Any] = dict(embed_dims=(64, 128, 160, 320), depths=(2, 2, 6, 2), num_heads=(2, 4, 5, 10),
                                    window_sizes=(7, 7, 14, 7), mlp_ratio=4.0, mbconv_expand_ratio=4.0,
                                    num_classes=1000)


class ConvBN(nn.Sequential):
    """``Conv2d`` without bias (key ``c``) followed by ``BatchNorm2d`` (key ``bn``), optionally a GELU.

    CPU inference runs it as one oneDNN convolution (:mod:`histosam.models.fused_conv`)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 bn_weight: float = 1.0) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))
        nn.init.constant_(self.bn.weight, bn_weight)
        nn.init.zeros_(self.bn.bias)
        self._fused = FoldedConv()

    def forward(self, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
        out = self._fused(self, self.c, self.bn, gelu, x)
        if out is not None:
            return out
        x = self.bn(self.c(x))
        return F.gelu(x) if gelu else x


class PatchEmbed(nn.Module):
    """``B×3×S×S`` → ``B×dim×S/4×S/4`` (keys ``seq.0``, ``seq.2``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(ConvBN(3, dim // 2, 3, 2), nn.GELU(), ConvBN(dim // 2, dim, 3, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq[2](self.seq[0](x, gelu=True))


class MBConv(nn.Module):
    """Inverted residual on ``B×C×H×W``: 1×1 expand, depthwise 3×3, 1×1 project, add input, GELU."""

    def __init__(self, dim: int, expand: float) -> None:
        super().__init__()
        hidden = int(dim * expand)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim, bn_weight=0.0)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x, gelu=True), gelu=True)
        return self.act(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """Tokens ``B×L×C`` (or ``B×C×H×W``) → ``B×L'×C'``: 1×1, depthwise 3×3 (stride 2 or 1), 1×1."""

    def __init__(self, resolution: tuple[int, int], dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            h, w = self.resolution
            x = x.transpose(1, 2).reshape(x.shape[0], -1, h, w)
        x = self.conv2(self.conv1(x, gelu=True), gelu=True)
        return self.conv3(x).flatten(2).transpose(1, 2)


def bias_index(window: int) -> torch.Tensor:
    """``N×N`` (N = window²) index of the relative-position bias for each query/key pair of a window.

    Offsets ``(|dy|, |dx|)`` are numbered in order of first appearance when pairs are scanned row-major
    (MobileSAM's enumeration), which for a square window is ``|dy| * window + |dx|``.
    """
    yy, xx = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    yy, xx = yy.flatten(), xx.flatten()
    return (yy[:, None] - yy[None, :]).abs() * window + (xx[:, None] - xx[None, :]).abs()


class Attention(nn.Module):
    """Multi-head attention over ``B×N×C`` tokens of one window, with a learned bias per offset and head."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        self.register_buffer("attention_bias_idxs", bias_index(window), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = linear(self.qkv, self.norm(x)).view(b, n, self.num_heads, 3 * self.head_dim)  # per head: q, k, v
        q, k, v = qkv.permute(0, 2, 1, 3).split(self.head_dim, dim=-1)
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)
        # MobileSAM's order, (q·kᵀ)·scale + bias, written out: scaled_dot_product_attention's CPU path spends
        # as long checking a float mask for -inf as the attention itself takes here
        attn = torch.matmul(q, k.transpose(-2, -1)).mul_(self.head_dim**-0.5).add_(bias)
        out = torch.matmul(attn.softmax(dim=-1), v)
        return linear(self.proj, out.transpose(1, 2).reshape(b, n, -1))


class Mlp(nn.Module):
    """``LayerNorm → fc1 → GELU → fc2``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(self.fc2, linear(self.fc1, self.norm(x), gelu=True))  # packed + fused on CPU bf16


class TinyViTBlock(nn.Module):
    """Tokens ``B×L×C`` on an ``H×W`` grid: windowed attention, depthwise ``local_conv``, MLP (residuals)."""

    def __init__(self, dim: int, resolution: tuple[int, int], num_heads: int, window: int,
                 mlp_ratio: float) -> None:
        super().__init__()
        self.resolution = resolution
        self.window = window
        self.attn = Attention(dim, num_heads, window)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, 3, groups=dim)

    def _windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, length, c = x.shape
        ws = self.window
        if h == ws and w == ws:
            return self.attn(x)
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        grid = F.pad(x.view(b, h, w, c), (0, 0, 0, pad_r, 0, pad_b))
        nh, nw = (h + pad_b) // ws, (w + pad_r) // ws
        windows = grid.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        out = self.attn(windows).view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, nh * ws, nw * ws, c)
        return out[:, :h, :w].reshape(b, length, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, length, c = x.shape
        x = x + self._windowed_attention(x)
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w)).view(b, c, length).transpose(1, 2)
        return x + self.mlp(x)


class ConvStage(nn.Module):
    """Stage 0: MBConv ``blocks`` on ``B×C×H×W`` then ``downsample`` to tokens."""

    def __init__(self, dim: int, depth: int, expand: float, downsample: PatchMerging) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x)


class AttentionStage(nn.Module):
    """Stages 1–3: TinyViT ``blocks`` on tokens, optional ``downsample``."""

    def __init__(self, dim: int, resolution: tuple[int, int], depth: int, num_heads: int, window: int,
                 mlp_ratio: float, downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TinyViTBlock(dim, resolution, num_heads, window, mlp_ratio)
                                    for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class TinyViTEncoder(nn.Module):
    """MobileSAM's image encoder: ``B×3×S×S`` (normalised, S divisible by 64) → ``B×256×S/16×S/16``.

    Args:
        img_size: input frame side (1024 for MobileSAM; smaller values, e.g. 256, give small test models).
        embed_dims, depths, num_heads, window_sizes, mlp_ratio, mbconv_expand_ratio: TinyViT stage settings.
        num_classes: size of the unused classifier ``head`` (1000 in MobileSAM's checkpoints).
        out_chans: neck channels (256).
    """

    def __init__(self, img_size: int = 1024, embed_dims: tuple[int, ...] = VIT_T_CONFIG["embed_dims"],
                 depths: tuple[int, ...] = VIT_T_CONFIG["depths"], num_heads: tuple[int, ...] = VIT_T_CONFIG[
                     "num_heads"], window_sizes: tuple[int, ...] = VIT_T_CONFIG["window_sizes"],
                 mlp_ratio: float = 4.0, mbconv_expand_ratio: float = 4.0, num_classes: int = 1000,
                 out_chans: int = 256) -> None:
        super().__init__()
        if img_size % 64:
            raise ParameterError(f"img_size must be a multiple of 64, got {img_size}")
        if len(embed_dims) != 4:
            raise ValueError("TinyViT has four stages")
        self.img_size = img_size
        self.patch_embed = PatchEmbed(embed_dims[0])
        side = img_size // 4
        # stage resolutions: S/4, S/8, S/16, S/16 (the last merge keeps the resolution, as MobileSAM)
        sides = [side, side // 2, side // 4, side // 4]
        strides = [2, 2, 1]
        self.layers = nn.ModuleList()
        for i in range(4):
            res = (sides[i], sides[i])
            down = PatchMerging(res, embed_dims[i], embed_dims[i + 1], strides[i]) if i < 3 else None
            if i == 0:
                self.layers.append(ConvStage(embed_dims[0], depths[0], mbconv_expand_ratio, down))
            else:
                self.layers.append(AttentionStage(embed_dims[i], res, depths[i], num_heads[i], window_sizes[i],
                                                  mlp_ratio, down))
        self.norm_head = nn.LayerNorm(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, 1, bias=False), LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False), LayerNorm2d(out_chans),
        )
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B×3×S×S`` → ``B×256×S/16×S/16``."""
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        b, length, c = x.shape
        side = self.img_size // 16
        return self.neck(x.transpose(1, 2).reshape(b, c, side, side))

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(embedding, [])``: no skips, like the ViT encoders."""
        return self.forward(x), []


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


@register("vit_t")
def build_vit_t(instance_decoder: str | None = None, **overrides: Any):
    """MobileSAM (TinyViT-5M encoder + SAM prompt encoder / mask decoder), randomly initialised.

    ``overrides`` go to :class:`TinyViTEncoder` (e.g. ``img_size=256`` for a small test model);
    ``instance_decoder`` is ``None``, ``"unetr"`` or ``"unetr_interp"``.
    """
    from histosam.models.sam import ModelConfig, SegmentAnything

    if instance_decoder not in (None, "unetr", "unetr_interp"):
        raise ParameterError(f"instance decoder {instance_decoder!r} does not fit vit_t (use 'unetr' or "
                             "'unetr_interp')")
    encoder = TinyViTEncoder(**overrides)
    size = encoder.img_size
    prompt, decoder = sam_prompt_heads(size, size // 16)
    config = ModelConfig(architecture="vit_t", name="vit_t", image_size=size, resize_longest_side=True,
                         instance_decoder=instance_decoder, overrides=dict(overrides))
    return SegmentAnything(encoder, prompt, decoder, instance_head(instance_decoder), config)
