"""Exact values of the decoder training targets on hand-made label images."""

import numpy as np
import pytest

from histosam.train.targets import EPS, distance_targets, object_centres, relabel_instances


def test_square_exact_values():
    labels = np.zeros((8, 8), np.uint16)
    labels[1:6, 1:6] = 7
    seg, t = distance_targets(labels, min_size=10)
    assert seg.dtype == np.uint32 and t.dtype == np.float32 and t.shape == (3, 8, 8)
    assert set(np.unique(seg)) == {0, 1}
    np.testing.assert_array_equal(t[0], (labels > 0).astype(np.float32))
    # centre (3, 3): distance normalised by the corner distance sqrt(8)
    rr, cc = np.indices((8, 8))
    exp_cd = np.sqrt((rr - 3) ** 2 + (cc - 3) ** 2) / (np.sqrt(8) + EPS)
    exp_cd[labels == 0] = 1.0
    np.testing.assert_allclose(t[1], exp_cd, atol=1e-6)
    # boundary distance: ring 1, next ring 0.5, centre 0 (max_bd = 2)
    exp_bd = np.ones((8, 8))
    exp_bd[2:5, 2:5] = 1 / (2 + EPS)
    exp_bd[3, 3] = 0.0
    exp_bd[1:6, 1:6][[0, -1], :] = 2 / (2 + EPS)
    exp_bd[1:6, 1:6][:, [0, -1]] = 2 / (2 + EPS)
    np.testing.assert_allclose(t[2], exp_bd, atol=1e-6)
    assert t[1, 3, 3] == 0.0 and t[2, 3, 3] == 0.0


def test_small_objects_removed_and_relabelled():
    labels = np.zeros((10, 10), np.int32)
    labels[0:3, 0:3] = 5  # 9 px < 10: dropped
    labels[5:10, 5:7] = 9  # 10 px: kept
    seg, t = distance_targets(labels, min_size=10)
    assert seg[0:3, 0:3].max() == 0 and (seg[5:10, 5:7] == 1).all() and seg.max() == 1
    assert (t[0, 0:3, 0:3] == 0).all() and (t[1:, 0:3, 0:3] == 1).all()
    seg0, _ = distance_targets(labels, min_size=0)
    assert seg0.max() == 2


def test_disconnected_id_is_split_and_touching_objects_share_boundary():
    labels = np.zeros((9, 12), np.int32)
    labels[1:4, 1:5] = 1
    labels[6:9, 1:5] = 1  # same id, second component
    seg = relabel_instances(labels, min_size=0)
    assert seg.max() == 2
    # two touching 3x7 rectangles: the shared edge rows are inner boundaries of both
    lab = np.zeros((8, 9), np.int32)
    lab[1:4, 1:8] = 1
    lab[4:7, 1:8] = 2
    seg, t = distance_targets(lab, min_size=0)
    # object 1: every pixel is on a boundary except row 2 cols 2..6 (bd 1), so max_bd = 1
    exp = np.ones((3, 7))
    exp[1, 1:6] = 0.0
    np.testing.assert_allclose(t[2, 1:4, 1:8], exp / (1 + EPS), atol=1e-6)


def test_centroid_outside_object_uses_boundary_argmax():
    # hollow 7x7 square with a 3x3 hole: the centroid (3, 3) lies in the hole. Inner boundaries use
    # 4-neighbours, so only the ring's 4 inner corners (crop (1,1), (1,5), (5,1), (5,5)) are not
    # boundary pixels (bd 1); the first argmax (1, 1) becomes the centre.
    lab = np.zeros((9, 9), np.int32)
    lab[1:8, 1:8] = 1
    lab[3:6, 3:6] = 0
    _, t = distance_targets(lab, min_size=0)
    rr, cc = np.indices((7, 7))
    d = np.sqrt((rr - 1) ** 2 + (cc - 1) ** 2)
    mask = lab[1:8, 1:8] > 0
    exp = d / (d[mask].max() + EPS)
    np.testing.assert_allclose(t[1, 1:8, 1:8][mask], exp[mask], atol=1e-6)
    assert t[1, 4, 4] == 1.0 and t[2, 4, 4] == 1.0
    exp_bd = np.full((7, 7), 1 / (1 + EPS))
    for r, c in [(1, 1), (1, 5), (5, 1), (5, 5)]:
        exp_bd[r, c] = 0.0
    np.testing.assert_allclose(t[2, 1:8, 1:8][mask], exp_bd[mask], atol=1e-6)


def test_centres_round_half_to_even():
    lab = np.zeros((4, 6), np.int32)
    lab[0:2, 0:2] = 1  # centroid (0.5, 0.5) -> (0, 0)
    lab[2:4, 3:5] = 2  # centroid (2.5, 3.5) -> (2, 4)
    np.testing.assert_array_equal(object_centres(lab), [[0, 0], [2, 4]])


def test_empty_and_bad_shape():
    seg, t = distance_targets(np.zeros((5, 5), np.uint8))
    assert seg.max() == 0 and (t[0] == 0).all() and (t[1:] == 1).all()
    with pytest.raises(ValueError):
        distance_targets(np.zeros((2, 5, 5), np.uint8))
