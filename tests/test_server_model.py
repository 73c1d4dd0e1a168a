"""``histosam serve`` with a real (tiny, random) model: server masks equal the Python Predictor's.

A real uvicorn server on 127.0.0.1 runs :class:`HistosamBackend`; request bodies are shaped like the QuPath
extension's. The same model object backs the server and the reference Predictor.
"""

from __future__ import annotations

import io
import threading

import httpx
import numpy as np
import pytest

pytest.importorskip("histosam.inference.predictor")
torch = pytest.importorskip("torch")

from shapely.geometry import shape as to_shape  # noqa: E402

import histosam  # noqa: E402
from histosam.models.build import build_model  # noqa: E402
from histosam.server import (  # noqa: E402
    HistosamBackend,
    ServerConfig,
    WeightEntry,
    WeightsTable,
    create_app,
    running_server,
)
from histosam.server.geometry import geometry_to_mask  # noqa: E402
from histosam.server.imaging import encode_png_b64  # noqa: E402

H, W = 96, 128
URL = "local:tiny"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("tiny").eval()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.full((H, W, 3), 200, np.uint8)
    yy, xx = np.mgrid[0:H, 0:W]
    for _ in range(12):  # dark "nuclei" on a light background
        cy, cx, r = rng.integers(10, H - 10), rng.integers(10, W - 10), rng.integers(4, 9)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.integers(40, 120, 3)
    return img


@pytest.fixture(scope="module")
def server(model):
    weights = WeightsTable()
    weights.add(WeightEntry(type="vit_t", name="tiny", url=URL, factory=lambda: model))
    backend = HistosamBackend(cache_size=2)
    with running_server(create_app(backend, weights, ServerConfig())) as base:
        with httpx.Client(base_url=base, timeout=120) as client:
            yield client, backend


def _reference(model, pixels, **prompt):
    pred = histosam.Predictor(model, cache_size=1)
    pred.set_image(pixels)
    out = pred.predict(**prompt)
    return out.masks[0], out.scores[0]


def _check_same(features, masks, scores):
    nonempty = [i for i in range(len(masks)) if masks[i].any()]
    assert [f["properties"]["object_idx"] for f in features] == nonempty
    for f in features:
        i = f["properties"]["object_idx"]
        assert to_shape(f["geometry"]).is_valid
        np.testing.assert_array_equal(geometry_to_mask(to_shape(f["geometry"]), masks[i].shape), masks[i])
        assert f["properties"]["quality"] == pytest.approx(float(scores[i]), abs=1e-6)


@pytest.mark.parametrize("multimask", [False, True])
def test_bbox_prompt_matches_predictor(server, model, image, multimask):
    client, _ = server
    body = {"type": "vit_t", "b64img": encode_png_b64(image), "bbox": [20, 15, 70, 60],
            "multimask_output": multimask, "checkpoint_url": URL}
    r = client.post("/sam/", json=body)
    assert r.status_code == 200, r.text
    masks, scores = _reference(model, image, box=np.array([20, 15, 70, 60], np.float32), multimask=multimask)
    assert masks.shape == ((3 if multimask else 1), H, W)
    assert any(m.any() for m in masks), "test needs a non-empty mask"
    _check_same(r.json(), masks, scores)


def test_points_background_first_grayscale_matches_predictor(server, model, image):
    client, _ = server
    gray = image[:, :, 1]
    body = {"type": "vit_t", "b64img": encode_png_b64(gray), "point_coords": [[5, 5], [100, 80], [40, 30]],
            "point_labels": [0, 0, 1], "multimask_output": True}
    r = client.post("/sam/", json=body)
    assert r.status_code == 200, r.text
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    masks, scores = _reference(model, rgb, points=np.array([[5, 5], [100, 80], [40, 30]], np.float32),
                               labels=np.array([0, 0, 1]), multimask=True)
    assert any(m.any() for m in masks), "test needs a non-empty mask"
    _check_same(r.json(), masks, scores)


def test_embedding_cache_is_keyed_by_pixels_not_encoding(server, image):
    import base64

    from PIL import Image

    client, backend = server

    shifted = image.copy()
    shifted[0, 0] = (1, 2, 3)  # a new image for this test
    before = backend.stats()
    encodings = []
    for level in (0, 9):  # two different PNG files of the same pixels
        buf = io.BytesIO()
        Image.fromarray(shifted).save(buf, format="PNG", compress_level=level)
        encodings.append(base64.b64encode(buf.getvalue()).decode())
    assert encodings[0] != encodings[1]
    for b64 in encodings:
        body = {"type": "vit_t", "b64img": b64, "point_coords": [[40, 30]], "point_labels": [1]}
        assert client.post("/sam/", json=body).status_code == 200
    after = client.get("/sam/health/").json()
    assert after["embedding_misses"] - before["embedding_misses"] == 1
    assert after["embedding_hits"] - before["embedding_hits"] == 1


def test_concurrent_clients_get_their_own_answers(server, model, image):
    client, _ = server
    base = str(client.base_url)
    boxes = [[10 + 5 * i, 10 + 3 * i, 60 + 5 * i, 50 + 3 * i] for i in range(6)]
    images = [image, np.ascontiguousarray(image[::-1])]
    results: dict[int, list] = {}

    def worker(i: int) -> None:
        body = {"type": "vit_t", "b64img": encode_png_b64(images[i % 2]), "bbox": boxes[i],
                "multimask_output": True}
        with httpx.Client(base_url=base, timeout=120) as c:
            results[i] = c.post("/sam/", json=body).json()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(boxes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for i, box in enumerate(boxes):
        masks, scores = _reference(model, images[i % 2], box=np.array(box, np.float32), multimask=True)
        _check_same(results[i], masks, scores)


AMG_BODY = {"points_per_side": 4, "points_per_batch": 64, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
            "stability_score_offset": 1.0, "box_nms_thresh": 0.7, "crop_n_layers": 0, "crop_nms_thresh": 0.7,
            "crop_overlap_ratio": 512 / 1500, "crop_n_points_downscale_factor": 1, "min_mask_region_area": 0,
            "output_type": "Single Mask", "include_image_edge": False}


def test_automask_amg_matches_segment(server, model, image):
    """A model without an instance decoder runs AMG with the client's parameters: same labels as Python."""
    client, _ = server
    r = client.post("/sam/automask/", json={"type": "vit_t", "b64img": encode_png_b64(image), **AMG_BODY})
    assert r.status_code == 200, r.text
    params = {k: v for k, v in AMG_BODY.items() if k not in ("output_type", "include_image_edge")}
    labels = histosam.segment(image, model=model, mode="amg", **params)
    ids = [int(i) for i in np.unique(labels) if i != 0]
    feats = r.json()
    assert ids and [f["properties"]["object_idx"] for f in feats] == ids
    from histosam.postprocess.amg import AMGParams, generate_masks

    records = generate_masks(histosam.Predictor(model), image, AMGParams.from_dict(params))
    for f in feats:
        mask = geometry_to_mask(to_shape(f["geometry"]), (H, W))
        np.testing.assert_array_equal(mask, labels == f["properties"]["object_idx"])
        # its quality is the predicted IoU of the generated mask it came from
        source = [rec for rec in records if (rec.segmentation[mask]).all()]
        assert f["properties"]["quality"] in [pytest.approx(rec.predicted_iou, abs=1e-6) for rec in source]


def test_automask_uses_ais_when_model_has_decoder(image, monkeypatch):
    """With an instance decoder the server calls segment(mode="ais") without AMG parameters; one Feature
    per instance (segment is replaced by a thresholding stand-in: random decoder weights find nothing)."""
    from skimage.measure import label

    import histosam.automatic

    torch.manual_seed(0)
    model = build_model("tiny", instance_decoder="unetr").eval()
    calls = []

    def fake_segment(img, model=None, mode="ais", **params):
        calls.append((mode, params, model))
        return label(img.mean(axis=2) < 150).astype(np.uint32)

    monkeypatch.setattr(histosam.automatic, "segment", fake_segment)
    weights = WeightsTable()
    weights.add(WeightEntry(type="vit_b", name="with-decoder", url="local:dec", factory=lambda: model))
    with running_server(create_app(HistosamBackend(), weights)) as base:
        body = {"type": "vit_b", "b64img": encode_png_b64(image), **AMG_BODY}
        feats = httpx.post(f"{base}/sam/automask/", json=body, timeout=120).json()
    assert calls == [("ais", {}, model)]
    expected = label(image.mean(axis=2) < 150)
    assert len(feats) == expected.max() > 5  # one Feature per dark disc
    for f in feats:
        mask = geometry_to_mask(to_shape(f["geometry"]), (H, W))
        np.testing.assert_array_equal(mask, expected == f["properties"]["object_idx"])


def test_bad_checkpoint_is_a_clear_4xx(server, image, tmp_path):
    client, _ = server
    bogus = tmp_path / "not_a_model.pth"
    bogus.write_bytes(b"this is not a torch checkpoint")
    r = client.post("/sam/weights/", json={"type": "vit_b", "name": "bogus", "url": str(bogus)})
    assert r.status_code == 200
    body = {"type": "vit_b", "b64img": encode_png_b64(image), "bbox": [1, 1, 20, 20], "checkpoint_url": str(bogus)}
    r = client.post("/sam/", json=body)
    assert 400 <= r.status_code < 500, r.text
    assert "not_a_model.pth" in r.json()["detail"] and "Traceback" not in r.text
