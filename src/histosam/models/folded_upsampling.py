"""Inference-time ``ConvTranspose2d(k=2, s=2) → Conv2d(3×3, padding 1)`` as one convolution on the coarse grid.

Both layers are linear, so their composition is one linear map. Every fine pixel ``(2y+a, 2x+b)`` of the 3×3
convolution reads a 3×3 fine neighbourhood, which the transposed convolution filled from a 2×2 block of coarse
pixels; so the pair equals, for each of the four output parities ``(a, b)``, a 2×2 convolution over the coarse
input. All four run as one 2×2 convolution with ``4·C_out`` output channels over the coarse input zero-padded by
one pixel (output ``(H+1)×(W+1)``; parity ``(a, b)`` is its window ``[a:a+H, b:b+W]``), and one strided copy
interleaves the parities into the ``2H×2W`` result.

Why: in micro-sam's UNETR decoder, ``deconv1..4`` are such pairs (``deconv1``: 256 → 512 channels at 64² → 128²).
The folded convolution costs ``16·C_in·C_out`` multiply-adds per coarse pixel instead of
``4·(9·C_out² + C_in·C_out)``: 4.7× fewer for ``deconv1``, 1.4× fewer for ``deconv2..4``.

Borders: the fine 3×3 convolution pads with zeros, i.e. the transposed convolution's bias is absent outside the
image; coarse zero padding removes the weight terms exactly but not that bias, so the folded bias is the
interior value and the outermost fine rows and columns get a per-channel correction (a 3×3 table: corners,
edges, interior). The same arithmetic up to float reassociation (fp32 within ~1e-6 relative of the two layers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from histosam.models.param_cache import version_key

__all__ = ["fold_transposed_conv3x3", "FoldedUpConv"]


def fold_transposed_conv3x3(up: nn.ConvTranspose2d,
                            conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Folded parameters (fp32) of ``conv(up(x))``.

    Returns:
        weight ``(4·C_out, C_in, 2, 2)``: output channel ``(2a + b)·C_out + o`` is channel ``o`` of parity ``(a, b)``;
        bias ``(4·C_out,)``: the interior bias (``conv.bias`` plus ``up.bias`` through all nine taps);
        table ``(C_out, 3, 3)``: the bias of a fine pixel at the (top | inner | bottom) × (left | inner | right)
        border positions, from which the border corrections are taken.
    """
    w_up = up.weight.detach().float()  # (C_in, C, 2, 2)
    k = conv.weight.detach().float()  # (O, C, 3, 3)
    out_ch = k.shape[0]
    weight = k.new_zeros(2, 2, out_ch, w_up.shape[0], 2, 2)
    for a in range(2):
        for b in range(2):
            for r in range(2):  # tap r of the coarse 2×2 window reads coarse row y + a + r - 1
                for s in range(2):
                    for a2 in range(2):  # ... whose transposed-conv output row 2·(y + a + r - 1) + a2
                        for b2 in range(2):
                            dy, dx = a + 2 * r - 2 + a2, b + 2 * s - 2 + b2  # = fine row 2y + a + dy
                            if -1 <= dy <= 1 and -1 <= dx <= 1:
                                weight[a, b, :, :, r, s] += k[:, :, dy + 1, dx + 1] @ w_up[:, :, a2, b2].T
    up_bias = up.bias.detach().float() if up.bias is not None else k.new_zeros(k.shape[1])
    conv_bias = conv.bias.detach().float() if conv.bias is not None else k.new_zeros(out_ch)
    # a fine pixel's bias is conv.bias + Σ over its in-image taps of k·up.bias: the nine cases are the pixels of
    # a 3×3 image under the same zero-padded convolution
    table = F.conv2d(up_bias.view(1, -1, 1, 1).expand(1, -1, 3, 3), k, conv_bias, padding=1)[0]
    return weight.reshape(4 * out_ch, -1, 2, 2), table[:, 1, 1].repeat(4), table


def _correct_borders(fine: torch.Tensor, table: torch.Tensor) -> None:
    """Add, in place, the difference between each border pixel's bias and the interior bias (``fine``: B×C×H×W)."""
    d = (table - table[:, 1:2, 1:2]).to(fine.dtype)  # (C, 3, 3), zero in the middle
    fine[:, :, 0, :] += d[:, 0, 1, None]
    fine[:, :, -1, :] += d[:, 2, 1, None]
    fine[:, :, :, 0] += d[:, 1, 0, None]
    fine[:, :, :, -1] += d[:, 1, 2, None]
    for i, y in ((0, 0), (2, -1)):  # corners got the row and the column corrections: set them to their own
        for j, x in ((0, 0), (2, -1)):
            fine[:, :, y, x] += d[:, i, j] - d[:, i, 1] - d[:, 1, j]


class FoldedUpConv:
    """The folded parameters of one ``(up, conv)`` pair, cached per dtype and device, rebuilt whenever a parameter
    changes (tensor version counters), and the folded forward."""

    def __init__(self) -> None:
        self._cache: dict = {}

    def _params(self, up: nn.ConvTranspose2d, conv: nn.Conv2d,
                like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        key = (like.dtype, like.device, version_key(up.weight, up.bias, conv.weight, conv.bias))
        if self._cache.get("key") != key:
            weight, bias, table = fold_transposed_conv3x3(up, conv)
            weight = weight.to(like.device, like.dtype).contiguous(memory_format=_memory_format(like))
            self._cache = {"key": key, "params": (weight, bias.to(like.device, like.dtype), table.to(like.device))}
        return self._cache["params"]

    def __call__(self, up: nn.ConvTranspose2d, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        """``conv(up(x))`` for ``x`` ``B×C_in×H×W`` → ``B×C_out×2H×2W`` (``x``'s memory format)."""
        if torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        weight, bias, table = self._params(up, conv, x)
        bsz, _, h, w = x.shape
        out_ch = table.shape[0]
        coarse = F.conv2d(x, weight, bias, padding=1)  # (B, 4·C_out, H+1, W+1): a 2×2 kernel on the padded grid
        fine = torch.empty(bsz, out_ch, 2 * h, 2 * w, dtype=coarse.dtype, device=coarse.device,
                           memory_format=_memory_format(x))
        # element (n, y, a, x, b, o) of the interleave is coarse[n, (2a + b)·C_out + o, y + a, x + b]: an affine
        # index, so one strided view and one copy
        s_n, s_c, s_y, s_x = coarse.stride()
        parities = coarse.as_strided((bsz, h, 2, w, 2, out_ch),
                                     (s_n, s_y, s_y + 2 * out_ch * s_c, s_x, s_x + out_ch * s_c, s_c),
                                     coarse.storage_offset())
        fine.permute(0, 2, 3, 1).view(bsz, h, 2, w, 2, out_ch).copy_(parities)
        _correct_borders(fine, table)
        return fine


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format
