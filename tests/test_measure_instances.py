"""Polygons and measurements on small hand-made label images."""

import numpy as np
import pytest
from skimage.draw import disk

from histosam.measure import instances_to_features, label_polygons, mask_polygon, measure_instances


def _labels():
    lab = np.zeros((12, 14), np.uint32)
    lab[1:4, 2:6] = 1  # 3x4 block
    lab[6:11, 1:6] = 2  # 5x5 block with a one-pixel hole
    lab[8, 3] = 0
    lab[6, 9] = lab[7, 10] = 4  # two diagonal pixels (8-connected)
    return lab


def test_polygon_geometry_exact():
    polys = label_polygons(_labels())
    assert list(polys) == [1, 2, 4]
    assert polys[1].area == pytest.approx(11.5)  # 12 px minus 4 cut corners of 1/8
    assert polys[1].bounds == (2.0, 1.0, 6.0, 4.0)  # x0, y0, x1, y1 on pixel borders
    assert len(polys[2].interiors) == 1 and polys[2].area == pytest.approx(
        25 - 0.5 - 0.5
    )  # 5x5 block, cut corners, diamond hole
    assert all(p.is_valid and not p.is_empty for p in polys.values())
    single = mask_polygon(np.ones((1, 1), bool), offset=(10, 20))
    assert single.centroid.x == pytest.approx(20.5) and single.centroid.y == pytest.approx(10.5)


def test_polygon_area_close_to_pixel_area_and_offset():
    lab = np.zeros((60, 60), np.int32)
    rr, cc = disk((30, 30), 12)
    lab[rr, cc] = 7
    p = label_polygons(lab, offset=(100, 200))[7]
    assert p.is_valid and abs(p.area - len(rr)) / len(rr) < 0.02
    assert p.centroid.x == pytest.approx(230.5, abs=0.05) and p.centroid.y == pytest.approx(130.5, abs=0.05)
    assert len(label_polygons(lab, simplify=0.5)[7].exterior.coords) < len(p.exterior.coords)


def test_measurements_exact():
    lab = _labels()
    img = np.full(lab.shape + (3,), 255, np.uint8)
    img[lab == 1] = (90, 40, 160)
    scores = np.where(lab == 2, 0.75, 0.25)
    t = measure_instances(lab, img, scores=scores, mpp=0.5, offset=(10, 20), id_offset=100)
    assert t["id"].tolist() == [101, 102, 104]
    assert t["area_px"].tolist() == [12, 24, 2]
    assert t["centroid_x"].iloc[0] == 20 + 3.5 + 0.5 and t["centroid_y"].iloc[0] == 10 + 2 + 0.5
    assert t["area_um2"].tolist() == [3.0, 6.0, 0.5]
    assert t[["bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"]].iloc[0].tolist() == [22, 11, 26, 14]
    assert t["solidity"].iloc[0] == pytest.approx(1.0)
    assert t["score"].tolist() == [0.25, 0.75, 0.25]
    assert t["mean_od_hematoxylin"].iloc[0] > 0 and t["mean_od_hematoxylin"].iloc[1] == pytest.approx(0, abs=1e-9)
    assert t["eccentricity"].iloc[1] == pytest.approx(0, abs=1e-6)  # square with centred hole


def test_features_carry_measurements():
    feats, table = instances_to_features(_labels(), mpp=0.25, id_namespace="img")
    assert len(feats) == len(table) == 3
    f = feats[0]
    assert f["type"] == "Feature" and f["geometry"]["type"] == "Polygon"
    assert f["properties"]["objectType"] == "detection"
    assert f["properties"]["measurements"]["area_px"] == 12
    assert f["properties"]["classification"]["name"] == "Nucleus"
    assert feats == instances_to_features(_labels(), mpp=0.25, id_namespace="img")[0]  # deterministic ids


def test_vectorised_measurements_equal_regionprops():
    """Centroids, areas, boxes, eccentricity, solidity and stain/score means equal regionprops
    (ids with gaps, touching objects, holes, one-pixel and line-shaped objects)."""
    from skimage.measure import regionprops_table
    from skimage.segmentation import expand_labels

    rng = np.random.default_rng(4)
    seeds = np.zeros((120, 150), np.int64)
    seeds[rng.integers(0, 120, 60), rng.integers(0, 150, 60)] = rng.choice(np.arange(1, 400), 60, replace=False)
    labels = expand_labels(seeds, 4)
    labels[labels == labels.max()] = 0  # a gap in the ids
    labels[50:53, 60] = 1000  # a vertical line
    labels[5, 5] = 1001  # one pixel
    labels[(np.arange(120)[:, None] % 7 == 3) & (np.arange(150) % 9 == 4)] = 0  # holes
    image = rng.integers(0, 256, (120, 150, 3), dtype=np.uint8)
    scores = rng.random((120, 150))
    ours = measure_instances(labels, image, scores=scores)
    from skimage.color import rgb2hed

    hed = rgb2hed(image)
    ref = regionprops_table(labels, intensity_image=np.stack([hed[..., 0], hed[..., 1], scores], -1),
                            properties=("label", "area", "centroid", "bbox", "eccentricity", "intensity_mean",
                                        "perimeter", "solidity"))
    np.testing.assert_array_equal(ours["id"], ref["label"])
    np.testing.assert_array_equal(ours["area_px"], ref["area"])
    np.testing.assert_allclose(ours["centroid_x"], ref["centroid-1"] + 0.5, atol=1e-9)
    np.testing.assert_allclose(ours["centroid_y"], ref["centroid-0"] + 0.5, atol=1e-9)
    for ours_col, ref_col in (("bbox_y0", "bbox-0"), ("bbox_x0", "bbox-1"), ("bbox_y1", "bbox-2"),
                              ("bbox_x1", "bbox-3")):
        np.testing.assert_array_equal(ours[ours_col], ref[ref_col])
    np.testing.assert_allclose(ours["eccentricity"], ref["eccentricity"], atol=1e-7)
    # perimeter: length of the outline's outer ring(s) (histosam.measure's convention, not skimage's perimeter)
    polys = label_polygons(labels)
    outer = [sum(p.exterior.length for p in getattr(polys[i], "geoms", [polys[i]])) for i in ours["id"]]
    np.testing.assert_allclose(ours["perimeter_px"], outer, rtol=1e-12)
    np.testing.assert_allclose(ours["circularity"], [4 * np.pi * polys[i].area / p**2 for i, p in
                                                     zip(ours["id"], outer)], rtol=1e-12)
    assert (ours["circularity"] <= 1).all()
    np.testing.assert_allclose(ours["solidity"], ref["solidity"], atol=1e-12)
    for k, col in enumerate(("mean_od_hematoxylin", "mean_od_eosin", "score")):
        np.testing.assert_allclose(ours[col], ref[f"intensity_mean-{k}"], atol=1e-9)


def _random_labels(rng: np.random.Generator, size: tuple[int, int], max_ids: int, density: tuple[float, float],
                   overwrite: bool) -> np.ndarray:
    """Scattered, multi-part, sometimes dilated objects with ids 3·i (or 5·i when later ids overwrite earlier
    ones, which makes touching objects, holes and islands)."""
    from scipy import ndimage as ndi

    h, w = rng.integers(*size, 2)
    labels = np.zeros((h, w), np.int64)
    for i in range(1, int(rng.integers(2, max_ids))):
        m = rng.random((h, w)) < rng.uniform(*density)
        m = ndi.binary_dilation(m, iterations=int(rng.integers(0, 3))) if rng.random() < 0.5 else m
        labels[m if overwrite else m & (labels == 0)] = (5 if overwrite else 3) * i
    return labels


def test_convex_areas_equal_convex_hull_image_on_random_shapes():
    """The all-at-once hull pixel counts equal skimage's convex_hull_image object by object, on scattered,
    multi-part, dilated and single-pixel objects (boundary pixels on hull edges and vertices included)."""
    from skimage.morphology import convex_hull_image

    from histosam.measure.features import _convex_areas

    rng = np.random.default_rng(1)
    checked = 0
    for _ in range(80):
        labels = _random_labels(rng, (5, 50), 10, (0.005, 0.2), overwrite=False)
        present = np.unique(labels[labels > 0])
        expected = [np.count_nonzero(convex_hull_image(labels == i)) for i in present]
        np.testing.assert_array_equal(_convex_areas(labels, present), expected)
        checked += len(present)
    assert checked > 200
    np.testing.assert_array_equal(_convex_areas(labels, present[1:]), expected[1:])  # a subset of the ids
    assert len(_convex_areas(np.zeros((4, 4), np.int64), np.zeros(0, np.int64))) == 0


def _find_contours_outline(mask: np.ndarray) -> object:
    """Reference outline: skimage's marching squares per object, rings combined by parity (pixel frame)."""
    from functools import reduce

    from shapely.geometry import Polygon
    from skimage.measure import find_contours

    rings = [Polygon(np.column_stack([c[:, 1] - 0.5, c[:, 0] - 0.5]))
             for c in find_contours(np.pad(mask, 1).astype(np.uint8), 0.5, fully_connected="high")]
    return reduce(lambda a, b: a.symmetric_difference(b), rings)


def test_traced_outlines_equal_find_contours_on_random_labels():
    """All-at-once tracing gives, object by object, the same region as skimage's find_contours on the object's
    mask (touching ids, holes, islands in holes, diagonal pixels, objects on the image border)."""

    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(40):
        labels = _random_labels(rng, (4, 40), 8, (0.02, 0.3), overwrite=True)
        polys = label_polygons(labels)
        assert list(polys) == sorted(np.unique(labels[labels > 0]))
        simplified = label_polygons(labels, simplify=0.7)
        for i, geom in polys.items():
            ref = _find_contours_outline(labels == i)
            assert geom.is_valid and geom.symmetric_difference(ref).area < 1e-9, i
            assert simplified[i].is_valid and not simplified[i].is_empty
            assert simplified[i].symmetric_difference(geom).area <= 0.7 * geom.length
            checked += 1
    assert checked > 100
