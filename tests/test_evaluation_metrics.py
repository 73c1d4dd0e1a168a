"""Metrics on hand-drawn label images with hand-computed expectations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from histosam.errors import HistosamError
from histosam.evaluation import metrics as M


def _two_objects():
    gt = np.zeros((10, 10), np.uint16)
    gt[0:4, 0:4] = 1  # 16 px
    gt[5:9, 5:9] = 2  # 16 px
    pred = np.zeros((10, 10), np.uint32)
    pred[0:4, 0:3] = 7  # 12 px inside gt 1 -> IoU 12/16
    pred[6:9, 6:9] = 3  # 9 px inside gt 2 -> IoU 9/16
    pred[0, 9] = 5  # 1 px false positive
    return gt, pred


def test_iou_matrix_uses_full_object_sizes():
    gt = np.zeros((4, 4), np.uint8)
    gt[0, :] = 1  # 4 px
    pred = np.zeros((4, 4), np.uint8)
    pred[0, :2] = 2
    pred[1, :] = 2  # 6 px, 2 overlap gt 1, 4 on background
    iou, gi, pi, inter = M.iou_matrix(gt, pred, return_ids=True)
    assert gi.tolist() == [1] and pi.tolist() == [2]
    assert inter.tolist() == [[2]]
    assert iou[0, 0] == pytest.approx(2 / (4 + 6 - 2))


def test_matching_counts_exact():
    gt, pred = _two_objects()
    np.testing.assert_allclose(M.iou_matrix(gt, pred), [[0, 0, 0.75], [0.5625, 0, 0]])
    r = M.matching(gt, pred, 0.5)
    assert (r.tp, r.fp, r.fn) == (2, 1, 0)
    assert sorted(r.pairs) == [(1, 7, 0.75), (2, 3, 0.5625)]
    assert r.accuracy == pytest.approx(2 / 3)
    r6 = M.matching(gt, pred, 0.6)
    assert (r6.tp, r6.fp, r6.fn) == (1, 2, 1)
    assert r6.accuracy == pytest.approx(0.25)
    r8 = M.matching(gt, pred, 0.8)
    assert (r8.tp, r8.fp, r8.fn, r8.accuracy) == (0, 3, 2, 0.0)


def test_msa_hand_computed_including_float_threshold_edge():
    gt, pred = _two_objects()
    # thresholds 0.5, 0.55 -> 2/3; 0.6, 0.65, 0.7 -> 1/4; np.arange gives 0.7500000000000002 > 0.75 -> 0
    expected = (2 * (2 / 3) + 3 * 0.25) / 10
    assert M.mean_segmentation_accuracy(gt, pred) == pytest.approx(expected)
    scores = M.segmentation_accuracy_scores(gt, pred)
    assert scores.shape == (10,) and scores[0] == pytest.approx(2 / 3) and scores[5] == 0.0


def test_empty_conventions():
    z = np.zeros((5, 5), np.uint8)
    one = z.copy()
    one[1:3, 1:3] = 1
    assert M.mean_segmentation_accuracy(z, z) == 0.0
    assert M.mean_segmentation_accuracy(z, z, empty_score=1.0) == 1.0
    assert M.mean_segmentation_accuracy(one, z, empty_score=1.0) == 0.0
    assert M.mean_segmentation_accuracy(z, one, empty_score=1.0) == 0.0
    r = M.matching(one, z)
    assert (r.tp, r.fp, r.fn) == (0, 0, 1)
    assert M.panoptic_quality(z, z) == (0.0, 0.0, 0.0)
    assert M.panoptic_quality(z, z, empty_score=1.0) == (1.0, 1.0, 1.0)
    assert M.aggregated_jaccard_index(z, z) == 0.0
    assert np.isnan(M.aggregated_jaccard_index(z, z, empty_score=float("nan")))
    assert M.dice(z, z) == 0.0 and M.dice(z, z, empty_score=1.0) == 1.0


def test_relabel_splits_disconnected_gt():
    gt = np.zeros((5, 7), np.uint8)
    gt[1:3, 0:2] = 1
    gt[1:3, 5:7] = 1  # same id, two pieces
    pred = np.zeros_like(gt)
    pred[1:3, 0:2] = 1
    assert M.matching(gt, pred).tp == 1  # IoU exactly 4/8 -> matched at >= 0.5
    assert M.matching(gt, pred, 0.55).tp == 0
    r = M.matching(gt, pred, 0.55, relabel=True)
    assert (r.tp, r.fp, r.fn) == (1, 0, 1)


def test_relabel_exact_half_is_matched_at_05():
    gt = np.zeros((2, 4), np.uint8)
    gt[0, :] = 1
    pred = np.zeros_like(gt)
    pred[0, :2] = 1
    assert M.matching(gt, pred, 0.5).tp == 1  # IoU exactly 0.5 counts (>=)


def test_bad_input():
    with pytest.raises(HistosamError):
        M.mean_segmentation_accuracy(np.zeros((3, 3), np.uint8), np.zeros((3, 4), np.uint8))
    with pytest.raises(HistosamError):
        M.mean_segmentation_accuracy(np.zeros((3, 3), np.float32), np.zeros((3, 3), np.uint8))
    with pytest.raises(HistosamError):
        M.iou_matrix(-np.ones((3, 3), np.int32), np.zeros((3, 3), np.int32))


def _brute_force_sa(gt, pred, t):
    """Enumerate every one-to-one matching; TP = max number of pairs with IoU >= t."""
    g_ids = [i for i in np.unique(gt) if i]
    p_ids = [i for i in np.unique(pred) if i]

    def iou(a, b):
        A, B = gt == a, pred == b
        return (A & B).sum() / (A | B).sum()

    best = 0
    k = min(len(g_ids), len(p_ids))
    for perm in itertools.permutations(p_ids, k):
        for sub in itertools.combinations(g_ids, k):
            best = max(best, sum(iou(a, b) >= t for a, b in zip(sub, perm)))
    tot = best + (len(g_ids) - best) + (len(p_ids) - best)
    return best / tot if best else 0.0


@pytest.mark.parametrize("seed", range(6))
def test_msa_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    gt = np.zeros((24, 24), np.uint8)
    pred = np.zeros((24, 24), np.uint8)
    for img, n in ((gt, rng.integers(1, 6)), (pred, rng.integers(1, 6))):
        for k in range(1, n + 1):  # overlapping random boxes, later overwrite earlier
            r, c = rng.integers(0, 18, 2)
            h, w = rng.integers(3, 8, 2)
            img[r : r + h, c : c + w] = k
    # predictions perturbed from GT so that some IoUs are high
    if seed % 2:
        pred = np.roll(gt, 1, axis=seed % 2)
    expected = np.mean([_brute_force_sa(gt, pred, t) for t in M.MSA_THRESHOLDS])
    assert M.mean_segmentation_accuracy(gt, pred) == pytest.approx(expected)


def test_panoptic_quality_hand_computed():
    gt, pred = _two_objects()
    dq, sq, pq = M.panoptic_quality(gt, pred)
    assert dq == pytest.approx(2 / (2 + 0.5 * 1 + 0))
    assert sq == pytest.approx((0.75 + 0.5625) / 2)
    assert pq == pytest.approx(dq * sq)
    s = M.pq_stats(gt, pred) + M.pq_stats(gt, pred)
    assert (s.tp, s.fp, s.fn) == (4, 2, 0)


def test_pq_strictly_above_half():
    gt = np.zeros((2, 4), np.uint8)
    gt[0, :] = 1
    pred = np.zeros_like(gt)
    pred[0, :2] = 1  # IoU exactly 0.5: not a PQ match
    assert M.pq_stats(gt, pred).tp == 0


def test_aji_hand_computed():
    gt, pred = _two_objects()
    # C = 12 + 9; U = 16 + 16 + 1 (unused 1-px prediction)
    assert M.aggregated_jaccard_index(gt, pred) == pytest.approx(21 / 33)
    # a GT object without any overlap adds its area to U
    gt2 = gt.copy()
    gt2[9, 0:4] = 4
    assert M.aggregated_jaccard_index(gt2, pred) == pytest.approx(21 / 37)
    # one prediction covering two GT objects is used by both
    gt3 = np.zeros((2, 4), np.uint8)
    gt3[0, :2], gt3[0, 2:] = 1, 2
    pred3 = np.zeros_like(gt3)
    pred3[0, :] = 1
    assert M.aggregated_jaccard_index(gt3, pred3) == pytest.approx((2 + 2) / (4 + 4))


def test_multiclass_pq():
    gt, pred = _two_objects()
    gcls = np.where(gt == 1, 1, np.where(gt == 2, 2, 0)).astype(np.uint8)
    pcls = np.zeros_like(gcls)
    pcls[pred == 7] = 1
    pcls[pred == 3] = 1  # wrong class for the object matching gt 2
    pcls[pred == 5] = 2
    mpq, per = M.multiclass_pq(gt, gcls, pred, pcls)
    # class 1: gt {1}, pred {7, 3}: TP 1 (0.75), FP 1 -> DQ 1/1.5, SQ .75
    assert per[1] == pytest.approx((1 / 1.5) * 0.75)
    # class 2: gt {2}, pred {5}: no match -> 0
    assert per[2] == 0.0
    assert mpq == pytest.approx(per[1] / 2)
    mpq3, per3 = M.multiclass_pq(gt, gcls, pred, pcls, classes=[1, 2, 3])
    assert np.isnan(per3[3]) and mpq3 == pytest.approx(mpq)


def test_instance_classes_majority():
    lab = np.array([[1, 1, 1, 2]], np.uint8)
    cls = np.array([[3, 3, 1, 0]], np.uint8)
    assert M.instance_classes(lab, cls) == {1: 3, 2: 0}


def test_binary_dice_iou_and_weighted_dice():
    a = np.array([[1, 1, 0, 0]], bool)
    b = np.array([[1, 0, 0, 1]], bool)
    assert M.dice(a, b) == pytest.approx(0.5)
    assert M.iou(a, b) == pytest.approx(1 / 3)
    gt = np.array([[1, 1, 1, 2, 0, 0]], np.uint8)
    pr = np.array([[1, 1, 0, 2, 2, 0]], np.uint8)
    per = M.per_class_dice(gt, pr, classes=[1, 2, 3])
    assert per[1] == pytest.approx(4 / 5) and per[2] == pytest.approx(2 / 3) and np.isnan(per[3])
    assert M.weighted_dice(gt, pr) == pytest.approx((3 * 0.8 + 1 * 2 / 3) / 4)
    assert M.weighted_dice(gt, pr, weights={1: 1.0, 2: 1.0}) == pytest.approx((0.8 + 2 / 3) / 2)
