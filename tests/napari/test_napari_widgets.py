"""The plugin in a napari viewer (headless: `xvfb-run -a python -m pytest tests/napari`): manifest, widgets, a click
→ the predictor's mask, commit / undo, AIS = histosam.segment, typed nuclei, the event loop during the embedding."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("napari.viewer", reason="napari is not installed (pip install -e '.[napari-test]')")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed")

from histosam.napari._widgets_annotator import CURRENT, OBJECTS, PROMPTS, AnnotatorWidget  # noqa: E402
from histosam.napari._widgets_automatic import ROI, AutomaticWidget  # noqa: E402

WAIT_MS = 180_000


def wait(qtbot, worker) -> None:
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
        pass


def annotator(viewer, image, mpp, **layer):
    viewer.add_image(image, name="he", rgb=True, metadata={"mpp": mpp}, **layer)
    widget = AnnotatorWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.model_picker.set_choice("histosam-nano")
    widget.device.setCurrentText("cpu")
    widget.precision.setCurrentText("fp32")
    return widget


def test_manifest_and_dock_widgets(make_napari_viewer):
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("histosam")
    assert manifest.name == "histosam"
    widgets = {w.display_name for w in manifest.contributions.widgets}
    assert widgets == {"Annotator", "Automatic segmentation"}
    viewer = make_napari_viewer()
    for name in sorted(widgets):
        dock, widget = viewer.window.add_plugin_dock_widget("histosam", name)
        assert isinstance(widget, AnnotatorWidget | AutomaticWidget)
    # sample data through napari's own menu path
    viewer.open_sample("histosam", "cmu1")
    layer = viewer.layers[-1]
    assert layer.data.shape == (768, 768, 3) and layer.metadata["mpp"] == pytest.approx(0.499)


def test_click_commit_undo(make_napari_viewer, qtbot, crop, mpp, nano):
    import histosam

    viewer = make_napari_viewer()
    widget = annotator(viewer, crop, mpp, translate=(40, 60))  # a translated image: prompts map to its pixels
    wait(qtbot, widget.compute_embedding())
    assert widget.controller is not None and widget.controller.embedding_ready
    for name in (PROMPTS, CURRENT, OBJECTS, "histosam box"):
        assert name in viewer.layers
    prompts = viewer.layers[PROMPTS]
    x, y = 128, 100
    # a click in add mode at world (40 + y, 60 + x), i.e. image pixel (y, x)
    prompts.add(prompts.world_to_data([40 + y, 60 + x]))
    current = viewer.layers[CURRENT].data.astype(bool)
    ref = histosam.Predictor(nano, precision="fp32")
    ref.set_image(crop, mpp=mpp)
    pred = ref.predict(points=[[x, y]], labels=[1], multimask=True)
    expected = pred.masks[0, int(np.argmax(pred.scores[0]))]
    assert expected.any()
    np.testing.assert_array_equal(current, expected)
    np.testing.assert_array_equal(viewer.layers[CURRENT].translate, [40, 60])
    # a negative click corrects it (the previous mask fed back)
    widget.toggle_point_mode()
    prompts.add(prompts.world_to_data([40 + y + 6, 60 + x + 6]))
    assert bool(prompts.features["positive"].iloc[-1]) is False
    corrected = ref.predict(points=[[x, y], [x + 6, y + 6]], labels=[1, 0],
                            mask_input=pred.low_res_logits[0, int(np.argmax(pred.scores[0]))][None],
                            mask_origin=pred.tile_origin[0])
    np.testing.assert_array_equal(viewer.layers[CURRENT].data.astype(bool), corrected.masks[0, 0])
    # commit: a new id in the objects layer, prompts and current object cleared
    assert widget.commit() == 1
    objects = viewer.layers[OBJECTS]
    np.testing.assert_array_equal(objects.data == 1, corrected.masks[0, 0])
    assert len(prompts.data) == 0 and not viewer.layers[CURRENT].data.any()
    widget.toggle_point_mode()
    prompts.add(prompts.world_to_data([40 + 30, 60 + 200]))
    assert viewer.layers[CURRENT].data.any()
    assert widget.commit() == 2 and 2 in objects.data
    assert widget.undo() == 2 and 2 not in objects.data and 1 in objects.data
    widget.clear()
    assert not viewer.layers[CURRENT].data.any()


def test_box_prompt_and_shortcut(make_napari_viewer, qtbot, crop, mpp):
    """A rectangle in the box layer, segmented by the keyboard shortcut (segment on click off)."""
    viewer = make_napari_viewer()
    widget = annotator(viewer, crop, mpp)
    widget.auto_segment.setChecked(False)
    wait(qtbot, widget.compute_embedding())
    viewer.layers["histosam box"].add_rectangles(np.array([[80, 110], [120, 150]]))
    assert not viewer.layers[CURRENT].data.any()  # segment on click is off
    from napari.utils.key_bindings import KeyBinding

    from histosam.napari._widgets_annotator import KEYS

    action = viewer.keymap[KeyBinding.from_str(KEYS["segment"])]  # the shortcut, bound on the viewer
    action(viewer)
    mask = viewer.layers[CURRENT].data.astype(bool)
    pred = widget.controller.predictor.predict(box=[110, 80, 150, 120])  # the box as (x0, y0, x1, y1)
    assert mask.any()
    np.testing.assert_array_equal(mask, pred.masks[0, 0])


def test_event_loop_runs_while_embedding(make_napari_viewer, qtbot, example, mpp):
    """The embedding of the bundled example (16 tiles of histosam-nano) is computed in a worker thread: the Qt
    event loop keeps processing timer events meanwhile."""
    from qtpy.QtCore import QTimer

    viewer = make_napari_viewer()
    widget = annotator(viewer, example, mpp)
    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(20)
    progress: list[tuple] = []
    t0 = time.perf_counter()
    worker = widget.compute_embedding()
    worker.yielded.connect(progress.append)
    assert widget.cancel_button.isEnabled() and not widget.compute_button.isEnabled()
    wait(qtbot, worker)
    elapsed = time.perf_counter() - t0
    timer.stop()
    assert widget.controller.embedding_ready
    totals = [p[2] for p in progress if p[0] == "computing the embedding"]
    assert totals and totals[-1] == 16
    during = [t for t in ticks if t0 < t < t0 + elapsed]
    # the UI thread was free: timer events all along (not one burst at the end)
    assert len(during) >= max(5, 0.1 * elapsed / 0.02), (len(during), elapsed)
    assert max(np.diff([t0, *during])) < 0.5 * elapsed
    print(f"embedding of the example: {elapsed:.2f} s, {len(during)} timer events meanwhile")


def test_cancel_embedding(make_napari_viewer, qtbot, example, mpp):
    viewer = make_napari_viewer()
    widget = annotator(viewer, example, mpp)
    worker = widget.compute_embedding()
    seen = []

    def on_progress(value):
        seen.append(value)
        if value[0] == "computing the embedding" and value[1] >= 1:
            widget.cancel()

    worker.yielded.connect(on_progress)
    with qtbot.waitSignal(worker.aborted, timeout=WAIT_MS):
        pass
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert widget.controller is None and not widget.segment_button.isEnabled()
    assert widget.compute_button.isEnabled()


def test_automatic_equals_segment_and_roi(make_napari_viewer, qtbot, crop, mpp, nano):
    import histosam

    viewer = make_napari_viewer()
    viewer.add_image(crop, name="he", rgb=True, metadata={"mpp": mpp})
    widget = AutomaticWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.mpp.value() == pytest.approx(mpp)
    widget.model_picker.set_choice("histosam-nano")
    widget.device.setCurrentText("cpu")
    wait(qtbot, widget.run())
    layer = viewer.layers["he nuclei"]
    expected = histosam.segment(crop, model=nano, mpp=mpp)
    np.testing.assert_array_equal(layer.data, expected)
    defaults = nano.config.postprocess or {}
    if "foreground_threshold" in defaults:  # the fields now show the model's defaults
        assert widget.params["foreground_threshold"].value() == pytest.approx(defaults["foreground_threshold"],
                                                                             abs=1e-3)
    assert f"{int(expected.max())} nuclei" in widget.status.text()
    # an ROI: the region's labels at its offset
    roi = widget.add_roi_layer()
    roi.add_rectangles(np.array([[20, 30], [150, 170]]))
    wait(qtbot, widget.run())
    part = viewer.layers[-1]
    assert part.data.shape == (130, 140)
    np.testing.assert_array_equal(part.translate, [20, 30])
    np.testing.assert_array_equal(part.data, histosam.segment(crop[20:150, 30:170], model=nano, mpp=mpp))
    assert ROI in viewer.layers


def test_typed_nuclei(make_napari_viewer, qtbot, crop, mpp):
    from histosam.napari._models import get_model
    from histosam.tasks.nuclei import segment_typed_nuclei

    viewer = make_napari_viewer()
    viewer.add_image(crop, name="he", rgb=True, metadata={"mpp": mpp})
    widget = AutomaticWidget(viewer)
    widget.model_picker.set_choice("histosam-nano-classes")
    widget.device.setCurrentText("cpu")
    wait(qtbot, widget.run())
    model = get_model("histosam-nano-classes", "cpu")
    ref = segment_typed_nuclei(crop, model, mpp)
    np.testing.assert_array_equal(viewer.layers["he nuclei"].data, ref.labels)
    classes = viewer.layers["he nucleus classes"]
    lut = np.concatenate([[0], ref.classes])
    np.testing.assert_array_equal(classes.data, lut[ref.labels])
    points = viewer.layers["he nucleus centroids"]
    assert len(points.data) == ref.labels.max()
    assert list(points.features["class"]) == [ref.class_names[k] for k in ref.classes]
    meta = viewer.layers["he nuclei"].metadata
    assert meta["histosam_classes"][1] == ref.class_names[ref.classes[0]]
    assert set(meta["histosam_class_colors"]) == set(ref.class_names)
    # a class's colour in the class layer is the model's colour of that class
    k = int(ref.classes[0])
    color = classes.colormap.map(np.array([k]))[0]
    np.testing.assert_allclose(color[:3], np.array(meta["histosam_class_colors"][ref.class_names[k]]) / 255,
                               atol=0.01)


def test_region_model_tissue_regions(make_napari_viewer, qtbot, crop, mpp, tiny_tissue_path, tmp_path):
    """A region model in the automatic widget: region instances, the coloured class map and the outlines, equal to
    segment_tissue on the same pixels; the region layer saves as QuPath annotations with classes."""
    import json

    import shapely.geometry

    from histosam.napari._models import get_model
    from histosam.tasks.tissue import segment_tissue

    viewer = make_napari_viewer()
    viewer.add_image(crop, name="he", rgb=True, metadata={"mpp": mpp}, translate=(200, 300))
    widget = AutomaticWidget(viewer)
    widget.model_picker.set_choice(tiny_tissue_path)
    widget.device.setCurrentText("cpu")
    wait(qtbot, widget.run())
    ref = segment_tissue(crop, get_model(tiny_tissue_path, "cpu"), mpp=mpp)
    regions = viewer.layers["he regions"]
    np.testing.assert_array_equal(regions.data, ref.instances)
    np.testing.assert_array_equal(regions.translate, [200, 300])
    assert regions.metadata["histosam_classes"] == ref.instance_classes and len(ref.instance_classes) >= 2
    assert regions.metadata["histosam_tissue_classes"] == ["background", "gland"]
    classes = viewer.layers["he tissue classes"]
    np.testing.assert_array_equal(classes.data, ref.class_map)
    np.testing.assert_allclose(classes.colormap.map(np.array([1]))[0][:3], np.array([0, 160, 80]) / 255, atol=0.01)
    assert classes.colormap.map(np.array([0]))[0][3] == 0  # background transparent
    outlines = viewer.layers["he region outlines"]
    assert sorted(set(outlines.features["id"])) == sorted(ref.instance_classes)
    assert list(outlines.features["class"]) == [ref.instance_classes[i] for i in outlines.features["id"]]
    assert all(t == "polygon" for t in outlines.shape_type)
    # each outline lies on its region (napari pixel centres at integer data coordinates)
    for poly, i in zip(outlines.data, outlines.features["id"]):
        rows, cols = np.nonzero(ref.instances == i)
        assert poly[:, 0].min() == pytest.approx(rows.min() - 0.5, abs=0.51)
        assert poly[:, 1].max() == pytest.approx(cols.max() + 0.5, abs=0.51)
    assert f"{len(ref.instance_classes)} tissue regions: {len(ref.instance_classes)} gland" in widget.status.text()
    # saved through napari: QuPath annotations with the model's classes, in the image's pixels
    out = tmp_path / "regions.geojson"
    assert str(out) in regions.save(str(out), plugin="histosam")
    feats = json.loads(out.read_text())["features"]
    assert len(feats) == len(ref.instance_classes)
    for f in feats:
        assert f["properties"]["objectType"] == "annotation"
        assert f["properties"]["classification"] == {"name": "gland", "color": [0, 160, 80]}
        g = shapely.geometry.shape(f["geometry"])
        assert g.is_valid and g.geom_type in ("Polygon", "MultiPolygon")
        assert 300 <= g.bounds[0] and g.bounds[2] <= 300 + crop.shape[1] and 200 <= g.bounds[1]
    assert (tmp_path / "regions_regions.csv").exists()


def test_annotator_commit_with_class(make_napari_viewer, qtbot, crop, mpp):
    viewer = make_napari_viewer()
    widget = annotator(viewer, crop, mpp)
    widget.model_picker.set_choice("histosam-nano-classes")
    wait(qtbot, widget.compute_embedding())
    assert widget.class_combo.isVisible() or widget.class_combo.count() > 0
    viewer.layers[PROMPTS].add([100, 128])
    assert widget.commit() == 1
    names = widget.controller.class_names
    cls = viewer.layers[OBJECTS].metadata["histosam_classes"][1]
    assert cls in names[1:]
    widget.class_combo.setCurrentText(names[2])
    viewer.layers[PROMPTS].add([30, 200])
    assert widget.commit() == 2
    assert viewer.layers[OBJECTS].metadata["histosam_classes"][2] == names[2]


def test_slide_reader_multiscale(make_napari_viewer, tmp_path):
    from histosam.wsi.synthetic import write_synthetic_slide

    path = write_synthetic_slide(tmp_path / "syn.tif", 2048, 1536, mpp=0.5, levels=3)
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin="histosam")
    assert layer.multiscale and layer.rgb and len(layer.data) == 3
    assert layer.data[0].shape == (1536, 2048, 3) and layer.metadata["mpp"] == 0.5
    viewer.reset_view()
    from histosam.napari._region import visible_box

    box = visible_box(viewer, layer)
    assert box[0] == 0 and box[1] == 0 and box[2] == 1536 and box[3] == 2048  # everything in view
    viewer.camera.zoom = viewer.camera.zoom * 8
    small = visible_box(viewer, layer)
    assert (small[2] - small[0]) < 1536 / 4 and (small[3] - small[1]) < 2048 / 4


def test_cmu1_slide_reader(make_napari_viewer, shared_data):
    path = shared_data / "wsi" / "CMU-1-Small-Region.svs"
    if not path.exists():
        pytest.skip("CMU-1-Small-Region.svs is not in ../shared/data/wsi")
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin="histosam")
    assert layer.metadata["mpp"] == pytest.approx(0.499, abs=1e-3)
    levels = layer.data if layer.multiscale else [layer.data]
    assert levels[0].shape == (2967, 2220, 3)
    from histosam.wsi.reader import open_slide

    with open_slide(path) as s:
        np.testing.assert_array_equal(np.asarray(levels[0][720:1000, 800:1100]), s.read_region(800, 720, 300, 280))


def test_writer_through_napari(make_napari_viewer, tmp_path):
    import json

    import shapely.geometry

    viewer = make_napari_viewer()
    labels = np.zeros((60, 80), np.uint32)
    labels[10:20, 10:25] = 1
    labels[30:50, 40:70] = 2
    layer = viewer.add_labels(labels, name="objects", metadata={"mpp": 0.25})
    out = tmp_path / "objects.geojson"
    written = layer.save(str(out), plugin="histosam")
    assert str(out) in written
    feats = json.loads(out.read_text())["features"]
    assert [shapely.geometry.shape(f["geometry"]).is_valid for f in feats] == [True, True]
    assert (tmp_path / "objects_nuclei.csv").exists()


def test_slide_visible_field_annotator_and_ais(make_napari_viewer, qtbot, tmp_path, nano):
    """On a multiscale slide the widgets work on the visible field, read at level 0, results at its offset."""
    import histosam
    from histosam.napari._region import visible_box
    from histosam.wsi.synthetic import write_synthetic_slide

    path = write_synthetic_slide(tmp_path / "syn.tif", 2048, 1536, mpp=0.5, levels=3)
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin="histosam")
    viewer.reset_view()
    viewer.camera.center = (540, 610)  # inside the first tissue patch
    viewer.camera.zoom = viewer.camera.zoom * 6
    box = visible_box(viewer, layer)
    region = np.asarray(layer.data[0][box[0]:box[2], box[1]:box[3]])
    assert 0 < (box[2] - box[0]) * (box[3] - box[1]) < 1536 * 2048 / 16
    widget = AnnotatorWidget(viewer)
    widget.model_picker.set_choice("histosam-nano")
    widget.device.setCurrentText("cpu")
    wait(qtbot, widget.compute_embedding())
    c = widget.controller
    assert c.origin == (box[0], box[1]) and c.shape == region.shape[:2] and c.mpp == 0.5
    np.testing.assert_array_equal(c.image, region)
    objects = viewer.layers[OBJECTS]
    np.testing.assert_array_equal(objects.translate, box[:2])
    assert objects.data.shape == region.shape[:2]
    dark = np.argwhere(region.mean(axis=-1) < 110)  # a synthetic nucleus
    assert len(dark)
    r, col = dark[len(dark) // 2]
    viewer.layers[PROMPTS].add([box[0] + r, box[1] + col])
    assert widget.commit() == 1 and objects.data[r, col] == 1
    auto = AutomaticWidget(viewer)
    assert auto.region.currentText() == "visible field" and auto.mpp.value() == 0.5
    auto.model_picker.set_choice("histosam-nano")
    auto.device.setCurrentText("cpu")
    wait(qtbot, auto.run())
    nuclei = viewer.layers[-1]
    np.testing.assert_array_equal(nuclei.translate, box[:2])
    np.testing.assert_array_equal(nuclei.data, histosam.segment(region, model=nano, mpp=0.5))
    assert nuclei.data.max() > 3
