"""Region instances from scores, chunk merging, tiling invariance of the tissue scores, and a slide whose regions
cross chunk borders (one polygon each), against the same region segmented as one image."""

import json

import numpy as np
import pytest
import shapely
import torch
from shapely.geometry import shape

from histosam.measure.regions import Region, merge_cut_regions, region_features, regions_from_labels
from histosam.postprocess.regions import region_instances


def _scores(fg: np.ndarray, interior: np.ndarray, cls: int = 1, k: int = 3) -> np.ndarray:
    s = np.zeros((k + 1, *fg.shape), np.float32)
    s[0] = ~fg
    s[cls] = fg
    s[k] = interior
    return s


def test_interior_seeds_split_touching_glands_and_small_regions_go():
    fg = np.zeros((40, 60), bool)
    fg[5:35, 5:55] = True
    interior = np.zeros_like(fg)
    interior[8:32, 8:27] = True  # two glands' interiors, apart across columns 27..32
    interior[8:32, 33:52] = True
    fg[38:40, 0:2] = True  # 4 px: below the minimum area
    cmap, inst, cls = region_instances(_scores(fg, interior.astype(np.float32), cls=2), mpp=1.0, min_area_um2=50)
    assert inst.max() == 2 and set(cls.values()) == {2}
    assert (inst > 0).sum() == 30 * 50  # the pixels between the interiors are given back to the glands
    assert cmap[39, 0] == 0 and inst[39, 0] == 0
    assert set(np.unique(cmap)) == {0, 2}


def test_a_gland_without_interior_is_kept():
    fg = np.zeros((30, 30), bool)
    fg[2:12, 2:12] = True  # its interior score stays low everywhere
    fg[15:28, 15:28] = True
    interior = np.zeros_like(fg)
    interior[18:25, 18:25] = True
    cmap, inst, cls = region_instances(_scores(fg, interior.astype(np.float32)), mpp=1.0, min_area_um2=10)
    assert inst.max() == 2 and (inst > 0).sum() == fg.sum()


def test_instance_takes_its_majority_class():
    fg = np.zeros((20, 20), bool)
    fg[2:18, 2:18] = True
    s = _scores(fg, fg.astype(np.float32), cls=1)
    s[2, 2:6, 2:6] = 2.0  # a corner scores malignant: the region stays benign, one class throughout
    cmap, inst, cls = region_instances(s, mpp=1.0, min_area_um2=1)
    assert cls == {1: 1} and set(np.unique(cmap[inst == 1])) == {1}


def test_merge_joins_cut_regions_across_chunks_only():
    a = Region(shapely.box(0, 0, 10, 10), 1, chunk=0)
    b = Region(shapely.box(10, 0, 20, 10), 1, chunk=1)  # the same gland, cut at x = 10
    c = Region(shapely.box(20, 0, 30, 10), 1, chunk=1)  # touches b inside one chunk: split on purpose
    d = Region(shapely.box(0, 10, 10, 20), 2, chunk=2)  # touches a, other class
    out = merge_cut_regions([a, b, c, d])
    assert len(out) == 3
    assert out[0].geometry.equals(shapely.box(0, 0, 20, 10))
    assert all(r.geometry.is_valid for r in out)


def test_region_features_follow_qupath_rules():
    lab = np.zeros((20, 20), np.int32)
    lab[2:10, 2:10] = 1
    lab[12:18, 3:19] = 2
    regions = regions_from_labels(lab, {1: 1, 2: 2}, scale=2.0)
    feats, table = region_features(regions, ["background", "benign gland", "malignant gland"],
                                   [[0, 0, 0], [0, 160, 80], [200, 40, 40]], mpp=0.5)
    assert len(feats) == 2 and list(table["class"]) == ["benign gland", "malignant gland"]
    import uuid

    for f in feats:
        uuid.UUID(f["id"])
        p = f["properties"]
        assert p["objectType"] == "annotation" and set(p["classification"]) == {"name", "color"}
        g = shape(f["geometry"])
        assert g.is_valid and g.geom_type in ("Polygon", "MultiPolygon")
    # scale 2 output px per label px at 0.5 µm/px: 1 label px = 1 µm; the 8x8 square's outline (marching squares
    # at 0.5) cuts each corner by a right triangle of legs 0.5: area 64 - 4·0.125, perimeter 4·7 + 4·0.5·√2
    assert table["area_um2"][0] == pytest.approx(63.5)
    assert table["perimeter_um"][0] == pytest.approx(28 + 2 * 2 ** 0.5)


def _tiny_tissue_model(size=64):
    from histosam.models.build import build_model
    from histosam.models.heads import SECOND_ENCODER_DEFAULT

    torch.manual_seed(0)
    spec = {"classes": ["background", "gland"], "colors": [[0, 0, 0], [0, 160, 80]], "tokens": 2, "mlp_dim": 64,
            "depth": 1, "second_encoder": dict(SECOND_ENCODER_DEFAULT)}
    model = build_model("nano", instance_decoder=None, image_size=size, tissue=spec).eval()
    model.config.mpp = 1.0
    return model


def test_scores_of_a_chunk_with_context_equal_the_whole_image():
    from histosam.tasks.tissue import tissue_scores

    model = _tiny_tissue_model()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (100, 130, 3), dtype=np.uint8)
    whole = tissue_scores(model, rgb, tile=32, halo=16)
    # a chunk at (32, 64) of 64 x 64 working px (whole tiles, as slides chunk), read with 16 px of context
    part = tissue_scores(model, rgb[16:112, 48:130], tile=32, halo=16, region=(16, 16, 80, 80))
    np.testing.assert_allclose(part, whole[:, 32:96, 64:128], atol=1e-5)


def _fake_scores(model, rgb, tile=None, halo=None, batch_size=4, region=None):
    """Dark pixels are glands (class 1) and their own interior: a stand-in that makes the slide's answer known."""
    r0, c0, r1, c1 = region if region is not None else (0, 0, *rgb.shape[:2])
    fg = rgb[r0:r1, c0:c1].mean(axis=2) < 150
    s = np.zeros((3, *fg.shape), np.float32)
    s[0], s[1], s[2] = ~fg, fg, fg
    return s


def test_slide_regions_cut_by_chunks_are_one_polygon(tmp_path, monkeypatch):
    import tifffile

    import histosam.tasks.tissue as tt
    from histosam.pipeline.tissue_job import tissue_file
    from histosam.wsi.regions import segment_tissue_slide

    monkeypatch.setattr(tt, "tissue_scores", _fake_scores)
    h, w = 300, 340
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (225, 160, 200)  # tissue everywhere
    yy, xx = np.mgrid[0:h, 0:w]
    img[(yy - 128) ** 2 + (xx - 128) ** 2 < 60 ** 2] = (90, 40, 110)  # a gland across the chunk corner at (128, 128)
    img[200:260, 250:330] = (90, 40, 110)  # a gland cut by the border at x = 256
    slide = tmp_path / "s.tif"
    tifffile.imwrite(slide, img, tile=(64, 64), photometric="rgb", resolution=(1e4 / 4, 1e4 / 4),
                     resolutionunit="CENTIMETER")  # 4 µm/px: glands large enough for the thumbnail's tissue mask
    model = _tiny_tissue_model()
    model.config.mpp = 4.0
    rec = segment_tissue_slide(slide, tmp_path / "out", model, chunk=128, tile=32, halo=16, min_area_um2=100)
    feats = json.loads((tmp_path / "out" / "s_regions.geojson").read_text())["features"]
    assert rec["regions"] == 2 and len(feats) == 2
    geoms = [shape(f["geometry"]) for f in feats]
    assert all(g.is_valid and g.geom_type == "Polygon" for g in geoms)
    assert not (tmp_path / "out" / ".s_tissue_chunks").exists()
    # the same pixels segmented as one image give the same outlines
    png = tmp_path / "s.png"
    from PIL import Image

    Image.fromarray(img).save(png)
    tissue_file(png, tmp_path / "img", model, mpp=4.0, min_area_um2=100)
    ref = json.loads((tmp_path / "img" / "s_regions.geojson").read_text())["features"]
    ref_geoms = sorted((shape(f["geometry"]) for f in ref), key=lambda g: g.bounds)
    for a, b in zip(sorted(geoms, key=lambda g: g.bounds), ref_geoms):
        # equal but where the outline crosses a chunk border: there the image's outline rounds the pixel corners
        # off (marching squares) and the chunked one runs straight to the border, 1/8 px² a crossing at most
        assert a.symmetric_difference(b).area <= 4 * 0.125 * 16 + 1e-6  # 4 crossings (in level-0 px: 4² a px)
        assert len(a.interiors) == 0
    cmap = tifffile.imread(tmp_path / "out" / "s_tissue.tif")
    assert cmap.shape == (h, w) and cmap[128, 128] == 1 and cmap[5, 5] == 0
    assert rec["class_areas_um2"]["gland"] == pytest.approx(16 * sum(g.area for g in geoms))
