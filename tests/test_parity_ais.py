"""AIS parity: histosam.segment vs the micro-sam inference path rebuilt from the reference packages.

micro-sam itself does not install here (napari, vigra, ...). Its untiled AIS is: ``SamPredictor.set_image`` →
torch-em ``UNETR.decode`` on the predictor's features (BatchNorm on batch statistics) → seeded watershed
(gaussian smoothing, ``(cd < t) & (bd < t) & fg`` markers with 8-connected labelling, 4-connected watershed on
the boundary distance inside the foreground, size filter). The reference below follows those documented steps
with the reference packages' modules and skimage/scipy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reference_shims import install_torchvision_shim

install_torchvision_shim()
pytest.importorskip("segment_anything")

import histosam  # noqa: E402
from histosam.evaluation.metrics import mean_segmentation_accuracy  # noqa: E402
from reference_models import TINY, reference_sam, reference_unetr, save_micro_sam  # noqa: E402


def reference_watershed(maps, cd_t=0.5, bd_t=0.5, fg_t=0.5, fg_sigma=1.0, d_sigma=1.6, min_size=0):
    from scipy.ndimage import gaussian_filter
    from skimage.measure import label
    from skimage.segmentation import relabel_sequential, watershed

    fg = gaussian_filter(maps[0], fg_sigma, truncate=3.0, mode="mirror")  # micro-sam's (vigra/bioimage-cpp) kernel
    cd = gaussian_filter(maps[1], d_sigma, truncate=3.0, mode="mirror")
    bd = gaussian_filter(maps[2], d_sigma, truncate=3.0, mode="mirror")
    fg_mask = fg > fg_t
    markers = label((cd < cd_t) & (bd < bd_t) & fg_mask)
    seg = watershed(bd, markers, mask=fg_mask)
    ids, counts = np.unique(seg, return_counts=True)
    seg[np.isin(seg, ids[counts < min_size])] = 0
    return relabel_sequential(seg)[0]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    if pytest.importorskip("reference_shims").import_torch_em_unetr() is None:
        pytest.skip("torch-em is not installed")
    sam = reference_sam(TINY, seed=4)
    unetr = reference_unetr(sam.image_encoder, conv_transpose=True, seed=5)
    path = save_micro_sam(sam, unetr, tmp_path_factory.mktemp("ais") / "tiny_pathosam.pt")
    return sam, unetr, histosam.load_model(path, device="cpu")


def _he_like(h, w, seed=0):
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), (230, 200, 220), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(25):
        r, c, rad = rng.integers(10, h - 10), rng.integers(10, w - 10), rng.integers(4, 9)
        img[(yy - r) ** 2 + (xx - c) ** 2 <= rad * rad] = (90, 50, 140)
    return np.clip(img.astype(int) + rng.integers(-15, 15, img.shape), 0, 255).astype(np.uint8)


def test_ais_labels_match_micro_sam_path(pair):
    from segment_anything import SamPredictor

    sam, unetr, model = pair
    img = _he_like(200, 240)
    pred = SamPredictor(sam)
    pred.set_image(img)
    unetr.train()  # micro-sam never calls eval(): BatchNorm uses batch statistics
    bn_state = {k: v.clone() for k, v in unetr.state_dict().items()}
    with torch.no_grad():
        maps_ref = unetr.decode((pred.features, None, None), tuple(pred.input_size), tuple(pred.original_size))
    unetr.load_state_dict(bn_state)
    maps_ref = maps_ref[0].numpy()
    ref_labels = reference_watershed(maps_ref)
    ours = histosam.segment(img, model=model, precision="fp32")
    assert ours.shape == img.shape[:2] and ours.dtype == np.uint32
    assert ref_labels.max() >= 5  # the random decoder gives real objects here (11 with these seeds)
    assert mean_segmentation_accuracy(ref_labels.astype(np.uint32), ours) >= 0.95
