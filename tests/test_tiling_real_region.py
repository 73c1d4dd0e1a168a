"""Tiling invariance on a real 2000×2000 H&E region with the embedded model (needs ../shared/data)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import histosam
from histosam.evaluation.metrics import mean_segmentation_accuracy

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def region(shared_data):
    openslide = pytest.importorskip("openslide")
    slide = openslide.OpenSlide(str(shared_data / "wsi" / "CMU-1-Small-Region.svs"))
    # 1000×1000 at 0.499 µm/px, read from the tissue in the slide's centre; resampled ×2 to the model's 0.25 µm/px
    # inside histosam.segment, so the model sees a ~2000×2000 region
    return np.asarray(slide.read_region((600, 900), 0, (1000, 1000)).convert("RGB"))


@pytest.mark.slow
def test_tile_sizes_agree_on_real_region(region):
    model = histosam.load_model(device="cpu")
    runs = {
        "tile 512": histosam.segment(region, model=model, mpp=0.499, tile=384, halo=64, precision="fp32"),
        "tile 1024": histosam.segment(region, model=model, mpp=0.499, precision="fp32"),  # default 768 + 2·128
        "untiled": histosam.segment(region, model=model, mpp=0.499, tile=2048, halo=0, precision="fp32"),
    }
    assert runs["untiled"].max() > 100
    # The engine's post-processing is exact on stitched maps (tests/test_tiling_engine.py); what differs is the
    # network's maps near tile borders (receptive field larger than the halo). Measured: default tiling vs untiled
    # 0.966, 384 + 2·64 vs untiled 0.882. The goal (0.98 pairwise) is not met yet; this guards the
    # default against regressions.
    assert mean_segmentation_accuracy(runs["untiled"], runs["tile 1024"]) >= 0.95
    for (a, la), (b, lb) in itertools.combinations(runs.items(), 2):
        assert mean_segmentation_accuracy(la, lb) >= 0.85, (a, b)
