"""Tiling invariance of a native-resolution model's maps (StarDist's invariant, with a real network).

histosam-nano is fully convolutional with a finite receptive field; with a halo that covers it and tiles padded
only to a multiple of 16, the stitched maps must equal the maps of the whole image, for any tile size, including
edge tiles and image sides that are not multiples of 16.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from histosam.automatic import NANO_RECEPTIVE_RADIUS, default_tiling
from histosam.inference.maps import make_map_predictor
from histosam.models.build import build_model
from histosam.tiling.grid import Box, TileGrid
from histosam.tiling.maps import MapAssembler


@pytest.fixture(scope="module")
def nano():
    torch.manual_seed(0)
    return build_model("nano").eval()


def _image(h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    return np.kron(base, np.ones((16, 16, 1), dtype=np.uint8))[:h, :w].copy()


def test_receptive_field_within_default_halo(nano):
    x = torch.zeros(1, 3, 768, 768, requires_grad=True)
    emb, skips = nano.encode(x)
    nano.decode_instances(emb, skips, x)[0, :, 384, 384].sum().backward()
    rows, cols = torch.nonzero(x.grad[0].abs().sum(0) > 0, as_tuple=True)
    radius = max(384 - int(rows.min()), int(rows.max()) - 384, 384 - int(cols.min()), int(cols.max()) - 384)
    assert 150 < radius <= NANO_RECEPTIVE_RADIUS
    _, halo = default_tiling(nano, (4000, 4000))
    assert halo >= radius


def _stitched(img: np.ndarray, predict, tile: int, halo: int) -> np.ndarray:
    h, w = img.shape[:2]
    return MapAssembler(TileGrid((h, w), tile, halo), lambda r, c, hh, ww: img[r:r + hh, c:c + ww],
                        predict).maps_for(Box(0, 0, h, w))


@pytest.mark.parametrize("tile", [128, 320])
def test_tiled_maps_equal_untiled(nano, tile):
    img = _image(600, 584)  # 600 is not a multiple of 16
    predict = make_map_predictor(nano, "cpu", "fp32")
    whole = predict(img[None])[0]
    stitched = _stitched(img, predict, tile, 224)
    assert stitched.shape == whole.shape == (3, *img.shape[:2])
    # random weights give maps with little spatial contrast (0.39-0.54), so the tolerance is tight: float
    # rounding only (measured <= 1.2e-7); a 16-px halo differs by ~8e-4 (test below)
    assert np.abs(stitched - whole).max() <= 2e-6


def test_short_halo_differs(nano):
    """Guards the test above against passing vacuously: a halo inside the receptive field changes the maps."""
    img = _image(600, 584)
    predict = make_map_predictor(nano, "cpu", "fp32")
    whole = predict(img[None])[0]
    stitched = _stitched(img, predict, 128, 16)
    assert np.abs(stitched - whole).max() > 2e-4
