"""AMG parity with Meta's ``SamAutomaticMaskGenerator`` on identical random weights."""

from __future__ import annotations

import numpy as np
import pytest

from reference_shims import install_torchvision_shim

install_torchvision_shim()
pytest.importorskip("segment_anything")

import histosam  # noqa: E402
from histosam.postprocess.amg import AMGParams, crop_boxes, generate_masks, masks_to_labels, point_grid  # noqa: E402
from reference_models import TINY, reference_sam, save_sam  # noqa: E402


def test_point_grid_and_crop_boxes_match_reference():
    from segment_anything.utils.amg import build_point_grid, generate_crop_boxes

    np.testing.assert_allclose(point_grid(7), build_point_grid(7))
    for layers in (0, 1, 2):
        ours = crop_boxes(300, 460, layers, 512 / 1500)
        ref = generate_crop_boxes((300, 460), layers, 512 / 1500)
        assert ours[0] == ref[0] and ours[1] == ref[1]


@pytest.mark.parametrize("crop_layers", [0, 1])
def test_amg_masks_match_reference(tmp_path, crop_layers):
    from segment_anything import SamAutomaticMaskGenerator

    ref = reference_sam(TINY, seed=2)
    model = histosam.load_model(save_sam(ref, tmp_path / "tiny.pth"), device="cpu")
    rng = np.random.default_rng(0)
    img = np.kron(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), np.ones((16, 16, 1), np.uint8))
    kw = dict(points_per_side=6, points_per_batch=16, pred_iou_thresh=0.0, stability_score_thresh=0.0,
              box_nms_thresh=0.7, crop_n_layers=crop_layers)
    ref_masks = SamAutomaticMaskGenerator(ref, output_mode="binary_mask", **kw).generate(img)
    ours = generate_masks(histosam.Predictor(model, precision="fp32"), img, AMGParams(**kw))
    assert len(ref_masks) > 0
    assert len(ours) == len(ref_masks)
    ref_sorted = sorted(ref_masks, key=lambda r: (-r["predicted_iou"], r["bbox"]))
    our_sorted = sorted(ours, key=lambda r: (-r.predicted_iou, r.bbox))
    for r, o in zip(ref_sorted, our_sorted):
        assert abs(r["predicted_iou"] - o.predicted_iou) < 1e-4
        assert abs(r["stability_score"] - o.stability_score) < 1e-3
        inter = np.logical_and(r["segmentation"], o.segmentation).sum()
        union = np.logical_or(r["segmentation"], o.segmentation).sum()
        assert inter / max(union, 1) >= 0.99
        assert r["crop_box"] == o.crop_box


def test_masks_to_labels_smaller_overwrite_larger():
    from histosam.postprocess.amg import MaskRecord

    big = np.zeros((10, 10), bool)
    big[1:9, 1:9] = True
    small = np.zeros((10, 10), bool)
    small[3:5, 3:5] = True
    recs = [MaskRecord(small, [3, 3, 2, 2], 4, 0.9, 0.9, [3, 3]), MaskRecord(big, [1, 1, 8, 8], 64, 0.9, 0.9, [1, 1])]
    labels = masks_to_labels(recs, (10, 10))
    assert labels.dtype == np.uint32
    assert labels[0, 0] == 0 and labels[1, 1] == 1 and labels[3, 3] == 2
    assert set(np.unique(labels)) == {0, 1, 2}
