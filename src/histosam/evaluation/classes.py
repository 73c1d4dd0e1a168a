"""Typed-nucleus evaluation: HoVer-Net's detection and classification statistics, and the per-instance class vote.

HoVer-Net's rule (Graham et al. 2019, used by CellViT and PathoSAM's comparisons): predicted and true centroids
are paired by Hungarian assignment on their distance, pairs farther apart than ``radius`` (12 px at 0.25 µm/px,
scaled with the pixel size) are dropped. Counts are summed over all images, then

- detection ``F_d = 2·TP / (2·TP + FP + FN)`` (TP paired, FP unpaired predictions, FN unpaired true nuclei);
- per type t: HoVer-Net first keeps only the pairs in which the true **or** the predicted type is t; among them
  ``TP_c`` both of type t, ``TN_c`` neither (so always 0 after that selection; the term stays in the formula as
  HoVer-Net writes it), ``FP_c`` predicted t but true another, ``FN_c`` true t but predicted another; with
  ``FP_d^t`` / ``FN_d^t`` the unpaired predictions / true nuclei of type t:
  ``F_c^t = 2(TP_c+TN_c) / (2(TP_c+TN_c) + 2·FP_c + 2·FN_c + FP_d^t + FN_d^t)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["TypeStats", "pair_centroids", "type_stats", "instance_centroids", "instance_types",
           "vote_classes", "HOVERNET_RADIUS_PX", "hovernet_radius"]

#: HoVer-Net's pairing radius in pixels at 40× (0.25 µm/px)
HOVERNET_RADIUS_PX = 12.0


def hovernet_radius(mpp: float | None) -> float:
    """The pairing radius in pixels of images at ``mpp`` µm/px (12 px at 0.25; ``None``: 12)."""
    return HOVERNET_RADIUS_PX if mpp is None else HOVERNET_RADIUS_PX * 0.25 / float(mpp)


def instance_centroids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids int64 (N,), centroids float64 (N, 2) as (row, col))`` of the non-zero ids of a label image."""
    from scipy import ndimage as ndi

    ids = np.unique(labels)
    ids = ids[ids > 0]
    if ids.size == 0:
        return ids.astype(np.int64), np.zeros((0, 2))
    cents = np.asarray(ndi.center_of_mass(np.ones(labels.shape), labels, ids), np.float64).reshape(-1, 2)
    return ids.astype(np.int64), cents


def instance_types(labels: np.ndarray, class_map: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The majority class of each instance in a per-pixel class map (ground truth: one class per nucleus)."""
    out = np.zeros(len(ids), np.int64)
    flat_l, flat_c = labels.ravel(), class_map.ravel().astype(np.int64)
    m = flat_l > 0
    counts = np.zeros((int(labels.max(initial=0)) + 1, int(flat_c.max(initial=0)) + 1), np.int64)
    np.add.at(counts, (flat_l[m], flat_c[m]), 1)
    for k, i in enumerate(ids):
        out[k] = int(np.argmax(counts[i]))
    return out


def vote_classes(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-instance class from a class-probability map (the class head's softmax).

    Args:
        labels: ``H×W`` instance ids; probs: ``K×H×W`` float probabilities, channel 0 = background.
    Returns:
        ``(ids (N,), classes (N,) in 1..K-1, mean probabilities (N, K))``. The class is the argmax of the mean
        probabilities over the nucleus classes only: an instance AIS found is kept and typed even when the class
        head's background probability is highest there (that probability stays in the returned means, so a caller
        can flag or drop such instances).
    """
    ids = np.unique(labels)
    ids = ids[ids > 0]
    k = probs.shape[0]
    if ids.size == 0:
        return ids.astype(np.int64), np.zeros(0, np.int64), np.zeros((0, k))
    lut = np.zeros(int(labels.max()) + 1, np.int64)
    lut[ids] = np.arange(ids.size)
    m = labels > 0
    idx = lut[labels[m]]
    sums = np.zeros((ids.size, k))
    for c in range(k):
        sums[:, c] = np.bincount(idx, weights=probs[c][m].astype(np.float64), minlength=ids.size)
    means = sums / np.bincount(idx, minlength=ids.size)[:, None]
    classes = 1 + np.argmax(means[:, 1:], axis=1)
    return ids.astype(np.int64), classes.astype(np.int64), means


def pair_centroids(true_xy: np.ndarray, pred_xy: np.ndarray, radius: float) -> np.ndarray:
    """Hungarian pairing of centroids within ``radius``: ``(M, 2)`` int indices ``(true, pred)``."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    if len(true_xy) == 0 or len(pred_xy) == 0:
        return np.zeros((0, 2), np.int64)
    d = cdist(true_xy, pred_xy)
    rows, cols = linear_sum_assignment(d)
    keep = d[rows, cols] <= radius
    return np.stack([rows[keep], cols[keep]], axis=1).astype(np.int64)


@dataclass
class TypeStats:
    """HoVer-Net's counts, summed over images (:meth:`add`), and the F scores from them."""

    classes: tuple[int, ...]
    tp: int = 0
    fp: int = 0
    fn: int = 0
    per_class: dict[int, dict[str, int]] = field(default_factory=dict)

    #: paired nuclei: confusion[i][j] counts true class ``classes[i]`` predicted as ``classes[j]``
    confusion: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))

    def __post_init__(self) -> None:
        for t in self.classes:
            self.per_class.setdefault(t, {"tp_c": 0, "tn_c": 0, "fp_c": 0, "fn_c": 0, "fp_d": 0, "fn_d": 0})
        if self.confusion.size == 0:
            self.confusion = np.zeros((len(self.classes), len(self.classes)), np.int64)

    def add(self, true_xy: np.ndarray, true_types: np.ndarray, pred_xy: np.ndarray, pred_types: np.ndarray,
            radius: float = HOVERNET_RADIUS_PX) -> None:
        """Count one image's nuclei (centroids ``(N, 2)`` in pixels, types ``(N,)``)."""
        pairs = pair_centroids(true_xy, pred_xy, radius)
        paired_t = np.zeros(len(true_xy), bool)
        paired_p = np.zeros(len(pred_xy), bool)
        paired_t[pairs[:, 0]] = True
        paired_p[pairs[:, 1]] = True
        self.tp += len(pairs)
        self.fn += int((~paired_t).sum())
        self.fp += int((~paired_p).sum())
        tt, pt = true_types[pairs[:, 0]], pred_types[pairs[:, 1]]
        index = {t: i for i, t in enumerate(self.classes)}
        for a, b in zip(tt.tolist(), pt.tolist()):
            if a in index and b in index:
                self.confusion[index[a], index[b]] += 1
        for t, c in self.per_class.items():
            sel = (tt == t) | (pt == t)  # HoVer-Net's type samples: pairs involving t (TN is then always 0)
            c["tp_c"] += int(((tt == t) & (pt == t)).sum())
            c["tn_c"] += int(((tt[sel] != t) & (pt[sel] != t)).sum())
            c["fp_c"] += int(((tt != t) & (pt == t)).sum())
            c["fn_c"] += int(((tt == t) & (pt != t)).sum())
            c["fp_d"] += int((pred_types[~paired_p] == t).sum())
            c["fn_d"] += int((true_types[~paired_t] == t).sum())

    @property
    def f_d(self) -> float:
        den = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / den if den else float("nan")

    def f_c(self, t: int) -> float:
        c = self.per_class[t]
        num = 2 * (c["tp_c"] + c["tn_c"])
        den = num + 2 * c["fp_c"] + 2 * c["fn_c"] + c["fp_d"] + c["fn_d"]
        return num / den if den else float("nan")


def type_stats(true_labels: list[np.ndarray], true_classes: list[np.ndarray], pred_labels: list[np.ndarray],
               pred_types: list[dict[int, int]], classes: tuple[int, ...], radius: float = HOVERNET_RADIUS_PX
               ) -> TypeStats:
    """HoVer-Net statistics over images: true instance labels + per-pixel class maps, predicted labels + a
    ``{id: class}`` per image."""
    stats = TypeStats(tuple(classes))
    for tl, tc, pl, ptypes in zip(true_labels, true_classes, pred_labels, pred_types):
        t_ids, t_xy = instance_centroids(tl)
        p_ids, p_xy = instance_centroids(pl)
        stats.add(t_xy, instance_types(tl, tc, t_ids), p_xy, np.array([ptypes.get(int(i), 0) for i in p_ids]),
                  radius)
    return stats
