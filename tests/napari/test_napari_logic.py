"""The plugin's logic without napari or Qt: the annotator controller, automatic segmentation, regions, the writer,
the slide levels (these run in the main test job too)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from histosam.napari._annotator import AnnotatorController


@pytest.fixture(scope="module")
def controller(nano, crop, mpp):
    c = AnnotatorController(nano, precision="fp32")
    c.set_image(crop, mpp=mpp, origin=(200, 300))
    steps = list(c.embedding_steps())
    assert steps[0] == (0, steps[-1][1]) and steps[-1][0] == steps[-1][1] and c.embedding_ready
    return c


def test_point_prompt_equals_predictor(controller, nano, crop, mpp):
    import histosam

    ref = histosam.Predictor(nano, precision="fp32")
    ref.set_image(crop, mpp=mpp)
    controller.clear_object()
    x, y = 128.0, 100.0  # region pixels; the controller takes image-layer (row, col): origin + (y, x)
    mask = controller.segment(np.array([[200 + y, 300 + x]]), np.array([True]))
    pred = ref.predict(points=[[x, y]], labels=[1], multimask=True)
    best = int(np.argmax(pred.scores[0]))
    np.testing.assert_array_equal(mask, pred.masks[0, best])
    assert mask.any()
    # correction: a negative point, the previous mask fed back
    mask2 = controller.segment(np.array([[200 + y, 300 + x], [200 + y + 6, 300 + x + 6]]), np.array([True, False]))
    pred2 = ref.predict(points=[[x, y], [x + 6, y + 6]], labels=[1, 0], multimask=False,
                        mask_input=pred.low_res_logits[0, best][None], mask_origin=pred.tile_origin[0])
    np.testing.assert_array_equal(mask2, pred2.masks[0, 0])


def test_prompts_outside_region_and_box(controller):
    pts, lbl, box = controller.prompts(np.array([[0.0, 0.0], [210.0, 310.0]]), np.array([True, False]),
                                       np.array([[190.0, 290.0], [260.0, 350.0]]))
    np.testing.assert_array_equal(pts, [[10.0, 10.0]])  # (x, y) in the region; the first point is outside
    np.testing.assert_array_equal(lbl, [0])
    np.testing.assert_array_equal(box, [0.0, 0.0, 50.0, 60.0])  # clipped to the region
    controller.clear_object()
    mask = controller.segment(box_rc=np.array([[290.0, 400.0], [320.0, 430.0]]))
    assert mask.shape == controller.shape and mask.any()
    assert not controller.segment().any()  # no prompt: empty, and the object is cleared
    assert controller.current is None


def test_commit_undo(controller):
    labels = np.zeros(controller.shape, np.uint32)
    labels[:4, :4] = 7  # an existing object: new ids continue after it
    controller.clear_object()
    controller.segment(np.array([[300.0, 428.0]]))
    current = controller.current.copy()
    assert controller.commit(labels, "epithelial") == 8
    assert controller.current is None  # committed: the next prompts start a new object
    assert (labels[current] == 8).all() and controller.classes == {8: "epithelial"}
    controller.segment(np.array([[260.0, 360.0]]))
    assert controller.commit(labels) == 9
    assert controller.undo(labels) == 9 and 9 not in labels
    assert controller.undo(labels) == 8
    assert set(np.unique(labels)) == {0, 7} and controller.classes == {}
    assert controller.undo(labels) is None
    assert controller.commit(labels) is None  # nothing to commit


def test_embedding_file_reused(nano, crop, mpp, tmp_path):
    path = tmp_path / "crop.emb"
    a = AnnotatorController(nano)
    a.set_image(crop, mpp=mpp)
    a.compute_embedding(path)
    assert path.exists()
    b = AnnotatorController(nano)
    b.set_image(crop, mpp=mpp)
    assert list(b.embedding_steps(path)) == [(1, 1)] and b.embedding_ready  # loaded, not computed


def test_automatic_equals_segment(nano, crop, mpp):
    import histosam
    from histosam.napari._automatic import default_params, run_automatic

    res = run_automatic(crop, nano, mpp=mpp, origin=(200, 300))
    np.testing.assert_array_equal(res.labels, histosam.segment(crop, model=nano, mpp=mpp))
    assert not res.typed and res.labels.max() > 5
    n = int(res.labels.max())
    assert res.centroids.shape == (n, 2)
    rows, cols = np.nonzero(res.labels == 1)
    np.testing.assert_allclose(res.centroids[0], [200 + rows.mean(), 300 + cols.mean()])
    params = default_params(nano)
    assert set(params) == {"foreground_threshold", "center_distance_threshold", "boundary_distance_threshold",
                           "min_size"}


def test_region_read_and_clip():
    from histosam.errors import HistosamError
    from histosam.napari import _region

    class Layer:
        data = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
        rgb, multiscale, metadata = True, False, {"mpp": "0.5"}

    assert _region.image_shape(Layer) == (20, 30) and _region.layer_mpp(Layer) == 0.5
    np.testing.assert_array_equal(_region.read_box(Layer, (2, 3, 5, 9)), Layer.data[2:5, 3:9])
    assert _region.clip_box((-5, -5, 50, 10), (20, 30)) == (0, 0, 20, 10)
    with pytest.raises(HistosamError, match="no image pixels"):
        _region.clip_box((25, 0, 30, 10), (20, 30))
    with pytest.raises(HistosamError, match="zoom in"):
        _region.read_box(Layer, (0, 0, 20, 30), limit=100)


def test_writer_geojson(tmp_path):
    import shapely.geometry

    from histosam.napari._writer import write_labels

    labels = np.zeros((40, 50), np.uint16)
    labels[5:15, 5:12] = 1
    labels[20:30, 30:45] = 2
    meta = {"translate": (100.0, 200.0), "metadata": {"mpp": 0.5, "histosam_classes": {2: "epithelial"},
                                                      "histosam_class_colors": {"epithelial": [200, 0, 0]}}}
    paths = write_labels(str(tmp_path / "objects.geojson"), labels, meta)
    assert paths[0].endswith("objects.geojson") and paths[1].endswith("objects_nuclei.csv")
    data = json.loads((tmp_path / "objects.geojson").read_text())
    feats = data["features"]
    assert data["type"] == "FeatureCollection" and len(feats) == 2
    shapes = [shapely.geometry.shape(f["geometry"]) for f in feats]
    assert all(s.is_valid for s in shapes)
    assert shapes[0].bounds == pytest.approx((205, 105, 212, 115), abs=0.51)  # x, y shifted by the translate
    assert shapes[0].area == pytest.approx(70, rel=0.15)
    assert feats[1]["properties"]["classification"] == {"name": "epithelial", "color": [200, 0, 0]}
    assert feats[0]["properties"]["classification"]["name"] == "Nucleus"
    assert "area_um2" in feats[0]["properties"]["measurements"]
    import pandas as pd

    table = pd.read_csv(tmp_path / "objects_nuclei.csv")
    assert list(table["id"]) == [1, 2] and table["classification"].fillna("").tolist() == ["", "epithelial"]


def test_slide_levels_lazy(tmp_path):
    from histosam.napari._reader import get_reader, read_slide
    from histosam.wsi.synthetic import default_patches, render_region, write_synthetic_slide

    path = write_synthetic_slide(tmp_path / "syn.tif", 1100, 900, mpp=0.5, levels=3)
    assert get_reader(str(path)) is read_slide
    plain = tmp_path / "plain.tif"
    import tifffile

    tifffile.imwrite(plain, np.zeros((32, 32, 3), np.uint8))
    assert get_reader(str(plain)) is None  # a plain TIFF is left to napari
    assert get_reader(str(tmp_path / "x.png")) is None
    [(levels, kwargs, kind)] = read_slide(str(path))
    assert kind == "image" and kwargs["multiscale"] and kwargs["rgb"] and kwargs["metadata"]["mpp"] == 0.5
    assert [lv.shape for lv in levels] == [(900, 1100, 3), (450, 550, 3), (225, 275, 3)]
    np.testing.assert_array_equal(np.asarray(levels[0][100:180, 1000:1100]),
                                  render_region(1000, 100, 100, 80, default_patches(1100, 900)))
    low = np.asarray(levels[2][10:20, 30:40])
    assert low.shape == (10, 10, 3) and low.dtype == np.uint8


def test_region_model_gives_tissue_regions(tiny_tissue, crop, mpp):
    from histosam.napari._automatic import RegionResult, is_region_model, run_automatic
    from histosam.tasks.tissue import segment_tissue

    assert is_region_model(tiny_tissue)
    res = run_automatic(crop, tiny_tissue, mpp=mpp, origin=(200, 300))  # mode / typed do not apply
    ref = segment_tissue(crop, tiny_tissue, mpp=mpp)
    assert isinstance(res, RegionResult) and res.origin == (200, 300)
    np.testing.assert_array_equal(res.instances, ref.instances)
    np.testing.assert_array_equal(res.class_map, ref.class_map)
    assert res.instance_classes == ref.instance_classes and len(res.instance_classes) >= 2
    assert res.class_names == ("background", "gland") and res.colors == [[0, 0, 0], [0, 160, 80]]
    assert res.counts() == {"gland": len(ref.instance_classes)}
    assert sorted(res.polygons) == sorted(ref.instance_classes)
    for i, geom in res.polygons.items():  # outlines of the instances, in the region's pixels (x = column)
        rows, cols = np.nonzero(ref.instances == i)
        assert geom.is_valid and geom.area == pytest.approx(len(rows), rel=0.1)
        assert geom.bounds == pytest.approx((cols.min(), rows.min(), cols.max() + 1, rows.max() + 1), abs=0.51)
    # nuclei models are not region models
    from histosam.napari._models import get_model

    assert not is_region_model(get_model(None, "cpu"))


def test_writer_regions_as_annotations(tmp_path):
    import shapely.geometry

    from histosam.napari._writer import UNCLASSIFIED_REGION, write_labels

    labels = np.zeros((40, 50), np.int32)
    labels[5:15, 5:12] = 1
    labels[20:30, 30:45] = 2
    labels[32:38, 2:8] = 3  # painted by hand: no class
    meta = {"translate": (100.0, 200.0), "metadata": {
        "mpp": 0.5, "histosam_tissue_classes": ["background", "benign", "malignant"],
        "histosam_classes": {1: "benign", 2: "malignant"},
        "histosam_class_colors": {"background": [0, 0, 0], "benign": [0, 160, 80], "malignant": [200, 40, 40]}}}
    paths = write_labels(str(tmp_path / "regions.geojson"), labels, meta)
    assert paths[0].endswith("regions.geojson") and paths[1].endswith("regions_regions.csv")
    feats = json.loads((tmp_path / "regions.geojson").read_text())["features"]
    assert len(feats) == 3
    assert [f["properties"]["objectType"] for f in feats] == ["annotation"] * 3
    assert [f["properties"]["classification"] for f in feats] == [
        {"name": "benign", "color": [0, 160, 80]}, {"name": "malignant", "color": [200, 40, 40]},
        {"name": UNCLASSIFIED_REGION, "color": [128, 128, 128]}]
    shapes = [shapely.geometry.shape(f["geometry"]) for f in feats]
    assert all(s.is_valid and s.geom_type == "Polygon" for s in shapes)
    assert shapes[0].bounds == pytest.approx((205, 105, 212, 115), abs=0.51)  # x, y shifted by the translate
    assert feats[1]["properties"]["measurements"]["Area µm^2"] == pytest.approx(150 * 0.25, rel=0.05)
    import pandas as pd

    table = pd.read_csv(tmp_path / "regions_regions.csv")
    assert list(table["class"]) == ["benign", "malignant", UNCLASSIFIED_REGION]


def test_model_choices_list_the_registry():
    from histosam.napari._models import DEFAULT_CHOICE, model_choices
    from histosam.registry.entries import DEFAULT_MODEL, REGISTRY

    choices = model_choices()
    assert choices[0] == DEFAULT_CHOICE
    assert set(choices[1:]) == set(REGISTRY) - {DEFAULT_MODEL}  # histosam-tissue too, once it is registered
