"""SlideReader: levels, mpp (metadata / override / default), regions, errors, ROIs."""

from __future__ import annotations

import json
import pathlib
import warnings

import numpy as np
import pytest
import tifffile

from histosam.errors import HistosamError, SlideError
from histosam.wsi.reader import DEFAULT_MPP, MissingMppWarning, _to_rgb, open_slide
from histosam.wsi.roi import RoiError, parse_roi
from histosam.wsi.synthetic import render_region, write_synthetic_slide

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wsi"
BACKENDS = ["openslide", "tiffslide", "tifffile"]


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> pathlib.Path:
    return write_synthetic_slide(tmp_path_factory.mktemp("wsi") / "syn.tif", 1024, 768, mpp=0.5, levels=3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_levels_and_mpp(slide, backend):
    with open_slide(slide, backend=backend) as s:
        assert s.level_dimensions == [(1024, 768), (512, 384), (256, 192)]
        assert s.level_downsamples == pytest.approx([1.0, 2.0, 4.0])
        assert s.mpp == pytest.approx(0.5) and s.mpp_source == "metadata"
        region = s.read_region(100, 50, 64, 40, 0)
        assert region.shape == (40, 64, 3) and region.dtype == np.uint8
        np.testing.assert_array_equal(region, render_region(100, 50, 64, 40, s_patches(1024, 768)))
        # beyond the right edge is white
        edge = s.read_region(1000, 0, 50, 10, 0)
        assert (edge[:, 24:] == 255).all() and (edge[:, :24] == 242).all()


def s_patches(w, h):
    from histosam.wsi.synthetic import default_patches

    return default_patches(w, h)


def test_mpp_override_and_default(tmp_path, slide):
    with open_slide(slide, mpp=0.3) as s:
        assert s.mpp == 0.3 and s.mpp_source == "user"
    nompp = write_synthetic_slide(tmp_path / "nompp.tif", 512, 512, mpp=None, levels=1)
    with pytest.warns(MissingMppWarning, match="no microns-per-pixel.*--mpp"):
        s = open_slide(nompp)
    assert s.mpp == DEFAULT_MPP and s.mpp_source == "default"
    s.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_slide(nompp, mpp=0.5).close()  # no warning when the user gives mpp
    with pytest.raises(SlideError, match="mpp must be > 0"):
        open_slide(slide, mpp=0)
    printed = tmp_path / "printed.tif"  # a 72-dpi resolution tag is a print resolution, not a pixel size
    tifffile.imwrite(printed, np.zeros((64, 64, 3), np.uint8), resolution=(72, 72), resolutionunit="INCH")
    with pytest.warns(MissingMppWarning):
        s = open_slide(printed)
    assert s.mpp == DEFAULT_MPP and s.mpp_source == "default"
    s.close()


def test_read_at_mpp_uses_pyramid(slide):
    with open_slide(slide) as s:
        assert s.best_level(2.0) == 1 and s.best_level(3.0) == 1 and s.best_level(1.5) == 0
        assert s.best_level(8.0) == 2
        a = s.read_at_mpp(50, 20, 100, 80, 1.0)  # 1.0 µm/px = exactly level 1
        np.testing.assert_array_equal(a, s.read_region(100, 40, 100, 80, 1))
        b = s.read_at_mpp(0, 0, 64, 48, 4.0)  # between levels: resampled from level 2
        assert b.shape == (48, 64, 3)
        ref = s.read_region(0, 0, 128, 96, 2).reshape(48, 2, 64, 2, 3).mean(axis=(1, 3))
        assert np.abs(b.astype(float) - ref).mean() < 3
        t = s.thumbnail(8.0)
        assert t.shape == (48, 64, 3)


def test_unopenable(tmp_path):
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"not a slide at all")
    with pytest.raises(SlideError, match="cannot open slide .*bad.svs") as ei:
        open_slide(bad)
    assert isinstance(ei.value, HistosamError)
    with pytest.raises(SlideError, match="slide not found"):
        open_slide(tmp_path / "missing.svs")


def test_alpha_composited_on_white():
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, 0] = [10, 20, 30, 0]
    rgba[0, 1] = [10, 20, 30, 255]
    rgba[0, 2] = [0, 0, 0, 128]
    out = _to_rgb(rgba)
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [10, 20, 30]
    assert out[0, 2].tolist() == [127, 127, 127]


def test_roi_box_and_geojson(tmp_path):
    r = parse_roi("10,20,30,40")
    assert r.bbox == (10, 20, 30, 40)
    m = r.mask(0, 0, 60, 80)
    assert m.sum() == 30 * 40 and m[20, 10] and not m[19, 10] and not m[20, 40]
    fc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"objectType": "annotation"},
         "geometry": {"type": "Polygon", "coordinates": [
             [[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]],
             [[40, 40], [60, 40], [60, 60], [40, 60], [40, 40]]]}}]}
    p = tmp_path / "roi.geojson"
    p.write_text(json.dumps(fc))
    r = parse_roi(str(p))
    assert r.bbox == (0, 0, 100, 100)
    m = r.mask(0, 0, 50, 50, scale=2.0)  # 2 level-0 px per mask pixel
    assert m.sum() == 50 * 50 - 10 * 10 and not m[25, 25]
    with pytest.raises(RoiError):
        parse_roi("1,2,zero,4")
    with pytest.raises(RoiError):
        parse_roi(str(tmp_path / "nope.geojson"))


@pytest.mark.data
@pytest.mark.skipif(not SHARED.exists(), reason="shared data absent")
def test_real_slides():
    with open_slide(SHARED / "CMU-1-Small-Region.svs") as s:
        assert s.level_dimensions == [(2220, 2967)] and s.mpp == pytest.approx(0.499)
    with pytest.warns(MissingMppWarning):
        s = open_slide(SHARED / "TCGA-CR-7395-01A-01-TS1.svs")
    assert s.level_count == 2 and s.level_downsamples[1] == pytest.approx(2.0, abs=0.01)
    s.close()
    with open_slide(SHARED / "CMU-1-Small-Region.svs", backend="tifffile") as s:
        assert s.mpp == pytest.approx(0.499)
