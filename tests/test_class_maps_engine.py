"""Class probabilities through the streaming engine: each nucleus' mean class probabilities equal the mean of the
class maps over its pixels, whatever the tiling (tiles, chunks) and with skipped background tiles."""

from __future__ import annotations

import numpy as np
import pytest

from histosam.tiling.engine import iter_ais_chunks
from histosam.wsi.fake import colour_threshold_maps
from testlib import typed_nano

K = 3


def _image(h=300, w=340, seed=0):
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), (230, 170, 205), np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(40):
        cy, cx, r = rng.uniform(8, h - 8), rng.uniform(8, w - 8), rng.uniform(4, 8)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = (90, 40, 140)
    return img


def _class_probs(tile: np.ndarray) -> np.ndarray:
    """A deterministic per-pixel class distribution from the pixel's position-free colour (tile-invariant)."""
    x = tile.astype(np.float32) / 255.0
    logits = np.stack([x[..., 0] * 3, x[..., 1] * 2 + 0.5, x[..., 2] * 1.5], axis=0)
    e = np.exp(logits - logits.max(0, keepdims=True))
    return e / e.sum(0, keepdims=True)


def predict_with_classes(tiles: np.ndarray) -> np.ndarray:
    maps = colour_threshold_maps(tiles)
    return np.concatenate([maps, np.stack([_class_probs(t) for t in tiles])], axis=1).astype(np.float32)


@pytest.mark.parametrize("tile,halo,chunk", [(128, 32, 100), (256, 32, 512), (96, 24, 64)])
def test_mean_class_probabilities_per_nucleus(tile, halo, chunk):
    img = _image()
    full_probs = _class_probs(img)
    n = 0
    for res in iter_ais_chunks(lambda r, c, h, w: img[r:r + h, c:c + w], img.shape[:2], predict_with_classes,
                               tile=tile, halo=halo, chunk=chunk, channels=3 + K, context=32):
        if res.n == 0:
            continue
        assert res.class_probs.shape == (res.n, K)
        r0, c0 = res.offset
        h, w = res.labels.shape
        for i in range(res.n):
            m = res.labels == i + 1
            expect = full_probs[:, r0:r0 + h, c0:c0 + w][:, m].mean(axis=1)
            np.testing.assert_allclose(res.class_probs[i], expect, rtol=1e-5, atol=1e-6)
        n += res.n
    assert n > 20


def test_three_channels_carry_no_class_probabilities():
    img = _image()
    res = [r for r in iter_ais_chunks(lambda r, c, h, w: img[r:r + h, c:c + w], img.shape[:2],
                                      colour_threshold_maps, tile=128, halo=32, chunk=128) if r.n]
    assert res and all(r.class_probs is None for r in res)


def test_typed_nuclei_recipe_with_a_class_head(example_image):
    """segment_typed_nuclei: the labels equal histosam.segment's, every nucleus has a class in 1..K-1, and the
    probabilities are per nucleus (the shipped model with an untrained class head; also through resampling)."""
    import torch

    import histosam
    from histosam.tasks.nuclei import segment_typed_nuclei

    torch.manual_seed(0)
    names = ["background", "a", "b"]
    model = typed_nano(names)
    img = np.ascontiguousarray(example_image[:240, :260])
    for mpp in (0.25, 0.5):
        typed = segment_typed_nuclei(img, model, mpp, precision="fp32")
        ref = histosam.segment(img, model=model, mpp=mpp, precision="fp32")
        np.testing.assert_array_equal(typed.labels, ref)
        n = int(typed.labels.max())
        assert n > 10
        assert typed.probabilities.shape == (n, len(names)) and typed.classes.shape == (n,)
        assert set(typed.classes.tolist()) <= {1, 2}
        np.testing.assert_allclose(typed.probabilities.sum(1), 1.0, atol=1e-4)
        assert sum(typed.counts().values()) == n


def test_segment_writes_classified_nuclei(tmp_path, example_image, capsys):
    """`histosam segment` with a model that has a class head: every GeoJSON detection has a classification with a
    colour, the table has class + probability columns for the same ids as the labels, the provenance and the CLI
    report the per-class counts (also through resampling)."""
    import json

    import pandas as pd
    import torch
    from PIL import Image

    from histosam.cli.main import main
    from histosam.io.labels import read_labels
    from histosam.registry.formats import save_histosam

    torch.manual_seed(1)
    names = ["background", "other", "inflammatory", "epithelial", "spindle-shaped"]
    model = typed_nano(names)
    path = save_histosam(model, tmp_path / "typed.pt")
    img = tmp_path / "x.png"
    Image.fromarray(np.ascontiguousarray(example_image[:200, :240])).save(img)
    for mpp in ("0.25", "0.5"):
        out = tmp_path / f"out{mpp}"
        assert main(["segment", str(img), "-o", str(out), "--model", str(path), "--mpp", mpp, "--no-progress"]) == 0
        err = capsys.readouterr().err
        gj = json.loads((out / "x.geojson").read_text())
        table = pd.read_csv(out / "x_nuclei.csv")
        labels = read_labels(out / "x_labels.tif")
        assert len(gj["features"]) == len(table) == len(np.unique(labels)) - 1 > 10
        for f in gj["features"]:
            cls = f["properties"]["classification"]
            assert cls["name"] in names[1:] and len(cls["color"]) == 3
            assert f["properties"]["measurements"]["class probability background"] >= 0
        assert set(table["class"]) <= set(names[1:])
        assert {f"prob_{n}" for n in names} <= set(table.columns)
        by_id = {f["properties"]["measurements"]["label_id"]: f["properties"]["classification"]["name"]
                 for f in gj["features"]}
        assert all(by_id[i] == c for i, c in zip(table["id"], table["class"]))
        counts = json.loads((out / "x_provenance.json").read_text())["class_counts"]
        assert sum(counts.values()) == len(table) and set(counts) == set(names[1:])
        assert "by class:" in err
