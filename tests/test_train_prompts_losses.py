"""Prompt simulation (regions, boxes, corrections) and hand-checked losses."""

import numpy as np
import pytest
import torch

from histosam.train.losses import dice_loss, dice_loss_per_channel, distance_loss, sam_loss, true_iou
from histosam.train.prompts import (
    boxes_from_masks,
    correction_points,
    prompt_kind,
    random_points,
    sample_batch_objects,
    sample_object_ids,
    to_input_frame,
)


def masks_fixture():
    m = np.zeros((2, 20, 30), bool)
    m[0, 2:6, 3:10] = True  # rows 2..5, cols 3..9
    m[1, 10:20, 20:30] = True  # touches bottom/right border
    return m


def test_prompt_schedule_and_object_sampling():
    assert prompt_kind(0) == ("point", True) and prompt_kind(1) == ("box", False)
    assert prompt_kind(4)[0] == "point"
    inst = np.zeros((2, 8, 8), np.int64)
    inst[0, 0, :5] = [1, 2, 3, 4, 5]
    inst[1, 0, :3] = [4, 7, 9]
    rng = np.random.default_rng(0)
    ids = sample_object_ids(inst[0], 3, rng)
    assert len(ids) == 3 and np.all(np.diff(ids) > 0) and set(ids) <= {1, 2, 3, 4, 5}
    assert list(sample_object_ids(inst[1], 10, rng)) == [4, 7, 9]
    batch = sample_batch_objects(inst, 4, rng)
    assert [len(b) for b in batch] == [3, 3]


def test_random_points_inside_masks():
    m = masks_fixture()
    rng = np.random.default_rng(1)
    for _ in range(50):
        p = random_points(m, rng)
        assert p.shape == (2, 1, 2) and p.dtype == np.float32
        for i in range(2):
            x, y = p[i, 0]
            assert m[i, int(y), int(x)]
    with pytest.raises(ValueError):
        random_points(np.zeros((1, 4, 4), bool), rng)


def test_boxes_exact_and_jittered():
    m = masks_fixture()
    np.testing.assert_array_equal(boxes_from_masks(m), [[3, 2, 10, 6], [20, 10, 30, 20]])
    rng = np.random.default_rng(0)
    for _ in range(30):
        b = boxes_from_masks(m, rng, 0.2)
        # never shrinks, at most round(0.2 * side) outward, clipped
        assert (b[:, :2] <= [[3, 2], [20, 10]]).all() and (b[:, 2:] >= [[10, 6], [30, 20]]).all()
        assert b[0, 0] >= 3 - 1 and b[0, 2] <= 10 + 1 and b[1, 2] == 30 and b[1, 3] == 20
    big = np.zeros((1, 200, 200), bool)
    big[0, 50:150, 50:150] = True
    bb = np.stack([boxes_from_masks(big, rng, 0.025)[0] for _ in range(200)])
    assert bb[:, 0].min() >= 47 and bb[:, 2].max() <= 153 and (bb[:, 0] < 50).any()


def test_correction_points_regions_and_fallbacks():
    gt = np.zeros((3, 20, 20), bool)
    pred = np.zeros((3, 20, 20), bool)
    gt[0, 5:10, 5:10] = True
    pred[0, 7:12, 7:12] = True  # FN and FP exist
    gt[1, 5:10, 5:10] = True
    pred[1, 5:10, 5:10] = True  # perfect: positive from overlap, negative from the 3-px ring
    gt[2, 0:20, 0:20] = True
    gt[2, 0, 0] = False
    pred[2] = gt[2]  # ring is empty except (0, 0): negative must land there
    rng = np.random.default_rng(0)
    for _ in range(30):
        c, lab = correction_points(gt, pred, rng)
        assert c.shape == (3, 2, 2) and lab.tolist() == [[1, 0]] * 3
        (px, py), (nx, ny) = c[0]
        assert gt[0, int(py), int(px)] and not pred[0, int(py), int(px)]
        assert pred[0, int(ny), int(nx)] and not gt[0, int(ny), int(nx)]
        (px, py), (nx, ny) = c[1]
        assert gt[1, int(py), int(px)]
        assert not gt[1, int(ny), int(nx)] and 2 <= nx <= 12 and 2 <= ny <= 12
        assert tuple(c[2, 1]) == (0.0, 0.0)
    np.testing.assert_allclose(to_input_frame(np.array([[10.0, 4.0]]), (512, 256), 1024), [[20.0, 8.0]])


def test_dice_hand_checked():
    x = torch.tensor([[[[1.0, 0.5], [0.0, 0.0]]]])
    y = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    # 1 - 2*(1 + 0.5) / ((1 + 0.25) + 2) = 1 - 3/3.25
    assert dice_loss(x, y).item() == pytest.approx(1 - 3 / 3.25)
    z = torch.zeros(1, 2, 2, 2)
    assert dice_loss_per_channel(z, z).tolist() == [1.0, 1.0]  # eps clamp: no NaN


def test_sam_loss_min_over_outputs_and_iou():
    t = torch.zeros(2, 1, 4, 4)
    t[0, 0, :2] = 1
    t[1, 0, 2:] = 1
    big = 20.0
    logits = torch.full((2, 3, 4, 4), -big)
    logits[0, 1, :2] = big  # output 1 is perfect for object 0
    logits[1, 2, 2:] = big  # output 2 perfect for object 1
    iou_pred = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    loss, ml, il = sam_loss(logits, iou_pred, t)
    assert ml.item() == pytest.approx(0.0, abs=1e-6)
    assert il.item() == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(true_iou(torch.sigmoid(logits), t).numpy(), iou_pred.numpy(), atol=1e-6)
    loss, ml, il = sam_loss(logits, torch.full((2, 3), 0.5), t)
    assert il.item() == pytest.approx(0.25, abs=1e-6) and loss.item() == pytest.approx(ml.item() + 0.25)
    # single output: no min available -> per-object Dice of all-background prediction = 1
    loss1, ml1, _ = sam_loss(torch.full((2, 1, 4, 4), -big), torch.zeros(2, 1), t)
    assert ml1.item() == pytest.approx(1.0, abs=1e-6)


def test_distance_loss_masks_background_distances():
    tgt = torch.ones(1, 3, 2, 2)
    tgt[0, 0] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    tgt[0, 1, 0, 0] = 0.5
    tgt[0, 2, 0, 0] = 0.25
    pred = tgt.clone()
    pred[0, 1:, 1:, :] = 0.0  # wrong only on the background: ignored for distance channels
    assert distance_loss(pred, tgt).item() == pytest.approx(0.0, abs=1e-6)
    pred2 = tgt.clone()
    pred2[0, 0] = 0.0
    assert distance_loss(pred2, tgt).item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError):
        distance_loss(pred[:, :2], tgt[:, :2])
