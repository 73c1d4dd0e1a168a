"""HTTP layer of ``histosam serve`` against a fake backend, over a real uvicorn server on 127.0.0.1.

Request bodies are shaped like the QuPath extension's (Gson: absent fields are missing keys,
background points first, RGB or grayscale PNG viewports).
"""

from __future__ import annotations

import base64
import io
import threading

import httpx
import numpy as np
import pytest

from histosam.measure import label_polygons
from histosam.server import (
    AutoResult,
    PromptResult,
    ServerConfig,
    WeightEntry,
    WeightsTable,
    create_app,
    running_server,
)
from histosam.server.geometry import geometry_to_mask, labels_to_geometries
from histosam.server.imaging import encode_png_b64

URL = "https://example.org/weights/vit_b_histo.pth"
H, W = 40, 60
MAX_PIXELS = 300 * 300


class FakeBackend:
    """Masks from prompts by simple rules; records every call."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.lock = threading.Lock()

    def predict(self, entry, image, points, labels, box, multimask):
        with self.lock:
            self.calls.append(
                {"entry": entry, "pixels": image.pixels, "points": points, "labels": labels, "box": box,
                 "multimask": multimask}
            )
        h, w = image.shape
        m = np.zeros((h, w), bool)
        if box is not None:
            x0, y0, x1, y1 = (int(v) for v in box)
            m[y0:y1, x0:x1] = True
        else:
            x, y = (int(v) for v in points[labels == 1][0])
            m[max(0, y - 2) : y + 3, max(0, x - 2) : x + 3] = True
        if not multimask:
            return PromptResult(masks=m[None], scores=np.array([0.8], np.float32))
        small = np.zeros_like(m)
        small[np.nonzero(m)[0][0], np.nonzero(m)[1][0]] = True
        large = m.copy()
        large[:, : w // 2] = True
        return PromptResult(masks=np.stack([small, m, large]), scores=np.array([0.3, 0.9, 0.6], np.float32))

    def automask(self, entry, image, amg_params):
        with self.lock:
            self.calls.append({"entry": entry, "amg": amg_params})
        lab = np.zeros(image.shape, np.uint32)
        lab[2:6, 3:9] = 1
        lab[10:20, 10:12] = 2
        lab[12, 30:40] = 3
        lab[25:30, 40:50] = 4
        lab[27, 44] = 0  # a hole
        return AutoResult(labels=lab, mode="ais")

    def stats(self):
        return {"embedding_hits": 0}


@pytest.fixture(scope="module")
def fake() -> FakeBackend:
    return FakeBackend()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> WeightsTable:
    table = WeightsTable()
    table.add(WeightEntry(type="vit_b", name="histo", url=URL, source="unused"))
    table.add(WeightEntry(type="vit_t", name="tiny", url="local:tiny", source="unused"))
    return table


@pytest.fixture(scope="module")
def client(fake, weights):
    cfg = ServerConfig(max_body_bytes=1 << 20, max_pixels=MAX_PIXELS)
    with running_server(create_app(fake, weights, cfg)) as base, httpx.Client(base_url=base, timeout=30) as c:
        yield c


def _rgb(h: int = H, w: int = W) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _features_to_masks(features: list[dict], shape) -> list[np.ndarray]:
    from shapely.geometry import shape as to_shape

    return [geometry_to_mask(to_shape(f["geometry"]), shape) for f in features]


def _error(r: httpx.Response, status: int, phrase: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    detail = r.json()["detail"]
    assert isinstance(detail, str) and phrase in detail, detail
    assert "Traceback" not in r.text


def test_version_and_progress_and_cancel(client):
    r = client.get("/sam/version/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    import histosam

    assert r.text == histosam.__version__
    assert client.get("/sam/progress/").json() == {"message": None, "percent": -1}
    r = client.get("/sam/weights/cancel/")
    assert r.status_code == 200 and r.text == "Cancel signal sent"


def test_weights_list_filter_and_unknown_type(client):
    all_ = client.get("/sam/weights/").json()
    assert all_ == [
        {"type": "vit_b", "name": "histo", "url": URL},
        {"type": "vit_t", "name": "tiny", "url": "local:tiny"},
    ]
    assert client.get("/sam/weights/", params={"type": "vit_t"}).json() == [all_[1]]
    assert client.get("/sam/weights/", params={"type": "vit_h"}).json() == []
    _error(client.get("/sam/weights/", params={"type": "vit_zz"}), 422, "unknown model type 'vit_zz'")


def test_register_local_weights(client, tmp_path):
    ckpt = tmp_path / "mine.pth"
    ckpt.write_bytes(b"\0" * 16)
    body = {"type": "vit_l", "name": "mine", "url": str(ckpt)}
    r = client.post("/sam/weights/", json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert r.text == f"mine ({ckpt}) is registered."
    assert {"type": "vit_l", "name": "mine", "url": str(ckpt)} in client.get("/sam/weights/").json()
    again = client.post("/sam/weights/", json=body)
    assert again.text == "Model file with the name 'mine' already exists. Skip registration."
    missing = {"type": "vit_l", "name": "other", "url": str(tmp_path / "nope.pth")}
    _error(client.post("/sam/weights/", json=missing), 404, "does not exist")
    _error(client.post("/sam/weights/", json={"type": "vit_l", "name": "x"}), 422, "url: Field required")


def test_bbox_prompt_exact_polygon(client, fake):
    img = _rgb()
    body = {"type": "vit_b", "b64img": encode_png_b64(img), "bbox": [5, 7, 25, 19],
            "multimask_output": False, "checkpoint_url": URL}
    r = client.post("/sam/", json=body)
    assert r.status_code == 200, r.text
    feats = r.json()
    assert len(feats) == 1 and feats[0]["type"] == "Feature"
    assert feats[0]["properties"] == {"object_idx": 0, "label": "object", "quality": pytest.approx(0.8),
                                      "sam_model": "vit_b"}
    assert feats[0]["geometry"]["type"] == "Polygon"
    # histosam's outline convention (marching squares at 0.5, histosam.measure): corners cut by half a pixel
    assert sorted(map(tuple, feats[0]["geometry"]["coordinates"][0][:-1])) == [
        (5.0, 7.5), (5.0, 18.5), (5.5, 7.0), (5.5, 19.0), (24.5, 7.0), (24.5, 19.0), (25.0, 7.5), (25.0, 18.5)]
    call = fake.calls[-1]
    assert call["points"] is None and call["labels"] is None and call["multimask"] is False
    np.testing.assert_array_equal(call["box"], [5, 7, 25, 19])
    np.testing.assert_array_equal(call["pixels"], img)
    assert call["entry"].url == URL


def test_points_background_first_grayscale(client, fake):
    gray = _rgb()[:, :, 0]
    body = {"type": "vit_b", "b64img": encode_png_b64(gray), "point_coords": [[3, 4], [30, 20], [31, 21]],
            "point_labels": [0, 1, 1], "multimask_output": False}
    r = client.post("/sam/", json=body)
    assert r.status_code == 200, r.text
    call = fake.calls[-1]
    np.testing.assert_array_equal(call["points"], [[3, 4], [30, 20], [31, 21]])
    np.testing.assert_array_equal(call["labels"], [0, 1, 1])
    assert call["box"] is None
    assert call["pixels"].shape == (H, W, 3)
    for ch in range(3):
        np.testing.assert_array_equal(call["pixels"][:, :, ch], gray)
    (mask,) = _features_to_masks(r.json(), (H, W))
    expected = np.zeros((H, W), bool)
    expected[18:23, 28:33] = True
    np.testing.assert_array_equal(mask, expected)


def test_bbox_with_background_points(client, fake):
    body = {"type": "vit_b", "b64img": encode_png_b64(_rgb()), "bbox": [5, 5, 30, 30],
            "point_coords": [[2, 2], [35, 35]], "point_labels": [0, 0]}
    r = client.post("/sam/", json=body)
    assert r.status_code == 200, r.text
    call = fake.calls[-1]
    np.testing.assert_array_equal(call["labels"], [0, 0])
    np.testing.assert_array_equal(call["box"], [5, 5, 30, 30])


def test_rgba_png_is_accepted(client, fake):
    rgba = np.dstack([_rgb(), np.full((H, W), 255, np.uint8)])
    body = {"type": "vit_b", "b64img": encode_png_b64(rgba), "bbox": [1, 1, 5, 5]}
    assert client.post("/sam/", json=body).status_code == 200
    np.testing.assert_array_equal(fake.calls[-1]["pixels"], _rgb())


def test_multimask_each_mask_has_its_own_quality(client):
    body = {"type": "vit_b", "b64img": encode_png_b64(_rgb()), "bbox": [10, 10, 20, 30],
            "multimask_output": True, "checkpoint_url": URL}
    feats = client.post("/sam/", json=body).json()
    assert [f["properties"]["object_idx"] for f in feats] == [0, 1, 2]
    masks = _features_to_masks(feats, (H, W))
    areas = [int(m.sum()) for m in masks]
    assert areas == [1, 200, 200 + 30 * H - 10 * 20]  # small, box, box ∪ left half
    assert [f["properties"]["quality"] for f in feats] == pytest.approx([0.3, 0.9, 0.6])


def test_automask_one_feature_per_object(client, fake):
    body = {"type": "vit_b", "b64img": encode_png_b64(_rgb()), "points_per_side": 16, "points_per_batch": 64,
            "pred_iou_thresh": 0.88, "stability_score_thresh": 0.95, "stability_score_offset": 1.0,
            "box_nms_thresh": 0.2, "crop_n_layers": 0, "crop_nms_thresh": 0.7, "crop_overlap_ratio": 512 / 1500,
            "crop_n_points_downscale_factor": 1, "min_mask_region_area": 0, "output_type": "Single Mask",
            "include_image_edge": False, "checkpoint_url": URL}
    r = client.post("/sam/automask/", json=body)
    assert r.status_code == 200, r.text
    feats = r.json()
    lab = fake.automask(None, type("I", (), {"shape": (H, W)})(), {}).labels
    assert [f["properties"]["object_idx"] for f in feats] == [1, 2, 3, 4]
    assert all("quality" not in f["properties"] for f in feats)  # AIS has no score: omitted, not null
    for f, m in zip(feats, _features_to_masks(feats, (H, W))):
        np.testing.assert_array_equal(m, lab == f["properties"]["object_idx"])
    assert len(feats[3]["geometry"]["coordinates"]) == 2  # exterior + hole
    assert fake.calls[-2]["amg"]["points_per_side"] == 16
    assert fake.calls[-2]["amg"]["box_nms_thresh"] == 0.2


@pytest.mark.parametrize(
    ("body", "status", "phrase"),
    [
        ({"type": "vit_b", "b64img": "not base64!!", "bbox": [0, 0, 4, 4]}, 422, "not valid base64"),
        ({"type": "vit_b", "b64img": base64.b64encode(b"hello world, no image").decode(), "bbox": [0, 0, 4, 4]},
         422, "not a readable image"),
        ({"type": "vit_b", "b64img": "", "bbox": [0, 0, 4, 4]}, 422, "b64img is empty"),
        ({"type": "vit_9", "b64img": "x", "bbox": [0, 0, 4, 4]}, 422, "unknown model type 'vit_9'"),
        ({"type": "vit_b", "bbox": [0, 0, 4, 4]}, 422, "b64img: Field required"),
        ({"type": "vit_b", "b64img": "x", "bbox": [0, 0, 4]}, 422, "bbox"),
        ({"type": "vit_b", "b64img": "PNG"}, 422, "no prompt"),
        ({"type": "vit_b", "b64img": "PNG", "point_coords": [[1, 2]]}, 422, "point_labels must give one label"),
        ({"type": "vit_b", "b64img": "PNG", "point_coords": [[1, 2]], "point_labels": [2]}, 422,
         "point_labels must be 0"),
        ({"type": "vit_b", "b64img": "PNG", "point_coords": [[1, 2]], "point_labels": [0]}, 422,
         "at least one foreground point"),
        ({"type": "vit_b", "b64img": "PNG", "bbox": [9, 0, 4, 4]}, 422, "x1 <= x2"),
        ({"type": "vit_b", "b64img": "PNG", "bbox": [0, 0, 4, 4], "checkpoint_url": "https://x/y"}, 404,
         "is not registered"),
        ({"type": "vit_h", "b64img": "PNG", "bbox": [0, 0, 4, 4]}, 404, "no weights registered for model type"),
        ({"type": "vit_b", "b64img": "BIG", "bbox": [0, 0, 4, 4]}, 413, "more than the server's limit"),
    ],
)
def test_malformed_prompt_requests(client, body, status, phrase):
    if body.get("b64img") == "PNG":
        body = {**body, "b64img": encode_png_b64(_rgb())}
    if body.get("b64img") == "BIG":
        body = {**body, "b64img": encode_png_b64(np.zeros((301, 300), np.uint8))}  # tiny PNG, many pixels
    _error(client.post("/sam/", json=body), status, phrase)


def test_malformed_bodies(client):
    _error(client.post("/sam/", content=b"{not json", headers={"content-type": "application/json"}),
           422, "not valid JSON")
    _error(client.post("/sam/", json=[1, 2]), 422, "invalid request")
    _error(client.post("/sam/automask/", json={"type": "vit_b"}), 422, "b64img: Field required")
    _error(client.post("/sam/automask/", json={"b64img": "x", "points_per_side": 0}), 422, "points_per_side")
    big = {"type": "vit_b", "b64img": "A" * (2 << 20), "bbox": [0, 0, 1, 1]}
    _error(client.post("/sam/", json=big), 413, "larger than the server's limit")
    _error(client.get("/sam/nothing/"), 404, "Not Found")
    _error(client.post("/sam/video/", json={}), 501, "not supported")


def test_chunked_body_over_limit_is_cut(client):
    def chunks():
        for _ in range(40):
            yield b"A" * 65536

    _error(client.post("/sam/", content=chunks(), headers={"content-type": "application/json"}), 413,
           "larger than the server's limit")


def test_token_header_and_path_prefix(fake, weights):
    cfg = ServerConfig(token="s3cret")
    with running_server(create_app(fake, weights, cfg)) as base, httpx.Client(base_url=base) as c:
        _error(c.get("/sam/version/"), 401, "token")
        _error(c.get("/sam/version/", headers={"Authorization": "Bearer nope"}), 401, "token")
        assert c.get("/sam/version/", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/t/s3cret/sam/weights/").json()[0]["url"] == URL
        _error(c.get("/t/wrong/sam/weights/"), 401, "token")


@pytest.mark.parametrize("kind", ["4-connected", "8-connected", "touching labels"])
def test_geometry_exact_on_random_labels(kind):
    from skimage.measure import label

    rng = np.random.default_rng(3)
    for _ in range(20):
        m = rng.random((30, 40)) > rng.uniform(0.3, 0.7)
        if kind == "touching labels":
            lab = rng.integers(0, 4, m.shape) * m
        else:
            lab = label(m, connectivity=1 if kind == "4-connected" else 2)
        geoms = labels_to_geometries(lab)
        assert sorted(geoms) == [i for i in np.unique(lab) if i]
        outlines = label_polygons(lab)  # the same outlines as images and slides
        for i, g in geoms.items():
            assert g.is_valid and g.equals_exact(outlines[i], 0)
            np.testing.assert_array_equal(geometry_to_mask(g, lab.shape), lab == i)


def test_geometry_hand_made_shapes():
    from histosam.server.geometry import mask_to_geometry

    ring = np.zeros((5, 5), bool)
    ring[1:4, 1:4] = True
    ring[2, 2] = False  # square with a one-pixel hole
    g = mask_to_geometry(ring)
    assert g.geom_type == "Polygon" and len(g.interiors) == 1 and g.area == 8  # 9 - 4/8 outside, 0.5 hole
    assert sorted(g.exterior.coords[:-1]) == [(1, 1.5), (1, 3.5), (1.5, 1), (1.5, 4), (3.5, 1), (3.5, 4),
                                              (4, 1.5), (4, 3.5)]  # corners cut, collinear vertices removed
    assert sorted(g.interiors[0].coords[:-1]) == [(2, 2.5), (2.5, 2), (2.5, 3), (3, 2.5)]
    diag = np.eye(3, dtype=bool)  # corner-touching pixels are joined (marching squares, diagonals joined)
    g = mask_to_geometry(diag)
    assert g.geom_type == "Polygon" and g.is_valid and g.area == 3 * 0.5 + 2 * 0.5  # diamonds + bridges
    np.testing.assert_array_equal(geometry_to_mask(g, diag.shape), diag)
    pinch = np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1]], bool)  # a loop closed only through corners
    g = mask_to_geometry(pinch)
    assert g.is_valid and g.geom_type == "Polygon" and len(g.interiors) == 1
    np.testing.assert_array_equal(geometry_to_mask(g, pinch.shape), pinch)
    assert mask_to_geometry(np.zeros((4, 4), bool)) is None


def test_png_roundtrip_helper():
    from PIL import Image

    img = _rgb()
    back = np.asarray(Image.open(io.BytesIO(base64.b64decode(encode_png_b64(img)))))
    np.testing.assert_array_equal(back, img)


PATHOSAM_VIT_H = "https://owncloud.gwdg.de/index.php/s/L7AcvVz7DoWJ2RZ/download"


def test_published_pathosam_url_maps_to_registry_without_download(client, fake, weights):
    # the URL QuPath users copy from the extension's README: known to the registry, loaded on first use
    r = client.post("/sam/weights/", json={"type": "vit_h", "name": "PathoSAM vit_h", "url": PATHOSAM_VIT_H})
    assert r.status_code == 200 and r.text == f"PathoSAM vit_h ({PATHOSAM_VIT_H}) is registered."
    entry = weights.resolve("vit_h", PATHOSAM_VIT_H)
    assert entry.source == "vit_h_histopathology"
    # a request naming a published URL that was never registered resolves too
    body = {"type": "vit_l", "b64img": encode_png_b64(_rgb()), "bbox": [0, 0, 4, 4],
            "checkpoint_url": "https://owncloud.gwdg.de/index.php/s/IZgnn1cpBq2PHod/download"}
    assert client.post("/sam/", json=body).status_code == 200
    assert fake.calls[-1]["entry"].source == "vit_l_histopathology"


def test_decode_16bit_and_palette_png():
    from PIL import Image

    from histosam.server.imaging import decode_image

    g16 = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(g16).save(buf, format="PNG")
    out = decode_image(base64.b64encode(buf.getvalue()).decode(), max_pixels=100)
    assert out.pixels.shape == (3, 4, 3) and out.pixels.dtype == np.uint8
    np.testing.assert_array_equal(out.pixels[:, :, 0], np.rint(g16 / 257).astype(np.uint8))
    pal = Image.fromarray(_rgb(4, 5)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    out = decode_image(base64.b64encode(buf.getvalue()).decode(), max_pixels=100)
    np.testing.assert_array_equal(out.pixels, np.asarray(pal.convert("RGB")))
    assert out.key == decode_image(encode_png_b64(np.asarray(pal.convert("RGB"))), max_pixels=100).key
