"""The shipped default model (histosam-nano): loads offline, segments the bundled example, keeps its score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import histosam
from histosam.registry.loader import PACKAGE_ROOT

WEIGHTS = PACKAGE_ROOT / "weights" / "histosam-nano.pt"
RECORD = PACKAGE_ROOT / "weights" / "histosam-nano.json"


@pytest.fixture(scope="module")
def nano():
    return histosam.load_model(device="cpu")


def test_packaged_weights_present_and_small():
    assert WEIGHTS.is_file(), "the embedded model must ship inside the package"
    assert WEIGHTS.stat().st_size <= 40 * 1024 * 1024


def test_default_model_is_nano_with_decoder_and_parameters(nano):
    assert nano.config.name == "histosam-nano"
    assert nano.config.architecture == "nano"
    assert nano.instance_decoder is not None
    assert {"center_distance_threshold", "boundary_distance_threshold"} <= set(nano.config.postprocess)


def test_segments_the_bundled_example(nano):
    from histosam.data import EXAMPLE_MPP, example_image

    img = example_image()[:384, :384]
    labels = histosam.segment(img, model=nano, mpp=EXAMPLE_MPP)
    assert labels.shape == img.shape[:2] and labels.dtype == np.uint32
    n = int(labels.max())
    assert 20 <= n <= 2000, n  # a 192×192 µm skin crop holds on the order of a hundred nuclei
    areas = np.bincount(labels.ravel())[1:]
    # nuclei at 0.499 µm/px: a few to a few hundred µm² -> roughly 10-1500 px
    assert np.median(areas) * EXAMPLE_MPP**2 > 5


def test_predictor_runs_on_the_example(nano):
    from histosam.data import example_image

    img = example_image()[:256, :256]
    pred = histosam.Predictor(nano)
    pred.set_image(img, mpp=0.499)  # resampled to the model's 0.25 µm/px; prompts and masks stay in img pixels
    out = pred.predict(points=[[100, 120]], labels=[1], multimask=True)
    assert out.masks.shape == (1, 3, 256, 256) and out.scores.shape == (1, 3)
    assert out.low_res_logits.shape == (1, 3, 256, 256)


@pytest.mark.data
def test_box_prompts_on_monuseg_nuclei(nano, shared_data: Path):
    import tifffile

    from histosam.io.images import read_image

    stem = shared_data / "monuseg" / "train" / "TCGA-A7-A13E-01Z-00-DX1"  # a validation image
    img = read_image(f"{stem}.png")[372:628, 372:628]
    gt = tifffile.imread(f"{stem}_label.tif")[372:628, 372:628].astype(np.uint32)
    ids, counts = np.unique(gt[gt > 0], return_counts=True)
    ids = ids[counts > 50][:12]
    boxes = []
    for t in ids:
        r, c = np.nonzero(gt == t)
        boxes.append([c.min(), r.min(), c.max() + 1, r.max() + 1])
    pred = histosam.Predictor(nano, precision="fp32")
    pred.set_image(img)
    out = pred.predict(box=np.array(boxes, float))
    ious = [(m & (gt == t)).sum() / max((m | (gt == t)).sum(), 1) for m, t in zip(out.masks[:, 0], ids)]
    assert np.mean(ious) > 0.4, ious  # 0.6 measured for the shipped weights


@pytest.mark.data
def test_recorded_validation_score_reproduces(nano, shared_data: Path):
    import tifffile

    from histosam.evaluation.metrics import mean_segmentation_accuracy
    from histosam.io.images import read_image

    record = json.loads(RECORD.read_text())
    for entry in record["regression"].values():
        image_path = shared_data / entry["image"]
        img = read_image(image_path)
        gt = tifffile.imread(str(image_path).replace(".png", "_label.tif")).astype(np.uint32)
        seg = histosam.segment(img, model=nano, precision="fp32")
        assert abs(mean_segmentation_accuracy(gt, seg) - entry["msa"]) < 0.01
