"""AIS watershed post-processing: hand-made maps, parameters, parity with a plain skimage reference."""

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.draw import disk
from skimage.measure import label
from skimage.segmentation import watershed

from histosam.errors import HistosamError
from histosam.postprocess.ais import AISParams, ParameterError, gaussian_radius, size_filter, watershed_from_maps
from histosam.postprocess.targets import distance_maps_from_labels


def _discs(shape=(64, 80)):
    lab = np.zeros(shape, np.int32)
    for i, (r, c, rad) in enumerate([(15, 15, 8), (15, 31, 8), (45, 60, 10), (50, 15, 3)], start=1):
        rr, cc = disk((r, c), rad, shape=shape)
        lab[rr, cc] = i
    return lab


def _reference(maps, p=AISParams()):
    """Literal transcription of micro-sam's steps with skimage (float64 smoothing)."""
    fg = ndi.gaussian_filter(maps[0].astype(np.float64), p.foreground_smoothing, truncate=3.0, mode="mirror")
    cd = ndi.gaussian_filter(maps[1].astype(np.float64), p.distance_smoothing, truncate=3.0, mode="mirror")
    bd = ndi.gaussian_filter(maps[2].astype(np.float64), p.distance_smoothing, truncate=3.0, mode="mirror")
    mask = fg > p.foreground_threshold
    markers = label((cd < p.center_distance_threshold) & (bd < p.boundary_distance_threshold) & mask)
    return watershed(bd, markers, mask=mask)


def test_recovers_touching_discs_with_exact_ids():
    lab = _discs()
    seg = watershed_from_maps(distance_maps_from_labels(lab), foreground_smoothing=0, distance_smoothing=0)
    assert seg.dtype == np.uint32 and seg.shape == lab.shape
    # ids in raster order of marker first pixel: disc 1, disc 2, disc 3 (row 35+), disc 4 (row 47+)
    assert seg.max() == 4
    for i in range(1, 5):
        assert (seg[lab == i] == i).mean() > 0.97
    assert np.array_equal(seg > 0, lab > 0)


def test_matches_reference_on_noisy_maps():
    rng = np.random.default_rng(3)
    maps = distance_maps_from_labels(_discs((96, 96))) + rng.normal(0, 0.1, (3, 96, 96)).astype(np.float32)
    seg = watershed_from_maps(maps)
    assert np.array_equal(seg, _reference(maps))


def test_min_size_removes_and_relabels():
    maps = distance_maps_from_labels(_discs())
    full = watershed_from_maps(maps)
    areas = np.bincount(full.ravel())[1:]
    small = int(np.argmin(areas)) + 1
    seg = watershed_from_maps(maps, min_size=int(areas.min()) + 1)
    assert seg.max() == full.max() - 1
    assert not seg[full == small].any()
    assert np.array_equal(np.unique(seg), np.arange(seg.max() + 1))


def test_size_filter_exact():
    seg = np.array([[1, 1, 0, 3], [2, 0, 0, 3], [5, 5, 5, 3]])
    assert size_filter(seg, 2).tolist() == [[1, 1, 0, 2], [0, 0, 0, 2], [3, 3, 3, 2]]
    assert size_filter(seg, 0).tolist() == seg.tolist()


def test_empty_maps_give_empty_labels():
    maps = np.zeros((3, 10, 12), np.float32)
    assert not watershed_from_maps(maps).any()


def test_params_roundtrip_and_validation():
    p = AISParams.from_dict({"min_size": 50, "distance_smoothing": None})
    assert p.min_size == 50 and p.distance_smoothing == 1.6
    assert AISParams.from_dict(p.to_dict()) == p
    assert p.replace(foreground_threshold=0.3).foreground_threshold == 0.3
    with pytest.raises(ParameterError, match="unknown"):
        AISParams.from_dict({"min_sizes": 3})
    with pytest.raises(HistosamError):
        AISParams(foreground_threshold=-1)
    with pytest.raises(HistosamError):
        AISParams(min_size=2.5)
    with pytest.raises(HistosamError):
        watershed_from_maps(np.zeros((2, 5, 5), np.float32))
    assert gaussian_radius(1.6) == 5 and gaussian_radius(1.0) == 3 and gaussian_radius(0) == 0  # 3 sigma
    assert AISParams().smoothing_radius == 5
