"""Losses of the joint objective (micro-sam ``SamTrainer`` / ``JointSamTrainer``, torch-em losses).

Dice loss as torch-em: per channel ``1 - 2·Σxy / max(Σx² + Σy², eps)`` with ``eps = 1e-7``, sums
over the batch and spatial axes of each channel.
"""

from __future__ import annotations

import torch

EPS = 1e-7


def dice_loss_per_channel(pred: torch.Tensor, target: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Dice loss per channel: ``pred``/``target`` ``B×C×…`` float -> ``C``."""
    x = pred.transpose(0, 1).flatten(1)
    y = target.transpose(0, 1).flatten(1).to(x.dtype)
    num = (x * y).sum(-1)
    den = (x * x).sum(-1) + (y * y).sum(-1)
    return 1.0 - 2.0 * num / den.clamp(min=eps)


def dice_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Dice loss summed over channels (torch-em ``DiceLoss()`` default): scalar."""
    return dice_loss_per_channel(pred, target, eps).sum()


def true_iou(prob: torch.Tensor, target: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """IoU of ``prob > 0.5`` with the boolean ``target``; ``N×C×H×W`` vs ``N×1×H×W`` -> ``N×C``."""
    pm = prob > 0.5
    t = target.bool()
    inter = (pm & t).flatten(2).sum(-1).float()
    union = (pm | t).flatten(2).sum(-1).float()
    return inter / (union + eps)


def sam_loss(mask_logits: torch.Tensor, iou_pred: torch.Tensor,
             target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask + IoU loss for the objects of one image.

    Args:
        mask_logits: ``N×C×H×W`` logits at the target's resolution (C = 1 or 3).
        iou_pred: ``N×C`` predicted IoU.
        target: ``N×1×H×W`` binary object masks.

    Returns:
        ``(loss, mask_loss, iou_loss)``: mask loss = mean over objects of the minimum over the C
        outputs of the per-object Dice loss of ``sigmoid(logits)``; iou loss = MSE of ``iou_pred``
        against the true IoU (no gradient through the target); loss = their sum.
    """
    prob = torch.sigmoid(mask_logits)
    t = target.to(prob.dtype)
    per_output = torch.stack([
        dice_loss_per_channel(prob[:, c:c + 1].transpose(0, 1), t.transpose(0, 1))
        for c in range(prob.shape[1])
    ])  # C×N
    mask_l = per_output.min(dim=0).values.mean()
    with torch.no_grad():
        iou_t = true_iou(prob, target)
    iou_l = torch.nn.functional.mse_loss(iou_pred.float(), iou_t.float())
    return mask_l + iou_l, mask_l, iou_l


def distance_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``DiceBasedDistanceLoss(mask_distances_in_bg=True)``: ``B×3×H×W`` sigmoid maps vs targets.

    Dice(fg, fg_t) + Dice(cd·fg_t, cd_t·fg_t) + Dice(bd·fg_t, bd_t·fg_t).
    """
    if pred.shape != target.shape or pred.shape[1] != 3:
        raise ValueError(f"expected matching B×3×H×W tensors, got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    fg_t = target[:, 0:1]
    loss = dice_loss(pred[:, 0:1], fg_t)
    loss = loss + dice_loss(pred[:, 1:2] * fg_t, target[:, 1:2] * fg_t)
    loss = loss + dice_loss(pred[:, 2:3] * fg_t, target[:, 2:3] * fg_t)
    return loss
