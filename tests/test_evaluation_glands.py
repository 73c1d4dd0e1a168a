"""GlaS object metrics and pixel scores on hand-made label images (values counted by hand)."""

import numpy as np
import pytest

from histosam.evaluation.glands import glas_object_metrics, pixel_scores


def _square(shape, r0, c0, side, value, into=None):
    out = np.zeros(shape, np.int32) if into is None else into
    out[r0:r0 + side, c0:c0 + side] = value
    return out


def test_identical_instances_score_perfectly():
    gt = _square((40, 40), 2, 2, 10, 1)
    _square((40, 40), 20, 20, 8, 2, gt)
    s = glas_object_metrics(gt, gt.copy())
    assert (s.f1, s.dice, s.hausdorff, s.tp, s.fp, s.fn) == (1.0, 1.0, 0.0, 2, 0, 0)


def test_half_coverage_rule_and_false_positive():
    gt = _square((40, 40), 0, 0, 10, 1)  # 100 px
    _square((40, 40), 20, 20, 10, 2, gt)  # 100 px
    pred = np.zeros_like(gt)
    pred[0:10, 0:5] = 7  # covers exactly 50 of gt 1's 100 px: a TP (>= half)
    pred[20:30, 20:24] = 8  # covers 40 of gt 2: not a TP
    pred[35:38, 35:38] = 9  # overlaps nothing: FP
    s = glas_object_metrics(gt, pred, hausdorff=False)
    assert (s.tp, s.fp, s.fn) == (1, 2, 1)
    assert s.f1 == pytest.approx(2 * 1 / (2 * 1 + 2 + 1))
    # object Dice by hand: G side: γ = .5/.5, Dice(G1,S7) = 2·50/150, Dice(G2,S8) = 2·40/140
    g_side = 0.5 * (100 / 150) + 0.5 * (80 / 140)
    # S side: areas 50, 40, 9 (total 99); S9 has no partner: Dice 0
    s_side = 50 / 99 * (100 / 150) + 40 / 99 * (80 / 140)
    assert s.dice == pytest.approx(0.5 * (g_side + s_side))


def test_split_prediction_counts_one_match():
    gt = _square((20, 20), 0, 0, 10, 1)
    pred = np.zeros_like(gt)
    pred[0:10, 0:6] = 1  # 60 % of the gland: TP
    pred[0:10, 6:10] = 2  # 40 %: FP
    s = glas_object_metrics(gt, pred, hausdorff=False)
    assert (s.tp, s.fp, s.fn) == (1, 1, 0)


def test_hausdorff_of_shifted_square():
    gt = _square((30, 30), 5, 5, 10, 1)
    pred = _square((30, 30), 5, 8, 10, 1)  # shifted 3 px right
    s = glas_object_metrics(gt, pred)
    assert s.hausdorff == pytest.approx(3.0)


def test_empty_cases():
    z = np.zeros((8, 8), np.int32)
    assert glas_object_metrics(z, z).f1 == 1.0
    one = _square((8, 8), 1, 1, 3, 1)
    s = glas_object_metrics(one, z)
    assert (s.f1, s.fn, s.hausdorff) == (0.0, 1, float("inf"))


def test_pixel_scores_by_hand():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    pr = np.array([[0, 1, 1, 1], [0, 0, 0, 1]])
    out = pixel_scores(gt, pr, 3)
    # class 1: gt 4 px, pred 4 px, overlap 3 -> Dice 6/8, IoU 3/5; class 0: gt 4, pred 4, overlap 3
    assert out["dice"][1] == pytest.approx(0.75) and out["iou"][1] == pytest.approx(0.6)
    assert np.isnan(out["dice"][2])
    assert out["weighted_dice"] == pytest.approx(0.5 * 0.75 + 0.5 * 0.75)
