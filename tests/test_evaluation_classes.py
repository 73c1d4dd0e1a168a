"""Typed-nucleus evaluation against hand-counted cases: HoVer-Net's pairing and F scores, the per-instance vote."""

from __future__ import annotations

import numpy as np
import pytest

from histosam.evaluation.classes import (
    TypeStats,
    hovernet_radius,
    instance_types,
    pair_centroids,
    type_stats,
    vote_classes,
)
from testlib import typed_nano


def test_pairing_radius_and_hungarian():
    true = np.array([[0.0, 0.0], [0.0, 20.0], [50.0, 50.0]])
    pred = np.array([[0.0, 11.0], [0.0, 19.0], [80.0, 80.0]])
    pairs = pair_centroids(true, pred, 12.0)
    # Hungarian: true0-pred0 (11 px) and true1-pred1 (1 px), not true1-pred0; true2/pred2 are 42 px apart
    assert sorted(map(tuple, pairs.tolist())) == [(0, 0), (1, 1)]
    assert len(pair_centroids(true, pred, 10.0)) == 1
    assert hovernet_radius(0.5) == 6.0 and hovernet_radius(None) == 12.0


def test_hovernet_f_scores_hand_counted():
    # 4 true nuclei, 4 predicted; 3 pairs, one unpaired on each side
    true_xy = np.array([[0, 0], [0, 30], [0, 60], [0, 200]], float)
    true_t = np.array([1, 1, 2, 2])
    pred_xy = np.array([[1, 0], [0, 31], [0, 61], [0, 400]], float)
    pred_t = np.array([1, 2, 2, 1])
    s = TypeStats((1, 2))
    s.add(true_xy, true_t, pred_xy, pred_t)
    assert (s.tp, s.fp, s.fn) == (3, 1, 1)
    assert s.f_d == pytest.approx(6 / 8)
    # type 1: pairs (1,1) tp_c, (1,2) fn_c; (2,2) does not involve type 1 (HoVer-Net leaves it out, no TN);
    # unpaired pred of type 1: fp_d=1; unpaired true of type 1: 0
    assert s.per_class[1] == {"tp_c": 1, "tn_c": 0, "fp_c": 0, "fn_c": 1, "fp_d": 1, "fn_d": 0}
    assert s.f_c(1) == pytest.approx(2 / (2 + 2 + 1))
    # type 2: (1,2) fp_c, (2,2) tp_c; unpaired true of type 2: fn_d=1
    assert s.per_class[2] == {"tp_c": 1, "tn_c": 0, "fp_c": 1, "fn_c": 0, "fp_d": 0, "fn_d": 1}
    assert s.f_c(2) == pytest.approx(2 / (2 + 2 + 1))


def test_vote_keeps_background_dominated_instances_typed():
    labels = np.zeros((4, 6), np.int64)
    labels[:, :3] = 1
    labels[:, 3:] = 2
    probs = np.zeros((3, 4, 6))
    probs[0] = 0.2
    probs[1, :, :3], probs[2, :, :3] = 0.7, 0.1
    probs[0, :, 3:], probs[1, :, 3:], probs[2, :, 3:] = 0.6, 0.1, 0.3  # background wins inside instance 2
    ids, classes, means = vote_classes(labels, probs)
    assert ids.tolist() == [1, 2] and classes.tolist() == [1, 2]
    assert means[1, 0] == pytest.approx(0.6)


def test_type_stats_on_label_images():
    tl = np.zeros((40, 40), np.int64)
    tl[2:8, 2:8], tl[20:26, 20:26] = 1, 2
    tc = np.zeros_like(tl)
    tc[tl == 1], tc[tl == 2] = 3, 4
    assert instance_types(tl, tc, np.array([1, 2])).tolist() == [3, 4]
    pl = np.zeros_like(tl)
    pl[3:9, 3:9], pl[30:36, 2:8] = 5, 7
    stats = type_stats([tl], [tc], [pl], [{5: 3, 7: 4}], classes=(1, 2, 3, 4))
    assert (stats.tp, stats.fp, stats.fn) == (1, 1, 1)
    # type 4: the only pair does not involve it; its true and predicted nuclei are both unpaired: 0 / (0 + 1 + 1)
    assert stats.f_c(3) == pytest.approx(1.0) and stats.f_c(4) == pytest.approx(0.0)


def test_evaluate_task_classes_end_to_end(tmp_path, example_image):
    """`histosam evaluate --task classes` on a folder with class maps: per-image and pooled F scores, mPQ and the
    confusion table in the report (the shipped model with an untrained class head, saved in histosam's format)."""
    import tifffile
    import torch
    from PIL import Image

    import histosam
    from histosam.cli.main import main
    from histosam.registry.formats import save_histosam

    torch.manual_seed(0)
    names = ["background", "other", "inflammatory"]
    model = typed_nano(names)
    path = save_histosam(model, tmp_path / "typed.pt")
    data = tmp_path / "data"
    data.mkdir()
    img = np.ascontiguousarray(example_image[:200, :220])
    labels = histosam.segment(img, model=model, mpp=0.5)
    classes = np.where(labels > 0, 1 + (labels % 2), 0).astype(np.uint8)
    Image.fromarray(img).save(data / "a.png")
    tifffile.imwrite(data / "a_label.tif", labels.astype(np.uint16))
    tifffile.imwrite(data / "a_class.tif", classes)
    out = tmp_path / "eval"
    assert main(["evaluate", "--data", str(data), "--task", "classes", "--model", str(path), "--mpp", "0.5",
                 "-o", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "pooled F_d" in report and "F_inflammatory" in report and "Confusion of paired nuclei" in report
    # the prediction is the ground truth's own segmentation: every nucleus pairs
    import csv

    rows = list(csv.DictReader((out / "classes.csv").open()))
    assert float(rows[0]["F_d"]) == pytest.approx(1.0)
