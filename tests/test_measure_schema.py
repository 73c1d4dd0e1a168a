"""One outline convention and one measurement set for images, slides and the QuPath server (histosam.measure).

The same pixels at the same µm/px, segmented as an image (``segment_file``) and as a slide (``segment_slide``)
with the same fake predictor, give the same nuclei, the same polygons and the same table; a slide or an image
processed at another resolution is measured at the working resolution and mapped to its own pixels by the scale;
the server answers with the same outline; small hand-made masks have exact expected values.
"""

from __future__ import annotations

import gzip
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from shapely.geometry import shape

from histosam.io.geojson import geometry_dicts, read_geojson
from histosam.measure import label_polygons, mask_polygon, measure_instances, measure_objects, table_columns
from histosam.pipeline import segment_file
from histosam.wsi.fake import colour_threshold_maps
from histosam.wsi.pipeline import segment_slide
from histosam.wsi.reader import open_slide
from histosam.wsi.synthetic import render_region, write_synthetic_slide

SIZE = 512
PATCHES = [(260.0, 250.0, 240.0, 220.0), (470.0, 60.0, 60.0, 50.0)]  # tissue ellipses (level-0 px)
SLIDE_OPTS = dict(tile=256, halo=32, chunk=256, context=64, batch_size=4, use_tissue=False, csv_table=True)


def _image_table(names) -> pd.DataFrame:
    return pd.read_parquet(names["parquet"])


def _slide_outputs(outdir, stem):
    table = pd.read_parquet(outdir / f"{stem}.parquet")
    with gzip.open(outdir / f"{stem}.geojson.gz", "rt", encoding="utf-8") as f:
        feats = json.load(f)["features"]
    return table, feats


def _by_position(table: pd.DataFrame) -> pd.DataFrame:
    """Rows in a frame-independent order (the two paths number their objects in different chunk orders)."""
    return table.sort_values(["bbox_y0", "bbox_x0", "centroid_y", "centroid_x"]).reset_index(drop=True)


def _geometries(feats: list[dict], key: str) -> dict[int, dict]:
    return {int(f["properties"]["measurements"][key]): f["geometry"] for f in feats}


@pytest.fixture(scope="module")
def same_pixels(tmp_path_factory):
    """A synthetic slide at 0.5 µm/px and a PNG holding exactly its level-0 pixels."""
    d = tmp_path_factory.mktemp("schema")
    slide = write_synthetic_slide(d / "region.tif", SIZE, SIZE, mpp=0.5, levels=2, tile=128, patches=PATCHES)
    with open_slide(slide) as s:
        pixels = s.read_region(0, 0, SIZE, SIZE, 0)
    np.testing.assert_array_equal(pixels, render_region(0, 0, SIZE, SIZE, PATCHES))
    png = d / "region.png"
    Image.fromarray(pixels).save(png)
    return slide, png, pixels


def test_image_and_slide_give_the_same_nuclei_polygons_and_table(same_pixels, tmp_path):
    slide, png, _ = same_pixels
    names = segment_file(png, tmp_path / "image", predict_maps=colour_threshold_maps, mpp=0.5, chunk=256,
                         progress=False)
    segment_slide(slide, tmp_path / "slide", colour_threshold_maps, target_mpp=0.5, **SLIDE_OPTS)
    image_table = _image_table(names)
    slide_table, slide_feats = _slide_outputs(tmp_path / "slide", "region")
    # the same columns (names, order, dtypes); slides add the chunk index
    assert list(image_table.columns) == list(table_columns()) == list(slide_table.columns)[:-1]
    assert list(slide_table.columns)[-1] == "chunk"
    pd.testing.assert_series_equal(image_table.dtypes, slide_table.dtypes.drop("chunk"))
    assert len(image_table) == len(slide_table) > 150
    # the same set of nuclei with the same values
    a, b = _by_position(image_table), _by_position(slide_table.drop(columns="chunk"))
    pd.testing.assert_frame_equal(a.drop(columns="id"), b.drop(columns="id"), check_exact=False, rtol=1e-12,
                                  atol=1e-12)
    # identical polygons (GeoJSON as written, coordinates rounded to 0.01 px)
    image_geoms = _geometries(read_geojson(names["geojson"]), "label_id")
    slide_geoms = _geometries(slide_feats, "histosam id")
    assert len(image_geoms) == len(slide_geoms) == len(a)
    for i, j in zip(a["id"], b["id"]):
        assert image_geoms[int(i)] == slide_geoms[int(j)]
    # and they are the outlines of the label image the image path wrote
    from histosam.io.labels import read_labels

    labels = read_labels(names["labels"])
    outlines = label_polygons(labels)
    assert geometry_dicts([outlines[1]])[0] == image_geoms[1]
    for g in list(slide_geoms.values())[:50]:
        assert shape(g).is_valid and g["coordinates"][0][0] == g["coordinates"][0][-1]  # valid, closed rings
    # the measurements attached to the features are the table's, in both outputs
    image_meas = {f["properties"]["measurements"]["label_id"]: f["properties"]["measurements"]
                  for f in read_geojson(names["geojson"])}
    slide_meas = {f["properties"]["measurements"]["histosam id"]: f["properties"]["measurements"]
                  for f in slide_feats}
    for i, j in zip(a["id"], b["id"]):
        m_img = {k: v for k, v in image_meas[i].items() if k != "label_id"}
        m_sld = {k: v for k, v in slide_meas[j].items() if k != "histosam id"}
        assert set(m_img) == set(table_columns()) - {"id"} and m_img == pytest.approx(m_sld, rel=1e-12)
    # the slide's CSV holds the same table as its Parquet file
    csv = pd.read_csv(tmp_path / "slide" / "region.csv")
    pd.testing.assert_frame_equal(csv, slide_table, check_exact=False, rtol=1e-12)
    # units: µm values are pixel values x mpp
    np.testing.assert_allclose(a["area_um2"], a["area_px"] * 0.25, rtol=1e-12)
    np.testing.assert_allclose(a["perimeter_um"], a["perimeter_px"] * 0.5, rtol=1e-12)


def _match(small: pd.DataFrame, big: pd.DataFrame, factor: float) -> pd.DataFrame:
    """Rows of ``big`` (measured in a frame ``factor`` times finer) matching each row of ``small`` by centroid."""
    key = lambda t, f: list(zip(np.round(t["centroid_x"] * f, 6), np.round(t["centroid_y"] * f, 6)))  # noqa: E731
    index = {k: i for i, k in enumerate(key(big, 1.0))}
    return big.iloc[[index[k] for k in key(small, factor)]].reset_index(drop=True)


def _assert_scaled(coarse: pd.DataFrame, fine: pd.DataFrame, s: float, mpp_coarse: float) -> None:
    """``coarse`` = ``fine`` measured on the same working mask and mapped to a frame with ``s`` output px per
    working px: positions and lengths x s, areas x s², ratios, stains, scores and µm values unchanged."""
    for col in ("centroid_x", "centroid_y", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1", "perimeter_px"):
        np.testing.assert_allclose(coarse[col], fine[col] * s, rtol=1e-12, err_msg=col)
    np.testing.assert_allclose(coarse["area_px"], fine["area_px"] * s * s, rtol=1e-12)
    for col in ("eccentricity", "solidity", "circularity", "mean_od_hematoxylin", "mean_od_eosin", "score",
                "centroid_x_um", "centroid_y_um", "area_um2", "perimeter_um"):
        np.testing.assert_allclose(coarse[col], fine[col], rtol=1e-9, atol=1e-12, err_msg=col)
    np.testing.assert_allclose(coarse["area_um2"], coarse["area_px"] * mpp_coarse**2, rtol=1e-12)


def test_slide_at_another_resolution_is_measured_at_the_working_resolution(tmp_path, monkeypatch):
    """A 0.25 µm/px slide segmented at 0.5 µm/px (s = 2): the table and polygons are those of its 0.5 µm/px
    pixels segmented as an image, mapped to level-0 pixels by s."""
    from histosam.wsi import synthetic

    monkeypatch.setattr(synthetic, "RADIUS", 2 * synthetic.RADIUS)  # nuclei of the usual size at 0.5 µm/px
    monkeypatch.setattr(synthetic, "LATTICE", 2 * synthetic.LATTICE)
    slide = write_synthetic_slide(tmp_path / "fine.tif", 2 * SIZE, 2 * SIZE, mpp=0.25, levels=2, tile=128,
                                  patches=[(2 * x, 2 * y, 2 * rx, 2 * ry) for x, y, rx, ry in PATCHES])
    with open_slide(slide) as s:
        working = s.read_at_mpp(0, 0, SIZE, SIZE, 0.5)  # level 1, exactly
    png = tmp_path / "working.png"
    Image.fromarray(working).save(png)
    names = segment_file(png, tmp_path / "image", predict_maps=colour_threshold_maps, mpp=0.5, chunk=256,
                         progress=False)
    segment_slide(slide, tmp_path / "slide", colour_threshold_maps, target_mpp=0.5, **SLIDE_OPTS)
    image = _image_table(names)
    slide_table, feats = _slide_outputs(tmp_path / "slide", "fine")
    assert len(image) == len(slide_table) > 100
    # level-0 pixels: positions x 2, areas x 4; µm values unchanged
    matched = _match(image, slide_table, 2.0)
    _assert_scaled(matched, image, 2.0, 0.25)
    slide_geoms = _geometries(feats, "histosam id")
    image_geoms = _geometries(read_geojson(names["geojson"]), "label_id")
    for i, j in zip(image["id"], matched["id"]):
        ring = np.asarray(image_geoms[int(i)]["coordinates"][0])
        np.testing.assert_array_equal(np.asarray(slide_geoms[int(j)]["coordinates"][0]), ring * 2)


class _FakeModel:
    """A model stating 0.25 µm/px (so that a 0.5 µm/px image is resampled x2), without weights."""

    image_size = 256
    checkpoint_path = None
    config = SimpleNamespace(name="fake", architecture="fake", instance_decoder="fake", mpp=0.25, postprocess={},
                             resize_longest_side=False)


def test_resampled_image_is_measured_at_the_working_resolution(same_pixels, tmp_path):
    """``segment`` resampling a 0.5 µm/px image x2 measures the objects on the model-frame mask and maps them to
    the image's pixels (x 0.5): the same numbers as the resampled pixels segmented directly, mapped."""
    from histosam.automatic import resample_rgb
    from histosam.io.labels import read_labels

    _, png, pixels = same_pixels
    opts = dict(tile=256, halo=32, chunk=256, progress=False)
    names = segment_file(png, tmp_path / "resampled", _FakeModel(), predict_maps=colour_threshold_maps, mpp=0.5,
                         **opts)
    working = tmp_path / "working.png"
    Image.fromarray(resample_rgb(pixels, 2.0)).save(working)
    direct = segment_file(working, tmp_path / "direct", predict_maps=colour_threshold_maps, mpp=0.25, **opts)
    coarse, fine = _image_table(names), _image_table(direct)
    labels = read_labels(names["labels"])
    assert coarse["id"].tolist() == list(range(1, int(labels.max()) + 1))  # table ids = label values
    assert 100 < len(coarse) <= len(fine)
    matched = _match(coarse, fine, 2.0)
    _assert_scaled(coarse, matched, 0.5, 0.5)
    geoms = _geometries(read_geojson(names["geojson"]), "label_id")
    fine_geoms = _geometries(read_geojson(direct["geojson"]), "label_id")
    for i, j in zip(coarse["id"], matched["id"]):
        ring = np.asarray(fine_geoms[int(j)]["coordinates"][0])
        np.testing.assert_array_equal(np.asarray(geoms[int(i)]["coordinates"][0]), ring * 0.5)


def test_server_polygon_is_the_measure_outline(same_pixels):
    """What QuPath receives for a prompt mask and for an automask is histosam.measure's outline."""
    import httpx

    from histosam.postprocess.ais import watershed_from_maps
    from histosam.server import (
        AutoResult,
        PromptResult,
        ServerConfig,
        WeightEntry,
        WeightsTable,
        create_app,
        running_server,
    )
    from histosam.server.imaging import encode_png_b64

    _, _, pixels = same_pixels
    crop = pixels[100:180, 120:220]
    lab = watershed_from_maps(colour_threshold_maps(crop)[0])
    big = int(np.argmax(np.bincount(lab.ravel())[1:])) + 1
    mask = lab == big
    ring = mask.copy()
    ring[mask.nonzero()[0].mean().astype(int), mask.nonzero()[1].mean().astype(int)] = False  # give it a hole
    assert len(mask_polygon(ring).interiors) == 1

    class Backend:
        def predict(self, entry, image, points, labels, box, multimask):
            return PromptResult(masks=ring[None], scores=np.array([0.9], np.float32))

        def automask(self, entry, image, amg_params):
            return AutoResult(labels=lab.astype(np.uint32), mode="ais")

        def stats(self):
            return {}

    url = "https://example.org/weights/vit_b_histo.pth"
    table = WeightsTable()
    table.add(WeightEntry(type="vit_b", name="histo", url=url, source="unused"))
    app = create_app(Backend(), table, ServerConfig(max_body_bytes=1 << 20, max_pixels=300 * 300))
    b64 = encode_png_b64(crop)
    with running_server(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        r = client.post("/sam/", json={"type": "vit_b", "b64img": b64, "bbox": [10, 10, 60, 60],
                                       "multimask_output": False, "checkpoint_url": url})
        assert r.status_code == 200, r.text
        (prompt,) = r.json()
        r = client.post("/sam/automask/", json={"type": "vit_b", "b64img": b64, "checkpoint_url": url})
        assert r.status_code == 200, r.text
        auto = r.json()
    _, outlines = measure_objects(ring.view(np.uint8))
    assert prompt["geometry"] == geometry_dicts(outlines)[0]  # the same outline, to the vertex (holes too)
    table_, outlines = measure_objects(lab)
    assert [f["properties"]["object_idx"] for f in auto] == table_["id"].tolist()
    assert [f["geometry"] for f in auto] == geometry_dicts(outlines)
    assert all(shape(f["geometry"]).is_valid for f in auto) and len(auto) > 3


def _one(mask: np.ndarray, **kw) -> tuple[dict, object]:
    table, outlines = measure_objects(mask.astype(np.uint8), **kw)
    assert len(table) == 1
    return table.iloc[0].to_dict(), outlines[0]


def _ring(geom) -> list[tuple[float, float]]:
    """Exterior ring without the closing vertex, starting at its smallest vertex (orientation kept)."""
    pts = [tuple(map(float, p)) for p in geom.exterior.coords[:-1]]
    k = pts.index(min(pts))
    return pts[k:] + pts[:k]


def test_square_exact():
    m = np.zeros((6, 7), bool)
    m[1:4, 2:5] = True  # 3x3 at rows 1-3, cols 2-4
    row, poly = _one(m, mpp=0.5)
    # marching squares at 0.5: pixel borders, corners cut by half a pixel; counter-clockwise (positive area)
    assert _ring(poly) == [(2, 1.5), (2.5, 1), (4.5, 1), (5, 1.5), (5, 3.5), (4.5, 4), (2.5, 4), (2, 3.5)]
    assert poly.exterior.is_ccw and poly.area == 9 - 0.5
    assert row["area_px"] == 9 and row["area_um2"] == 9 * 0.25
    assert row["perimeter_px"] == pytest.approx(4 * 2 + 4 * np.sqrt(0.5), rel=1e-15)
    assert row["perimeter_um"] == pytest.approx(0.5 * (8 + 4 * np.sqrt(0.5)), rel=1e-15)
    assert row["circularity"] == pytest.approx(4 * np.pi * 8.5 / (8 + 4 * np.sqrt(0.5)) ** 2, rel=1e-15)
    assert (row["centroid_x"], row["centroid_y"]) == (3.5, 2.5)
    assert (row["bbox_x0"], row["bbox_y0"], row["bbox_x1"], row["bbox_y1"]) == (2, 1, 5, 4)
    assert row["solidity"] == 1 and row["eccentricity"] == 0


def test_square_with_hole_exact():
    m = np.zeros((5, 5), bool)
    m[1:4, 1:4] = True
    m[2, 2] = False
    row, poly = _one(m)
    assert poly.geom_type == "Polygon" and len(poly.interiors) == 1 and poly.is_valid
    assert _ring(poly) == [(1, 1.5), (1.5, 1), (3.5, 1), (4, 1.5), (4, 3.5), (3.5, 4), (1.5, 4), (1, 3.5)]
    assert sorted(poly.interiors[0].coords[:-1]) == [(2, 2.5), (2.5, 2), (2.5, 3), (3, 2.5)]  # a diamond
    assert poly.exterior.is_ccw and not poly.interiors[0].is_ccw
    assert poly.area == 8.5 - 0.5
    assert row["area_px"] == 8
    assert row["perimeter_px"] == pytest.approx(8 + 4 * np.sqrt(0.5), rel=1e-15)  # the hole is not counted
    assert row["circularity"] == pytest.approx(4 * np.pi * 8 / (8 + 4 * np.sqrt(0.5)) ** 2, rel=1e-15)
    assert (row["centroid_x"], row["centroid_y"]) == (2.5, 2.5) and row["eccentricity"] == pytest.approx(0)
    assert row["solidity"] == pytest.approx(8 / 9)


def test_l_shape_exact():
    m = np.zeros((5, 5), bool)
    m[1:4, 1] = True
    m[3, 1:4] = True  # an L: column 1 rows 1-3, then row 3 cols 1-3
    row, poly = _one(m)
    assert _ring(poly) == [(1, 1.5), (1.5, 1), (2, 1.5), (2, 2.5), (2.5, 3), (3.5, 3), (4, 3.5), (3.5, 4), (1.5, 4),
                           (1, 3.5)]
    assert poly.exterior.is_ccw and poly.area == 5 - 5 / 8 + 1 / 8  # 5 outer corners cut, the inner one filled
    assert row["area_px"] == 5
    # axis-parallel stretches (left 2, bottom 2, inner 1 + 1) and 6 half-pixel diagonals
    assert row["perimeter_px"] == pytest.approx(6 + 6 * np.sqrt(0.5), rel=1e-15)
    assert row["circularity"] == pytest.approx(4 * np.pi * 4.5 / (6 + 6 * np.sqrt(0.5)) ** 2, rel=1e-15)
    assert (row["centroid_x"], row["centroid_y"]) == pytest.approx((8 / 5 + 0.5, 12 / 5 + 0.5), rel=1e-15)
    assert (row["bbox_x0"], row["bbox_y0"], row["bbox_x1"], row["bbox_y1"]) == (1, 1, 4, 4)
    assert row["solidity"] == pytest.approx(5 / 6)  # the hull's pixel centres: the L plus (2, 2)


def test_one_pixel_exact():
    m = np.zeros((3, 4), bool)
    m[1, 2] = True
    row, poly = _one(m, mpp=0.25, offset=(10, 20), scale=2.0)  # a crop at (10, 20), output frame x2
    # the diamond through the pixel's edge midpoints, then placed and scaled: ((x + 20)·2, (y + 10)·2)
    assert _ring(poly) == [(44, 23), (45, 22), (46, 23), (45, 24)]
    assert poly.exterior.is_ccw and poly.area == 0.5 * 4
    assert row["area_px"] == 4 and row["area_um2"] == 4 * 0.0625
    assert row["perimeter_px"] == pytest.approx(4 * np.sqrt(2), rel=1e-15)
    assert row["circularity"] == pytest.approx(np.pi / 4, rel=1e-15)
    assert (row["centroid_x"], row["centroid_y"]) == (45, 23)
    assert (row["bbox_x0"], row["bbox_y0"], row["bbox_x1"], row["bbox_y1"]) == (44, 22, 46, 24)
    assert row["solidity"] == 1 and row["eccentricity"] == 0


def test_keep_and_per_object_scores():
    lab = np.zeros((6, 6), np.int32)
    lab[0:2, 0:2] = 3
    lab[3:5, 3:6] = 5
    lab[5, 0] = 7
    t = measure_instances(lab, scores=np.arange(7, dtype=np.float64) / 10, keep=np.array([5, 7]), id_offset=10)
    assert t["id"].tolist() == [11, 12] and t["area_px"].tolist() == [6, 1]
    assert t["score"].tolist() == [0.4, 0.6]  # scores[id - 1] of the original ids
    empty = measure_instances(np.zeros((2, 2), np.int32), np.zeros((2, 2, 3), np.uint8), scores=np.zeros((2, 2)),
                              mpp=0.5)
    assert list(empty.columns) == list(table_columns()) and len(empty) == 0
