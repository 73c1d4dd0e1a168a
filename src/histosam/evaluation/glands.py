"""Region (gland) metrics: GlaS challenge object metrics and per-class pixel scores.

GlaS (Sirinukunwattana et al. 2017), on instance label images (0 = background):

- **object F1**: a segmented object S is a true positive when it covers at least half of the ground-truth object
  G it overlaps most (``|S ∩ G| / |G| ≥ 0.5``); each G is matched at most once (such an S is unique: two
  disjoint objects cannot both cover more than half of G); FP = the other segmented objects, FN = ground-truth
  objects without a match.
- **object Dice**: ``½ [Σ_i γ_i Dice(G_i, S*(G_i)) + Σ_j σ_j Dice(G*(S_j), S_j)]`` with ``γ_i = |G_i| / Σ|G|``,
  ``σ_j = |S_j| / Σ|S|``, ``S*(G)`` the segmented object overlapping G most (empty when none: Dice 0) and
  ``G*(S)`` likewise.
- **object Hausdorff**: the same weighting of the Hausdorff distance between matched pairs; an object with no
  overlapping partner is paired with the nearest object of the other set (by Hausdorff distance), as the
  challenge's reference code does.

Empty cases: no ground truth and no prediction → F1 1, Dice 1, Hausdorff 0; one side empty → 0, 0, inf.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

__all__ = ["ObjectScores", "glas_object_metrics", "pixel_scores", "overlap_table"]


@dataclass
class ObjectScores:
    f1: float
    precision: float
    recall: float
    dice: float
    hausdorff: float
    tp: int
    fp: int
    fn: int


def overlap_table(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(ids_a, ids_b, overlap[len(ids_a), len(ids_b)], area_a, area_b)`` of two label images (ids > 0)."""
    ids_a = np.unique(a[a > 0])
    ids_b = np.unique(b[b > 0])
    ia = np.searchsorted(ids_a, a)
    ib = np.searchsorted(ids_b, b)
    both = (a > 0) & (b > 0)
    ov = np.zeros((len(ids_a), len(ids_b)), np.int64)
    np.add.at(ov, (ia[both], ib[both]), 1)
    area_a = np.bincount(ia[a > 0], minlength=len(ids_a))
    area_b = np.bincount(ib[b > 0], minlength=len(ids_b))
    return ids_a, ids_b, ov, area_a, area_b


def _hausdorff(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric Hausdorff distance (pixels) between two non-empty boolean masks (boundary to boundary)."""
    da = ndi.distance_transform_edt(~a)
    db = ndi.distance_transform_edt(~b)
    return float(max(da[b].max(), db[a].max()))


def _weighted_hausdorff(src: np.ndarray, dst: np.ndarray, src_ids, dst_ids, ov, area_src) -> float:
    total = area_src.sum()
    out = 0.0
    for i, sid in enumerate(src_ids):
        a = src == sid
        if ov[i].any():
            j = int(ov[i].argmax())
            d = _hausdorff(a, dst == dst_ids[j])
        else:  # no overlap: the nearest object of the other set
            d = min(_hausdorff(a, dst == t) for t in dst_ids)
        out += area_src[i] / total * d
    return out


def glas_object_metrics(gt: np.ndarray, pred: np.ndarray, hausdorff: bool = True) -> ObjectScores:
    """GlaS object F1 / Dice / Hausdorff of a predicted instance image against the ground truth (module
    docstring). Both ``H×W`` integer arrays, 0 = background."""
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"shapes differ: {gt.shape} vs {pred.shape}")
    g_ids, s_ids, ov, g_area, s_area = overlap_table(gt, pred)
    if not len(g_ids) and not len(s_ids):
        return ObjectScores(1.0, 1.0, 1.0, 1.0, 0.0, 0, 0, 0)
    if not len(g_ids) or not len(s_ids):
        return ObjectScores(0.0, 0.0, 0.0, 0.0, float("inf"), 0, len(s_ids), len(g_ids))
    # F1: segmented object j -> the ground truth it overlaps most; TP when it covers half of it
    best_g = ov.argmax(axis=0)
    covers = ov[best_g, np.arange(len(s_ids))] >= 0.5 * g_area[best_g]
    covers &= ov.max(axis=0) > 0
    matched = set()
    tp = 0
    for j in np.flatnonzero(covers):
        if int(best_g[j]) not in matched:
            matched.add(int(best_g[j]))
            tp += 1
    fp = len(s_ids) - tp
    fn = len(g_ids) - tp
    precision = tp / max(1, tp + fp)
    recall = tp / max(1, tp + fn)
    f1 = 2 * tp / max(1, 2 * tp + fp + fn)
    # object Dice
    best_s_for_g = ov.argmax(axis=1)
    dice_g = np.where(ov.max(axis=1) > 0, 2 * ov[np.arange(len(g_ids)), best_s_for_g]
                      / (g_area + s_area[best_s_for_g]), 0.0)
    dice_s = np.where(ov.max(axis=0) > 0, 2 * ov[best_g, np.arange(len(s_ids))] / (s_area + g_area[best_g]), 0.0)
    dice = 0.5 * (float((g_area / g_area.sum() * dice_g).sum()) + float((s_area / s_area.sum() * dice_s).sum()))
    haus = float("nan")
    if hausdorff:
        haus = 0.5 * (_weighted_hausdorff(gt, pred, g_ids, s_ids, ov, g_area)
                      + _weighted_hausdorff(pred, gt, s_ids, g_ids, ov.T, s_area))
    return ObjectScores(f1, precision, recall, dice, haus, tp, fp, fn)


def pixel_scores(gt_classes: np.ndarray, pred_classes: np.ndarray, n_classes: int) -> dict[str, np.ndarray | float]:
    """Per-class pixel Dice and IoU (``n_classes`` entries; NaN where a class is absent from both) and
    PathoSAM's class-frequency weighted Dice (weights = ground-truth pixel shares)."""
    gt = np.asarray(gt_classes).ravel()
    pr = np.asarray(pred_classes).ravel()
    dice = np.full(n_classes, np.nan)
    iou = np.full(n_classes, np.nan)
    freq = np.zeros(n_classes)
    for c in range(n_classes):
        g, p = gt == c, pr == c
        inter, gs, ps = int((g & p).sum()), int(g.sum()), int(p.sum())
        freq[c] = gs
        if gs + ps:
            dice[c] = 2 * inter / (gs + ps)
            iou[c] = inter / (gs + ps - inter)
    w = freq / max(1, freq.sum())
    weighted = float(np.nansum(w * np.nan_to_num(dice)))
    return {"dice": dice, "iou": iou, "weighted_dice": weighted}
