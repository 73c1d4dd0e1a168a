"""Exact, vectorised segmentation metrics on label images.

Inputs are label images: integer arrays of any shape (normally ``H×W``), ``0`` = background,
``1..N`` = objects (ids need not be consecutive). Ground truth (``gt``) and prediction (``pred``)
must have the same shape.

Conventions (stated once, used everywhere):

- **No relabelling unless asked.** The ground truth is used as given. Pass ``relabel=True`` to run
  it through connected-component labelling first (``skimage.measure.label``, 8-connectivity in 2-D),
  which is what micro-sam / PathoSAM do before scoring (one GT id in two pieces becomes two objects).
- **Empty images.** Following elf/micro-sam, segmentation accuracy is 0 whenever there is no true
  positive, so an image with empty GT *and* empty prediction scores 0 for every metric here. Pass
  ``empty_score=...`` (e.g. ``1.0`` or ``float("nan")``) to return something else in that case only.
- IoU matrix as in elf ``matching.py``: built from the contingency table, denominators use the full
  object sizes (pixels overlapping background included), then the label-0 row/column is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from histosam.errors import MetricInputError

#: the 10 IoU thresholds of mSA: 0.50, 0.55, ..., 0.95
MSA_THRESHOLDS: np.ndarray = np.arange(0.5, 1.0, 0.05)


def _check_labels(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt, pred = np.asarray(gt), np.asarray(pred)
    for name, a in (("gt", gt), ("pred", pred)):
        if a.dtype == bool:
            continue
        if not np.issubdtype(a.dtype, np.integer):
            raise MetricInputError(f"{name} must be an integer label image, got dtype {a.dtype}")
        if a.size and np.issubdtype(a.dtype, np.signedinteger) and a.min() < 0:
            raise MetricInputError(f"{name} has negative labels")
    if gt.shape != pred.shape:
        raise MetricInputError(f"gt shape {gt.shape} != pred shape {pred.shape}")
    return gt, pred


def relabel_connected(labels: np.ndarray) -> np.ndarray:
    """Connected components of equal label value (8-connectivity in 2-D) -> uint32 ids 1..N."""
    from skimage.measure import label

    return label(np.asarray(labels), background=0).astype(np.uint32)


def _prepare(gt, pred, relabel: bool) -> tuple[np.ndarray, np.ndarray]:
    gt, pred = _check_labels(gt, pred)
    if relabel:
        gt = relabel_connected(gt)
    return gt, pred


def _overlaps(gt: np.ndarray, pred: np.ndarray):
    """Contingency table with label 0 kept: (table[n_g, n_p] int64, gt_ids, pred_ids)."""
    gt_ids, gi = np.unique(gt.ravel(), return_inverse=True)
    pred_ids, pi = np.unique(pred.ravel(), return_inverse=True)
    n_g, n_p = len(gt_ids), len(pred_ids)
    table = np.bincount(gi.ravel() * n_p + pi.ravel(), minlength=n_g * n_p).reshape(n_g, n_p)
    return table, gt_ids, pred_ids


def _iou_parts(gt: np.ndarray, pred: np.ndarray):
    """(iou, gt_ids, pred_ids, intersections, gt_sizes, pred_sizes) without label 0."""
    table, gt_ids, pred_ids = _overlaps(gt, pred)
    size_g = table.sum(axis=1)
    size_p = table.sum(axis=0)
    union = size_g[:, None] + size_p[None, :] - table
    iou = table / np.maximum(union, 1)
    kg, kp = gt_ids != 0, pred_ids != 0
    return iou[kg][:, kp], gt_ids[kg], pred_ids[kp], table[kg][:, kp], size_g[kg], size_p[kp]


def iou_matrix(
    gt: np.ndarray, pred: np.ndarray, *, relabel: bool = False, return_ids: bool = False
):
    """IoU between every GT object (rows) and every predicted object (columns).

    Returns float64 ``(n_gt, n_pred)``; rows/columns follow the sorted non-zero ids. With
    ``return_ids=True`` returns ``(iou, gt_ids, pred_ids, intersections)`` (intersections int64, same
    shape as ``iou``). Object sizes count every pixel of the object, including pixels the other image
    calls background.
    """
    gt, pred = _prepare(gt, pred, relabel)
    iou, gi, pi, inter, _, _ = _iou_parts(gt, pred)
    return (iou, gi, pi, inter) if return_ids else iou


@dataclass(frozen=True)
class MatchResult:
    """Outcome of the optimal one-to-one matching at one IoU threshold.

    ``pairs`` holds ``(gt_id, pred_id, iou)`` of the true positives (matched with IoU >= threshold).
    ``accuracy`` is the segmentation accuracy TP/(TP+FP+FN) (0 if TP == 0, or ``empty_score`` when both
    images are empty).
    """

    threshold: float
    tp: int
    fp: int
    fn: int
    accuracy: float
    pairs: list[tuple[int, int, float]] = field(default_factory=list)

    @property
    def n_true(self) -> int:
        return self.tp + self.fn

    @property
    def n_pred(self) -> int:
        return self.tp + self.fp

    @property
    def precision(self) -> float:
        return self.tp / self.n_pred if self.n_pred else 0.0

    @property
    def recall(self) -> float:
        return self.tp / self.n_true if self.n_true else 0.0


def _match_from_iou(iou, gt_ids, pred_ids, threshold: float, empty_score: float) -> MatchResult:
    n_true, n_pred = iou.shape
    n_matched = min(n_true, n_pred)
    pairs: list[tuple[int, int, float]] = []
    if n_matched > 0 and np.any(iou >= threshold):
        # elf: maximise the number of matches >= t, then (tie-break) their summed IoU
        costs = -(iou >= threshold).astype(np.float64) - iou / (2 * n_matched)
        rows, cols = linear_sum_assignment(costs)
        ok = iou[rows, cols] >= threshold
        pairs = [(int(gt_ids[r]), int(pred_ids[c]), float(iou[r, c])) for r, c in zip(rows[ok], cols[ok])]
    tp = len(pairs)
    fp, fn = n_pred - tp, n_true - tp
    if n_true == 0 and n_pred == 0:
        acc = float(empty_score)
    else:
        acc = tp / (tp + fp + fn) if tp > 0 else 0.0
    return MatchResult(float(threshold), tp, fp, fn, acc, pairs)


def matching(
    gt: np.ndarray,
    pred: np.ndarray,
    threshold: float = 0.5,
    *,
    relabel: bool = False,
    empty_score: float = 0.0,
) -> MatchResult:
    """Optimal one-to-one matching (elf's cost) at one IoU threshold -> :class:`MatchResult`."""
    iou, gi, pi, _ = iou_matrix(gt, pred, relabel=relabel, return_ids=True)
    return _match_from_iou(iou, gi, pi, threshold, empty_score)


def matching_per_threshold(
    gt: np.ndarray,
    pred: np.ndarray,
    thresholds=MSA_THRESHOLDS,
    *,
    relabel: bool = False,
    empty_score: float = 0.0,
) -> list[MatchResult]:
    """:func:`matching` at several thresholds, computing the IoU matrix once."""
    iou, gi, pi, _ = iou_matrix(gt, pred, relabel=relabel, return_ids=True)
    return [_match_from_iou(iou, gi, pi, float(t), empty_score) for t in np.asarray(thresholds)]


def segmentation_accuracy(
    gt: np.ndarray, pred: np.ndarray, threshold: float = 0.5, *, relabel: bool = False,
    empty_score: float = 0.0,
) -> float:
    """SA at one IoU threshold: TP/(TP+FP+FN); 0 when TP == 0 (``empty_score`` if both are empty)."""
    return matching(gt, pred, threshold, relabel=relabel, empty_score=empty_score).accuracy


def segmentation_accuracy_scores(
    gt: np.ndarray, pred: np.ndarray, thresholds=MSA_THRESHOLDS, *, relabel: bool = False,
    empty_score: float = 0.0,
) -> np.ndarray:
    """SA at each threshold (float64 array, default the 10 mSA thresholds; ``[0]`` is SA50)."""
    res = matching_per_threshold(gt, pred, thresholds, relabel=relabel, empty_score=empty_score)
    return np.array([r.accuracy for r in res], dtype=np.float64)


def mean_segmentation_accuracy(
    gt: np.ndarray, pred: np.ndarray, *, relabel: bool = False, empty_score: float = 0.0
) -> float:
    """mSA: mean of SA over IoU thresholds 0.50, 0.55, ..., 0.95 (elf / micro-sam / PathoSAM)."""
    return float(segmentation_accuracy_scores(gt, pred, relabel=relabel, empty_score=empty_score).mean())


# --------------------------------------------------------------------------------------- PQ / AJI


@dataclass(frozen=True)
class PQStats:
    """Counts behind panoptic quality; add them up over images for a dataset-level (PQ+) score."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou_sum: float = 0.0

    def __add__(self, other: PQStats) -> PQStats:
        return PQStats(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn,
                       self.iou_sum + other.iou_sum)

    def scores(self, empty_score: float = 0.0) -> tuple[float, float, float]:
        """``(dq, sq, pq)``; all 0 when TP == 0, ``empty_score`` when there is nothing at all."""
        if self.tp == 0:
            e = float(empty_score) if self.fp == 0 and self.fn == 0 else 0.0
            return e, e, e
        dq = self.tp / (self.tp + 0.5 * self.fp + 0.5 * self.fn)
        sq = self.iou_sum / self.tp
        return dq, sq, dq * sq


def pq_stats(gt: np.ndarray, pred: np.ndarray, *, relabel: bool = False) -> PQStats:
    """TP/FP/FN and summed IoU of the matching at IoU > 0.5 (unique by construction)."""
    iou = iou_matrix(gt, pred, relabel=relabel)
    hit = iou > 0.5
    tp = int(hit.sum())
    return PQStats(tp, iou.shape[1] - tp, iou.shape[0] - tp, float(iou[hit].sum()))


def panoptic_quality(
    gt: np.ndarray, pred: np.ndarray, *, relabel: bool = False, empty_score: float = 0.0
) -> tuple[float, float, float]:
    """``(dq, sq, pq)``: DQ = TP/(TP+FP/2+FN/2), SQ = mean IoU of TPs, PQ = DQ·SQ; match IoU > 0.5."""
    return pq_stats(gt, pred, relabel=relabel).scores(empty_score)


def instance_classes(labels: np.ndarray, class_map: np.ndarray) -> dict[int, int]:
    """Class of every object: the most frequent non-zero class of its pixels (0 if none)."""
    labels, class_map = np.asarray(labels), np.asarray(class_map)
    if labels.shape != class_map.shape:
        raise MetricInputError(f"label shape {labels.shape} != class map shape {class_map.shape}")
    fg = (labels > 0) & (class_map > 0)
    ids, inv = np.unique(labels[fg], return_inverse=True)
    out = {int(i): 0 for i in np.unique(labels[labels > 0])}
    if ids.size == 0:
        return out
    cls = class_map[fg].astype(np.int64)
    n_cls = int(cls.max()) + 1
    counts = np.bincount(inv.ravel() * n_cls + cls, minlength=len(ids) * n_cls).reshape(len(ids), n_cls)
    for i, c in zip(ids, counts.argmax(axis=1)):
        out[int(i)] = int(c)
    return out


def _keep_class(labels: np.ndarray, cls_of: dict[int, int], c: int) -> np.ndarray:
    keep = np.array([i for i, k in cls_of.items() if k == c], dtype=labels.dtype)
    return np.where(np.isin(labels, keep), labels, 0)


def multiclass_pq_stats(
    gt: np.ndarray, gt_class: np.ndarray, pred: np.ndarray, pred_class: np.ndarray,
    classes=None,
) -> dict[int, PQStats]:
    """Per-class :class:`PQStats`: GT and predicted objects restricted to one class at a time.

    ``gt_class`` / ``pred_class`` are per-pixel class maps (same shape as the label images); an object's
    class is its majority class. ``classes`` defaults to every non-zero class seen in either map.
    """
    gt, pred = _check_labels(gt, pred)
    gcls, pcls = instance_classes(gt, gt_class), instance_classes(pred, pred_class)
    if classes is None:
        classes = sorted((set(gcls.values()) | set(pcls.values())) - {0})
    return {int(c): pq_stats(_keep_class(gt, gcls, c), _keep_class(pred, pcls, c)) for c in classes}


def multiclass_pq(
    gt: np.ndarray, gt_class: np.ndarray, pred: np.ndarray, pred_class: np.ndarray, classes=None,
) -> tuple[float, dict[int, float]]:
    """``(mPQ, {class: PQ})`` for one image. Classes absent from both GT and prediction get NaN and are
    left out of the mean (a class predicted but absent from GT scores 0)."""
    stats = multiclass_pq_stats(gt, gt_class, pred, pred_class, classes)
    per = {c: (s.scores()[2] if (s.tp + s.fp + s.fn) else float("nan")) for c, s in stats.items()}
    vals = [v for v in per.values() if not np.isnan(v)]
    return (float(np.mean(vals)) if vals else float("nan")), per


def aggregated_jaccard_index(
    gt: np.ndarray, pred: np.ndarray, *, relabel: bool = False, empty_score: float = 0.0
) -> float:
    """AJI (Kumar et al. 2017): each GT object adds its intersection / union with the predicted object
    of highest IoU (a prediction may serve several GT objects); GT objects with no overlap add their
    area to the union; predicted objects never chosen add their area to the union."""
    gt, pred = _prepare(gt, pred, relabel)
    iou, _, _, inter, size_g, size_p = _iou_parts(gt, pred)
    n_g, n_p = iou.shape
    if n_g == 0 and n_p == 0:
        return float(empty_score)
    if n_g == 0 or n_p == 0:
        return 0.0
    best = iou.argmax(axis=1)
    has = inter[np.arange(n_g), best] > 0
    c = inter[np.arange(n_g), best][has].sum()
    u = (size_g[has] + size_p[best[has]] - inter[np.arange(n_g), best][has]).sum() + size_g[~has].sum()
    used = np.zeros(n_p, bool)
    used[best[has]] = True
    u += size_p[~used].sum()
    return float(c / u) if u else 0.0


# ------------------------------------------------------------------------------------ binary masks


def iou(gt_mask: np.ndarray, pred_mask: np.ndarray, *, empty_score: float = 0.0) -> float:
    """IoU of two binary masks (any non-zero = foreground)."""
    a, b = np.asarray(gt_mask) != 0, np.asarray(pred_mask) != 0
    if a.shape != b.shape:
        raise MetricInputError(f"mask shapes differ: {a.shape} != {b.shape}")
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else float(empty_score)


def dice(gt_mask: np.ndarray, pred_mask: np.ndarray, *, empty_score: float = 0.0) -> float:
    """Dice 2|A∩B|/(|A|+|B|) of two binary masks (any non-zero = foreground)."""
    a, b = np.asarray(gt_mask) != 0, np.asarray(pred_mask) != 0
    if a.shape != b.shape:
        raise MetricInputError(f"mask shapes differ: {a.shape} != {b.shape}")
    denom = np.count_nonzero(a) + np.count_nonzero(b)
    return float(2 * np.count_nonzero(a & b) / denom) if denom else float(empty_score)


def per_class_dice(gt_sem: np.ndarray, pred_sem: np.ndarray, classes=None) -> dict[int, float]:
    """Dice per class of two semantic maps; NaN for a class absent from the GT (as PathoSAM)."""
    gt_sem, pred_sem = np.asarray(gt_sem), np.asarray(pred_sem)
    if gt_sem.shape != pred_sem.shape:
        raise MetricInputError(f"shapes differ: {gt_sem.shape} != {pred_sem.shape}")
    if classes is None:
        classes = sorted(set(np.unique(gt_sem).tolist()) - {0})
    return {int(c): (dice(gt_sem == c, pred_sem == c) if np.any(gt_sem == c) else float("nan"))
            for c in classes}


def weighted_dice(gt_sem: np.ndarray, pred_sem: np.ndarray, weights: dict[int, float] | None = None) -> float:
    """Class-weighted Dice of two semantic maps (0 = background, not scored).

    Default weights are the GT pixel frequency of each class; pass ``weights`` (class -> weight, e.g.
    instance frequencies) to override. Classes absent from the GT are left out.
    """
    per = per_class_dice(gt_sem, pred_sem, classes=None if weights is None else sorted(weights))
    if weights is None:
        counts = np.bincount(np.asarray(gt_sem).ravel().astype(np.int64))
        weights = {c: float(counts[c]) for c in per}
    pairs = [(per[c], weights[c]) for c in per if not np.isnan(per[c]) and weights.get(c, 0) > 0]
    if not pairs:
        return float("nan")
    d, w = np.array(pairs).T
    return float((d * w).sum() / w.sum())
