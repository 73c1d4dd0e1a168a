"""Interactive protocols with a fake predictor that follows the Predictor contract exactly."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from histosam.evaluation import protocols as P


def disc(shape, x, y, r):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    return (cc - x) ** 2 + (rr - y) ** 2 <= r * r


class FakePredictor:
    """mask = box (x1, y1 exclusive) ∪ discs(radius) at positive points − discs(neg_radius) at negatives.

    multimask returns radii (r-1, r, r+1) with scores (0.5, 0.9, 0.7), so the best is radius r.
    """

    def __init__(self, radius=5, neg_radius=1):
        self.radius, self.neg_radius = radius, neg_radius
        self.calls = []

    def set_image(self, image):
        self.shape = image.shape[:2]

    def predict(self, points=None, labels=None, box=None, mask_input=None, multimask=False):
        self.calls.append(dict(points=None if points is None else np.array(points), box=box,
                               mask_input=None if mask_input is None else mask_input.shape,
                               multimask=multimask))
        b = len(points) if points is not None else len(box)
        radii = [self.radius - 1, self.radius, self.radius + 1] if multimask else [self.radius]
        masks = np.zeros((b, len(radii), *self.shape), bool)
        for i in range(b):
            for c, r in enumerate(radii):
                m = np.zeros(self.shape, bool)
                if box is not None:
                    x0, y0, x1, y1 = np.asarray(box[i]).astype(int)
                    m[y0:y1, x0:x1] = True
                if points is not None:
                    for (x, y), lab in zip(points[i], labels[i]):
                        if lab == 1:
                            m |= disc(self.shape, x, y, r)
                    for (x, y), lab in zip(points[i], labels[i]):
                        if lab == 0:
                            m &= ~disc(self.shape, x, y, self.neg_radius)
                masks[i, c] = m
        scores = np.array([[0.5, 0.9, 0.7] if multimask else [0.9]] * b, np.float32)
        logits = np.zeros((b, len(radii), 256, 256), np.float32)
        return SimpleNamespace(masks=masks, scores=scores, low_res_logits=logits)


def disc_image(shape=(40, 60), centres=((10, 10), (30, 12), (45, 28)), r=5):
    gt = np.zeros(shape, np.uint32)
    for k, (x, y) in enumerate(centres, start=1):
        gt[disc(shape, x, y, r)] = k
    return np.zeros((*shape, 3), np.uint8), gt


def test_object_centers_and_boxes():
    lab = np.zeros((10, 14), np.uint8)
    lab[2:7, 3:12] = 4
    img, gt = disc_image()
    assert P.object_centers(lab) == {4: (5, 4)}
    assert P.object_centers(gt) == {1: (10, 10), 2: (30, 12), 3: (45, 28)}
    assert P.object_boxes(lab) == {4: (3, 2, 12, 7)}
    assert P.object_centers(np.zeros((3, 3), np.uint8)) == {}


def test_merge_masks_smaller_overwrites():
    big = np.arange(0, 6)
    small = np.array([2, 3])
    out = P.merge_masks((2, 3), {1: small, 2: big})
    assert out.tolist() == [[2, 2, 1], [1, 2, 2]]


def test_correction_point_fallbacks():
    rng = np.random.default_rng(0)
    shape = (12, 12)
    gt = np.zeros(shape, bool)
    gt[4:7, 4:7] = True
    idx = np.flatnonzero(gt)
    for _ in range(20):
        (px, py), (nx, ny) = P.correction_points(idx, idx, (4, 4, 7, 7), shape, rng)
        assert gt[int(py), int(px)]  # no FN -> positive inside the object
        assert not gt[int(ny), int(nx)] and 1 <= nx < 10 and 1 <= ny < 10  # ring of 3 px
    pred = np.zeros(shape, bool)
    pred[4:7, 4:9] = True  # FP = columns 7, 8; FN none
    (px, py), (nx, ny) = P.correction_points(idx, np.flatnonzero(pred), (4, 4, 7, 7), shape, rng)
    assert nx in (7, 8) and 4 <= ny < 7
    (px, py), _ = P.correction_points(idx, np.zeros(0, np.int64), (4, 4, 7, 7), shape, rng)
    assert gt[int(py), int(px)]


def test_point_start_exact_and_seeded():
    img, gt = disc_image()
    fake = FakePredictor(radius=5)
    res = P.iterative_prompting(fake, img, gt, start="point", n_iterations=3, seed=1, keep_predictions=True)
    assert res.n_objects == 3 and len(res.msa) == 3
    assert res.msa[0] == 1.0 and np.array_equal(res.predictions[0] > 0, gt > 0)
    assert len(fake.calls) == 3  # one batched predict per iteration
    assert fake.calls[0]["multimask"] and not fake.calls[1]["multimask"]
    assert fake.calls[0]["points"].shape == (3, 1, 2) and fake.calls[2]["points"].shape == (3, 5, 2)
    np.testing.assert_array_equal(fake.calls[0]["points"][:, 0], [[10, 10], [30, 12], [45, 28]])
    assert res.msa[1] < 1.0  # positive fallback point off-centre grows the disc
    again = P.iterative_prompting(FakePredictor(5), img, gt, n_iterations=3, seed=1, keep_predictions=True)
    assert again.msa == res.msa
    assert all(np.array_equal(a, b) for a, b in zip(again.predictions, res.predictions))
    chunked = P.iterative_prompting(FakePredictor(5), img, gt, n_iterations=3, seed=1, batch_size=2)
    assert chunked.msa == res.msa
    other = [P.iterative_prompting(FakePredictor(5), img, gt, n_iterations=3, seed=s, keep_predictions=True)
             for s in (2, 3)]
    assert any(not np.array_equal(o.predictions[2], res.predictions[2]) for o in other)


def test_box_start_and_mask_feedback():
    img = np.zeros((30, 30, 3), np.uint8)
    gt = np.zeros((30, 30), np.uint32)
    gt[3:9, 4:12] = 1
    gt[15:25, 15:20] = 2
    fake = FakePredictor(radius=0, neg_radius=0)  # discs of radius 0 = single pixels
    res = P.iterative_prompting(fake, img, gt, start="box", n_iterations=2, use_masks=True, seed=0)
    assert res.msa == [1.0, 1.0]
    assert res.sa50 == [1.0, 1.0]
    np.testing.assert_array_equal(fake.calls[0]["box"], [[4, 3, 12, 9], [15, 15, 20, 25]])
    assert fake.calls[0]["points"] is None and fake.calls[0]["mask_input"] is None
    assert fake.calls[1]["points"].shape == (2, 2, 2) and fake.calls[1]["mask_input"] == (2, 1, 256, 256)
    with pytest.raises(ValueError):
        P.iterative_prompting(fake, img, gt, start="scribble")


def test_next_click_exact():
    gt = np.zeros((9, 11), bool)
    gt[2:7, 2:9] = True
    (x, y), lab = P.next_click(gt, np.zeros_like(gt))
    assert (x, y, lab) == (4, 4, 1)  # first pixel at depth 3 in row-major order
    pred = gt.copy()
    pred[0:2, 0:11] = True  # FP strip of 22 px along the top edge (image border = boundary)
    (x, y), lab = P.next_click(gt, pred)
    assert lab == 0 and y in (0, 1)
    assert P.next_click(gt, gt) is None
    # "largest" picks the bigger component, "deepest" the deeper pixel
    g = np.zeros((12, 30), bool)
    g[1:4, 1:29] = True  # FN region 3×28 (depth 2)
    p = np.zeros_like(g)
    p[5:11, 10:16] = True  # FP blob 6×6 (depth 3)
    assert P.next_click(g, p, "largest")[1] == 1
    assert P.next_click(g, p, "deepest")[1] == 0


def test_noc_nof():
    ious = np.array([[0.5, 0.86, 0.95], [0.2, 0.3, 0.81], [0.9, 0.91, 0.92]])
    assert P.noc_per_object(ious, 0.85).tolist() == [2, 3, 1]
    r = P.ClickResult(ious, predict_seconds=0.9, n_clicks=9)
    assert r.noc(0.85) == pytest.approx(2.0) and r.noc(0.9) == pytest.approx((3 + 3 + 1) / 3)
    assert r.nof(0.9) == pytest.approx(1 / 3) and r.nof(0.8) == 0.0
    assert r.spc == pytest.approx(0.1) and r.spc_with_embedding == pytest.approx(0.1)
    assert P.ClickResult(ious, 0.9, 9, embed_seconds=0.9).spc_with_embedding == pytest.approx(0.2)


def test_click_protocol_exact():
    img, gt = disc_image()
    fake = FakePredictor(radius=5)
    res = P.click_protocol(fake, img, gt, max_clicks=3)
    assert res.ious.shape == (3, 3) and np.all(res.ious == 1.0)
    assert res.noc(0.9) == 1.0 and res.nof(0.9) == 0.0 and res.n_clicks == 9
    assert fake.calls[0]["multimask"] and fake.calls[1]["mask_input"] == (3, 1, 256, 256)
    # a long bar needs several radius-2 clicks; IoU must never be re-counted from a stale mask
    bar = np.zeros((10, 30), np.uint32)
    bar[3:8, 2:28] = 1
    res2 = P.click_protocol(FakePredictor(radius=2), np.zeros((10, 30, 3), np.uint8), bar, max_clicks=6)
    assert res2.ious[0, 0] < res2.ious[0, -1]
    assert P.noc_per_object(res2.ious, 0.99)[0] == 6


def test_empty_gt_makes_no_calls():
    img = np.zeros((8, 8, 3), np.uint8)
    gt = np.zeros((8, 8), np.uint32)
    fake = FakePredictor()
    res = P.iterative_prompting(fake, img, gt, n_iterations=2)
    assert res.n_objects == 0 and res.msa == [0.0, 0.0] and fake.calls == []
    clicks = P.click_protocol(fake, img, gt, max_clicks=4)
    assert clicks.ious.shape == (0, 4) and np.isnan(clicks.noc(0.9)) and fake.calls == []
