"""The time to the first mask after opening the bundled example, and the screenshots of docs/napari.md.

Screenshots go to a temporary folder; with ``HISTOSAM_NAPARI_DOCS=1`` they replace the ones in docs/img/ (and the
timing goes to docs/img/napari_timing.json):

    HISTOSAM_NAPARI_DOCS=1 xvfb-run -a python -m pytest tests/napari/test_napari_docs.py -s
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari.viewer", reason="napari is not installed (pip install -e '.[napari-test]')")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed")

DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
WAIT_MS = 300_000


@pytest.fixture
def out_dir(tmp_path) -> Path:
    if os.environ.get("HISTOSAM_NAPARI_DOCS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        return DOCS_IMG
    return tmp_path


def save_png(viewer, path: Path, width: int = 1100) -> None:
    """A screenshot of the whole window (canvas and dock widgets), downscaled and palettised (small files)."""
    from PIL import Image

    rgba = viewer.screenshot(canvas_only=False, flash=False)
    img = Image.fromarray(np.asarray(rgba)[..., :3])
    if img.width > width:
        img = img.resize((width, round(img.height * width / img.width)), Image.Resampling.LANCZOS)
    img.quantize(colors=192, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def dark_blobs(image: np.ndarray, centre: tuple[int, int], n: int, radius: int = 60) -> list[list[float]]:
    """(row, col) centres of the ``n`` largest dark (haematoxylin) blobs near ``centre``: places to click."""
    from skimage.measure import label, regionprops

    r, c = centre
    window = image[r - radius: r + radius, c - radius: c + radius].mean(axis=-1) < 120
    props = sorted(regionprops(label(window)), key=lambda p: -p.area)[:n]
    return [[r - radius + p.centroid[0], c - radius + p.centroid[1]] for p in props]


def test_time_to_first_mask_and_annotator_screenshot(make_napari_viewer, qtbot, out_dir):
    from histosam.data import example_image
    from histosam.napari import _models
    from histosam.napari._widgets_annotator import CURRENT, OBJECTS, PROMPTS

    _models._loaded.clear()  # the model is loaded as part of the measurement
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1500, 850)
    blobs = dark_blobs(example_image(), (400, 400), 5)  # nuclei to click on, (row, col)
    t0 = time.perf_counter()
    viewer.open_sample("histosam", "cmu1")
    _, widget = viewer.window.add_plugin_dock_widget("histosam", "Annotator")
    widget.model_picker.set_choice("histosam-nano")
    worker = widget.compute_embedding()
    with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
        pass
    t_embedding = time.perf_counter() - t0
    prompts = viewer.layers[PROMPTS]
    prompts.add(blobs[0])
    t_mask = time.perf_counter() - t0
    assert viewer.layers[CURRENT].data.any()
    timing = {"image": "cmu1_small_region_crop.png 768x768 at 0.499 um/px (1533x1533 at the model's 0.25)",
              "model": "histosam-nano", "device": str(widget.controller.predictor.device),
              "precision": widget.controller.predictor.precision, "cpu_threads": __import__("torch").get_num_threads(),
              "embedding_ready_s": round(t_embedding, 2), "first_mask_s": round(t_mask, 2),
              "click_to_mask_s": round(t_mask - t_embedding, 3)}
    print("time to first mask:", json.dumps(timing))
    (out_dir / "napari_timing.json").write_text(json.dumps(timing, indent=1) + "\n")
    assert widget.commit() == 1
    for rc in blobs[1:-1]:
        prompts.add(rc)
        widget.commit()
    prompts.add(blobs[-1])  # the current object, not committed
    assert viewer.layers[OBJECTS].data.max() >= 4 and viewer.layers[CURRENT].data.any()
    viewer.layers[OBJECTS].opacity = 0.8
    viewer.camera.center = (410, 410)
    viewer.camera.zoom = 3.0
    qtbot.wait(200)
    save_png(viewer, out_dir / "napari_annotator.png")
    assert (out_dir / "napari_annotator.png").stat().st_size > 10_000


def test_typed_nuclei_screenshot(make_napari_viewer, qtbot, out_dir):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1500, 850)
    viewer.open_sample("histosam", "cmu1")
    _, widget = viewer.window.add_plugin_dock_widget("histosam", "Automatic segmentation")
    widget.model_picker.set_choice("histosam-nano-classes")
    roi = widget.add_roi_layer()
    roi.add_rectangles(np.array([[200, 200], [584, 584]]))  # 384 x 384 px
    worker = widget.run()
    with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
        pass
    assert "nuclei" in widget.status.text()
    points = viewer.layers["cmu1_small_region_crop nucleus centroids"]
    assert len(points.data) > 10
    viewer.layers["cmu1_small_region_crop nuclei"].visible = False  # show the classes
    viewer.camera.center = (392, 392)
    viewer.camera.zoom = 1.5
    qtbot.wait(200)
    save_png(viewer, out_dir / "napari_typed_nuclei.png")
