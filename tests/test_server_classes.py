"""Typed nuclei through ``/sam/automask/``: with a class head each nucleus carries QuPath's classification
``{"name", "color"}`` (and ``object_idx`` = the class name, since the extension sets the class from it), its
probabilities as measurements; without one nothing changes. Over a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from shapely.geometry import shape as to_shape

from histosam.server import (
    AutoResult,
    HistosamBackend,
    ServerConfig,
    WeightEntry,
    WeightsTable,
    create_app,
    running_server,
)
from histosam.server.geometry import geometry_to_mask
from histosam.server.imaging import encode_png_b64

sys.path.insert(0, str(Path(__file__).parent))
from testlib import he_image  # noqa: E402

H, W = 40, 60


class TypedFakeBackend:
    """Three labelled objects; ids 1 and 3 typed, id 2 untyped (a backend may type only some)."""

    def automask(self, entry, image, amg_params):
        lab = np.zeros(image.shape, np.uint32)
        lab[2:6, 3:9] = 1
        lab[10:20, 10:12] = 2
        lab[25:30, 40:50] = 3
        return AutoResult(labels=lab, mode="ais",
                          classes={1: ("epithelial", [200, 0, 0]), 3: ("inflammatory", [160, 90, 160])},
                          class_probabilities={1: {"background": 0.1, "epithelial": 0.7, "inflammatory": 0.2},
                                               3: {"background": 0.0, "epithelial": 0.25, "inflammatory": 0.75}})

    def predict(self, *a):  # pragma: no cover - not used here
        raise AssertionError

    def stats(self):
        return {}


def _weights(**entry) -> WeightsTable:
    table = WeightsTable()
    table.add(WeightEntry(type="vit_b", name="typed", url="local:typed", **entry))
    return table


def test_automask_features_carry_classification():
    rgb = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    app = create_app(TypedFakeBackend(), _weights(source="unused"), ServerConfig(max_body_bytes=1 << 20))
    with running_server(app) as base:
        r = httpx.post(f"{base}/sam/automask/", json={"type": "vit_b", "b64img": encode_png_b64(rgb)}, timeout=30)
    assert r.status_code == 200, r.text
    f1, f2, f3 = r.json()
    assert f1["properties"]["classification"] == {"name": "epithelial", "color": [200, 0, 0]}
    assert f3["properties"]["classification"] == {"name": "inflammatory", "color": [160, 90, 160]}
    assert f1["properties"]["object_idx"] == "epithelial" and f1["properties"]["nucleus_id"] == 1
    assert f3["properties"]["measurements"] == pytest.approx(
        {"class probability background": 0.0, "class probability epithelial": 0.25,
         "class probability inflammatory": 0.75})
    # an untyped object stays as before: integer object_idx, no classification
    assert f2["properties"]["object_idx"] == 2 and "classification" not in f2["properties"]
    assert "nucleus_id" not in f2["properties"] and "measurements" not in f2["properties"]


@pytest.fixture(scope="module")
def typed_model():
    import histosam

    return histosam.load_model("histosam-nano-classes", device="cpu")


def test_automask_with_class_head_matches_typed_recipe(typed_model):
    """A real model with a class head: one Feature per nucleus of ``segment_typed_nuclei``, its class and colour
    from the head, equal labels to ``histosam.segment``; a second request (cached result) answers the same."""
    import histosam
    from histosam.pipeline.image_job import class_colors
    from histosam.tasks.nuclei import segment_typed_nuclei

    img = he_image(160, 200, seed=3)
    typed = segment_typed_nuclei(img, typed_model)
    np.testing.assert_array_equal(typed.labels, histosam.segment(img, model=typed_model))
    names = typed.class_names
    colors = class_colors(typed_model, names)
    backend = HistosamBackend(device="cpu")
    with running_server(create_app(backend, _weights(factory=lambda: typed_model))) as base:
        body = {"type": "vit_b", "b64img": encode_png_b64(img)}
        feats = httpx.post(f"{base}/sam/automask/", json=body, timeout=120).json()
        again = httpx.post(f"{base}/sam/automask/", json=body, timeout=120).json()
    assert again == feats and backend.stats()["automask_hits"] == 1
    assert len(feats) == typed.labels.max() > 20
    for f in feats:
        p = f["properties"]
        i = p["nucleus_id"]
        k = int(typed.classes[i - 1])
        assert p["classification"] == {"name": names[k], "color": list(colors[k])} and p["object_idx"] == names[k]
        assert k > 0  # the background class is never chosen: AIS found a nucleus
        assert [p["measurements"][f"class probability {n}"] for n in names] == \
            pytest.approx(typed.probabilities[i - 1].tolist(), abs=1e-6)
        np.testing.assert_array_equal(geometry_to_mask(to_shape(f["geometry"]), img.shape[:2]), typed.labels == i)


def test_automask_without_class_head_is_untyped():
    import histosam

    model = histosam.load_model("histosam-nano", device="cpu")
    img = he_image(96, 96, seed=1)
    with running_server(create_app(HistosamBackend(device="cpu"), _weights(factory=lambda: model))) as base:
        feats = httpx.post(f"{base}/sam/automask/", json={"type": "vit_b", "b64img": encode_png_b64(img)},
                           timeout=120).json()
    assert feats and all(isinstance(f["properties"]["object_idx"], int) for f in feats)
    assert not any("classification" in f["properties"] for f in feats)
