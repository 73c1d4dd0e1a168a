"""SAM's mask decoder: image embedding + prompt tokens → mask logits (4× the embedding size) and IoU scores."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from histosam.models.common import MLP, LayerNorm2d
from histosam.models.heads import MASKS_CONTRACT
from histosam.models.transformer import TwoWayTransformer


class MaskDecoder(nn.Module):
    """Predicts ``num_multimask_outputs + 1`` masks per prompt; parameter names as in Meta's checkpoints."""

    contract = MASKS_CONTRACT

    def __init__(self, transformer_dim: int = 256, transformer: nn.Module | None = None,
                 num_multimask_outputs: int = 3, iou_head_depth: int = 3, iou_head_hidden_dim: int = 256) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer if transformer is not None else TwoWayTransformer(embedding_dim=transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse_prompt_embeddings: torch.Tensor,
                dense_prompt_embeddings: torch.Tensor, multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode masks.

        Args:
            image_embeddings: ``1×C×h×w`` (broadcast to every prompt) or ``B×C×h×w`` (one per prompt).
            image_pe: ``1×C×h×w``.
            sparse_prompt_embeddings: ``B×K×C``; dense_prompt_embeddings: ``B×C×h×w``.
            multimask_output: return the 3 multimask outputs (indices 1..3) instead of the single one (index 0).
        Returns:
            logits ``B×M×4h×4w`` and IoU predictions ``B×M`` (M = 3 or 1).
        """
        masks, iou = self.predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        sl = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sl], iou[:, sl]

    def predict_masks(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                      dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``num_mask_tokens`` masks and IoU predictions (see :meth:`forward`)."""
        hs, src, (h, w) = two_way_pass(self, image_embeddings, image_pe, sparse, dense)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1: 1 + self.num_mask_tokens, :]
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        masks = self._upscaled_masks(src, hyper_in, (h, w))
        return masks, self.iou_prediction_head(iou_token_out)

    def _upscaled_masks(self, src: torch.Tensor, hyper_in: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``output_upscaling`` then the per-mask dot products: image tokens ``B×hw×C`` (row-major), hypernetwork
        outputs ``B×M×C/8`` → logits ``B×M×4h×4w``.

        Each transposed convolution (kernel 2, stride 2) maps one pixel to its own 2×2 block, so it is one GEMM over
        the token-major rows (columns: sub-pixel, channel); the layer norm is per pixel over channels and GELU is
        elementwise, so neither needs the pixels in image order. The 4×4 blocks are put in image order only in the
        final ``B×M`` logits (M ≤ 4 values per pixel instead of C/8 = 32). The same arithmetic as the modules.
        """
        up1, norm, act1, up2, act2 = self.output_upscaling
        b, hw, c = src.shape
        h, w = size
        x = _transposed_conv_rows(up1, src)  # (B, hw·4, C/4): rows (pixel, a, b)
        x = act1(F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps))
        x = act2(_transposed_conv_rows(up2, x))  # (B, hw·16, C/8): rows (pixel, a, b, c, d)
        m = hyper_in.shape[1]
        logits = torch.bmm(hyper_in, x.transpose(1, 2))  # (B, M, hw·16)
        # (y, x, a, b, c, d) → row 4y + 2a + c, column 4x + 2b + d
        logits = logits.view(b, m, h, w, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7)
        return logits.reshape(b, m, 4 * h, 4 * w)


def two_way_pass(decoder: nn.Module, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                 dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """The two-way transformer of a SAM-style decoder (``decoder.iou_token``, ``.mask_tokens``, ``.transformer``):
    output tokens (IoU token, mask tokens) + the sparse prompts attend to the image embedding plus the dense prompt.
    Returns ``(tokens B×(1+M+K)×C, image tokens B'×hw×C (B' = 1 when all prompt sets share one embedding, else B),
    (h, w))``."""
    b = sparse.shape[0]
    out_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([out_tokens.unsqueeze(0).expand(b, -1, -1).to(sparse.dtype), sparse], dim=1)
    if image_embeddings.shape[0] == 1 and (dense.shape[0] == 1 or dense.stride(0) == 0):
        src = image_embeddings + dense[:1]  # the same for every prompt set: the transformer shares it
    else:
        src = image_embeddings if image_embeddings.shape[0] == b else image_embeddings.expand(b, -1, -1, -1)
        src = src + dense
    h, w = src.shape[-2:]
    hs, src = decoder.transformer(src, image_pe, tokens)
    return hs, src, (int(h), int(w))


def _transposed_conv_rows(conv: nn.ConvTranspose2d, rows: torch.Tensor) -> torch.Tensor:
    """A kernel-2 stride-2 transposed convolution on pixel rows ``B×N×C_in`` → ``B×4N×C_out`` (each input row
    followed by its sub-pixels (0,0), (0,1), (1,0), (1,1))."""
    c_out = conv.weight.shape[1]
    weight = conv.weight.permute(2, 3, 1, 0).reshape(4 * c_out, -1)  # rows (a, b, out channel)
    bias = conv.bias.repeat(4) if conv.bias is not None else None
    return F.linear(rows, weight, bias).view(rows.shape[0], -1, c_out)
