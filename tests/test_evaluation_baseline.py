"""Classical baseline on a synthetic H&E-like image with known nuclei."""

from __future__ import annotations

import numpy as np
import pytest

from histosam.errors import HistosamError
from histosam.evaluation.baseline import classical_nuclei
from histosam.evaluation.metrics import matching


def _synthetic(n_side: int = 4, radius: int = 10, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    rr, cc = np.mgrid[:size, :size]
    gt = np.zeros((size, size), np.uint32)
    k = 0
    for i in range(n_side):
        for j in range(n_side):
            k += 1
            cy, cx = 16 + 32 * i, 16 + 32 * j
            gt[(rr - cy) ** 2 + (cc - cx) ** 2 <= radius**2] = k
    img = np.empty((size, size, 3), np.uint8)
    img[:] = (235, 200, 220)  # pink eosin background
    img[gt > 0] = (70, 50, 140)  # blue-purple hematoxylin nuclei
    return img, gt


def test_finds_every_synthetic_nucleus():
    img, gt = _synthetic()
    pred = classical_nuclei(img, pixel_size_um=0.25)
    assert pred.dtype == np.uint32 and pred.shape == gt.shape
    r = matching(gt, pred, 0.8)
    assert (r.tp, r.fp, r.fn) == (16, 0, 0)


def test_min_size_filter_and_blank_image():
    img, gt = _synthetic(radius=3)  # 29 px discs = 1.8 µm² at 0.25 µm/px
    assert classical_nuclei(img, 0.25, min_area_um2=8.0).max() == 0
    assert classical_nuclei(img, 0.25, min_area_um2=1.0).max() == 16
    blank = np.full((32, 32, 3), 200, np.uint8)
    assert classical_nuclei(blank).max() == 0


def test_bad_input():
    with pytest.raises(HistosamError):
        classical_nuclei(np.zeros((8, 8), np.uint8))
    with pytest.raises(HistosamError):
        classical_nuclei(np.zeros((8, 8, 3), np.uint8), pixel_size_um=0)
