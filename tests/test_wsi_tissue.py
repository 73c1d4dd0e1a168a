"""Tissue detection: pen marks, empty glass, synthetic slides, real reference masks."""

from __future__ import annotations

import contextlib
import pathlib

import numpy as np
import pytest
from PIL import Image

from histosam.wsi.reader import open_slide
from histosam.wsi.synthetic import default_patches, write_synthetic_slide
from histosam.wsi.tissue import TissueMask, detect_tissue, detect_tissue_rgb, iou

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wsi"


def _ellipse(h, w, cy, cx, ry, rx):
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def test_pen_marks_and_background_removed():
    rng = np.random.default_rng(0)
    h, w = 200, 300
    img = np.full((h, w, 3), 240, np.uint8) + rng.integers(0, 6, (h, w, 3), dtype=np.uint8)
    tissue = _ellipse(h, w, 100, 100, 60, 70)
    img[tissue] = (215, 140, 190)
    img[tissue & (rng.random((h, w)) < 0.2)] = (110, 60, 150)  # nuclei speckle
    img[20:30, 180:290] = (40, 60, 200)  # blue pen stroke on glass
    img[150:160, 200:290] = (40, 150, 60)  # green pen
    img[170:185, 220:240] = (20, 20, 20)  # black marker dot
    mask = detect_tissue_rgb(img, mpp=8.0)
    assert iou(mask, tissue) > 0.97
    assert not mask[20:30, 180:290].any() and not mask[150:160, 200:290].any()
    assert not mask[170:185, 220:240].any()


def test_empty_glass_gives_empty_mask():
    rng = np.random.default_rng(1)
    img = np.full((120, 160, 3), 238, np.uint8) + rng.integers(0, 8, (120, 160, 3), dtype=np.uint8)
    assert not detect_tissue_rgb(img, mpp=8.0).any()


def test_small_holes_filled_large_kept():
    img = np.full((200, 200, 3), 245, np.uint8)
    img[20:180, 20:180] = (215, 140, 190)
    img[50:53, 50:53] = 245  # 9 px = 576 µm² hole: filled
    img[90:150, 90:150] = 245  # 3600 px = 0.23 mm² lumen: kept
    mask = detect_tissue_rgb(img, mpp=8.0)
    assert mask[51, 51] and not mask[120, 120] and mask[30, 30]


def test_synthetic_slide_mask_and_fraction(tmp_path):
    path = write_synthetic_slide(tmp_path / "s.tif", 2048, 2048, mpp=0.5, levels=3)
    with open_slide(path) as s:
        tm = detect_tissue(s, mpp=8.0)  # 16 level-0 px per mask pixel
    assert tm.mask.shape == (128, 128) and tm.mpp == 8.0
    truth = np.zeros((128, 128), bool)
    for cx, cy, rx, ry in default_patches(2048, 2048):
        truth |= _ellipse(128, 128, cy / 16 - 0.5, cx / 16 - 0.5, ry / 16, rx / 16)
    assert iou(tm.mask, truth) > 0.95
    # fraction() in a 0.5 µm/px frame: the box around the first patch centre is tissue, a corner is not
    assert tm.fraction(614 - 64, 717 - 64, 128, 128, frame_mpp=0.5) == 1.0
    assert tm.fraction(0, 0, 200, 200, frame_mpp=0.5) == 0.0
    assert tm.area_mm2 == pytest.approx(truth.sum() * 0.008**2, rel=0.05)
    out = tm.save_png(tmp_path / "mask.png")
    back = np.array(Image.open(out))
    assert back.dtype == np.uint8 and set(np.unique(back)) <= {0, 255}
    np.testing.assert_array_equal(back > 0, tm.mask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.png", "s.tif"]


def test_iou_resizes():
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((2, 2), bool)
    b[0] = True
    assert iou(a, b) == 1.0
    assert iou(a, ~b) == 0.0
    assert TissueMask(a, 2.0).area_mm2 == pytest.approx(8 * 4e-6)


@pytest.mark.data
@pytest.mark.skipif(not SHARED.exists(), reason="shared data absent")
@pytest.mark.parametrize(
    "name,min_iou",
    [("CMU-1-Small-Region", 0.75), ("TCGA-CR-7395-01A-01-TS1", 0.88)],
)
def test_real_reference_masks(name, min_iou):
    with pytest.warns() if name.startswith("TCGA") else contextlib.nullcontext():
        s = open_slide(SHARED / f"{name}.svs")
    ref = np.array(Image.open(SHARED / f"{name}_tissue_mask_histolab.png")) > 0
    tm = detect_tissue(s, mpp=8.0)
    s.close()
    assert iou(ref, tm.mask) >= min_iou

