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


MASK_LOSSES = ("dice", "nfl", "dice+nfl")


def normalized_focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
                          alpha: float | None = None, detach_normalizer: bool = True,
                          eps: float = 1e-12) -> torch.Tensor:
    """Normalized Focal Loss (Sofiiuk et al., RITM, ICIP 2022; the loss Kim et al. train SAM with), per map.

    With ``p_t`` the probability of the true class at pixel ``i`` (``sigmoid(x)`` where the target is 1,
    ``1 − sigmoid(x)`` where it is 0) and ``w_i = (1 − p_t,i)^γ``::

        NFL = −Σ_i w_i · log p_t,i / Σ_i w_i

    i.e. the focal loss with its weights normalised to sum to 1 over each map, so the loss does not fade as the
    prediction gets better (the focal loss' total weight shrinks; NFL's stays 1). As RITM's implementation the
    normaliser ``Σ w`` is treated as a constant in the gradient (``detach_normalizer``), and ``alpha`` (RITM's class
    weight: ``alpha`` on positives, ``1 − alpha`` on negatives inside the sum; RITM's training configs use 0.5,
    which only halves the loss) is off by default.

    Args:
        logits, target: ``N×…`` (same shape; target binary).
    Returns:
        ``N`` losses, one per map (sum over all but the first axis).
    """
    x = logits.float()
    t = target.to(x.dtype)
    log_p = -torch.nn.functional.binary_cross_entropy_with_logits(x, t, reduction="none")  # log p_t
    p_t = log_p.exp()
    w = (1.0 - p_t).clamp(min=0.0) ** gamma
    dims = tuple(range(1, x.dim()))
    norm = w.sum(dim=dims, keepdim=True)
    if detach_normalizer:
        norm = norm.detach()
    if alpha is not None:
        w = w * torch.where(t > 0.5, alpha, 1.0 - alpha)
    return -(w * log_p).sum(dim=dims) / (norm.flatten() + eps)


def mask_loss_per_output(mask_logits: torch.Tensor, target: torch.Tensor, mask_loss: str = "dice",
                         gamma: float = 2.0) -> torch.Tensor:
    """Per-object loss of each output: ``N×C×H×W`` logits vs ``N×1×H×W`` targets -> ``C×N``. ``mask_loss``:
    ``"dice"`` (micro-sam's), ``"nfl"`` (:func:`normalized_focal_loss`, Kim et al.'s) or ``"dice+nfl"``
    (their sum)."""
    if mask_loss not in MASK_LOSSES:
        raise ValueError(f"unknown mask loss {mask_loss!r}; use one of {', '.join(MASK_LOSSES)}")
    prob = torch.sigmoid(mask_logits)
    t = target.to(prob.dtype)
    outs = []
    for c in range(prob.shape[1]):
        loss = prob.new_zeros(prob.shape[0])
        if "dice" in mask_loss:
            loss = loss + dice_loss_per_channel(prob[:, c:c + 1].transpose(0, 1), t.transpose(0, 1))
        if "nfl" in mask_loss:
            loss = loss + normalized_focal_loss(mask_logits[:, c:c + 1], t, gamma)
        outs.append(loss)
    return torch.stack(outs)


def sam_loss(mask_logits: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor, mask_loss: str = "dice",
             gamma: float = 2.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask + IoU loss for the objects of one image.

    Args:
        mask_logits: ``N×C×H×W`` logits at the target's resolution (C = 1 or 3).
        iou_pred: ``N×C`` predicted IoU.
        target: ``N×1×H×W`` binary object masks.
        mask_loss: ``"dice"`` (micro-sam, the default), ``"nfl"`` or ``"dice+nfl"``
            (:func:`mask_loss_per_output`); gamma: the NFL's focusing exponent.

    Returns:
        ``(loss, mask_loss, iou_loss)``: mask loss = mean over objects of the minimum over the C
        outputs of the per-object mask loss (Dice of ``sigmoid(logits)`` by default); iou loss = MSE of
        ``iou_pred`` against the true IoU (no gradient through the target); loss = their sum.
    """
    prob = torch.sigmoid(mask_logits)
    per_output = mask_loss_per_output(mask_logits, target, mask_loss, gamma)  # C×N
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
