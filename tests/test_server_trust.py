"""``histosam serve`` when shared: what clients may register as weights, and how much work one request may do.

Everything stays on this machine: name resolution is faked (``socket.getaddrinfo`` in the weights module), the
downloader is replaced where a test must show that no request is made, and the only servers contacted are
started here on 127.0.0.1.
"""

from __future__ import annotations

import http.server
import ipaddress
import math
import os
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from histosam.server import (
    HistosamBackend,
    PromptResult,
    ServerConfig,
    WeightEntry,
    WeightsPolicy,
    WeightsTable,
    WorkLimits,
    create_app,
    running_server,
)
from histosam.server import weights as weights_mod
from histosam.server.backend import FairLock, amg_work, check_amg_work
from histosam.server.imaging import encode_png_b64
from histosam.server.weights import NotAllowedError, RequestError, fetch_url, ip_allowed

H, W = 40, 60
PUBLIC_IP = "93.184.216.34"


class FakeBackend:
    """Records calls; answers a square around the box or first foreground point."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def predict(self, entry, image, points, labels, box, multimask):
        self.calls.append({"points": points, "labels": labels, "box": box})
        m = np.zeros(image.shape, bool)
        m[1:4, 1:4] = True
        return PromptResult(masks=m[None], scores=np.array([0.9], np.float32))

    def automask(self, entry, image, amg_params):
        raise AssertionError("not used")

    def stats(self):
        return {}


# -- offline name resolution ------------------------------------------------------------------------
FAKE_DNS = {
    "localhost": ["127.0.0.1", "::1"],
    "public.example": [PUBLIC_IP],
    "rebind.example": [PUBLIC_IP, "127.0.0.1"],  # one bad address is enough to refuse
    "metadata.example": ["169.254.169.254"],
    "intranet.example": ["10.1.2.3"],
}


def _fake_getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
    try:
        addrs = [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        if host not in FAKE_DNS:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
        addrs = FAKE_DNS[host]
    out = []
    for a in addrs:
        if ":" in a:
            out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, port, 0, 0)))
        else:
            out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)))
    return out


@pytest.fixture(autouse=True)
def offline_dns(monkeypatch):
    monkeypatch.setattr(weights_mod.socket, "getaddrinfo", _fake_getaddrinfo)


@pytest.fixture
def no_download(monkeypatch):
    """Fail on any download attempt or outgoing connection (the URL checks must refuse first)."""
    calls = []

    def forbidden(*args, **kwargs):
        calls.append(args)
        raise AssertionError(f"a download was attempted: {args}")

    monkeypatch.setattr(weights_mod, "fetch_url", forbidden)
    monkeypatch.setattr(weights_mod, "_guarded_create_connection", forbidden)
    return calls


@pytest.fixture
def model_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HISTOSAM_MODEL_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _client(policy: WeightsPolicy | None = None, limits: WorkLimits | None = None, backend=None):
    table = WeightsTable(policy)
    table.add(WeightEntry(type="vit_b", name="base", url="local:base", source="unused"))
    app = create_app(backend or FakeBackend(), table, ServerConfig(limits=limits or WorkLimits()))
    return TestClient(app, raise_server_exceptions=False), table


def _register(client, url, name="w", type_="vit_b"):
    return client.post("/sam/weights/", json={"type": type_, "name": name, "url": url})


def _same_answer(a: httpx.Response, b: httpx.Response, path_a: str, path_b: str) -> None:
    """Identical status and message once the echoed path is taken out."""
    assert a.status_code == b.status_code, (a.text, b.text)
    assert a.json()["detail"].replace(path_a, "<P>") == b.json()["detail"].replace(path_b, "<P>")


# -- paths ------------------------------------------------------------------------------------------
def test_shadow_and_missing_path_answer_the_same(no_download):
    client, table = _client()
    shadow = _register(client, "/etc/shadow")
    missing = _register(client, "/etc/no_such_file_here")
    assert 400 <= shadow.status_code < 500 and "Traceback" not in shadow.text
    _same_answer(shadow, missing, "/etc/shadow", "/etc/no_such_file_here")
    assert shadow.status_code == 422 and "does not name a checkpoint file" in shadow.json()["detail"]
    # with a checkpoint name: an existing folder answers like a missing file
    a = _register(client, "/etc.pt/")
    b = _register(client, "/proc/self/cwd/no_such_dir_here/x.pt")
    assert a.status_code == b.status_code == 404
    assert "does not exist on the server or may not be registered" in a.json()["detail"]
    assert [e.name for e in table.list()] == ["base"]


def test_existing_file_with_wrong_suffix_is_refused(tmp_path):
    client, table = _client()
    notes = tmp_path / "notes.txt"
    notes.write_text("secret")
    r = _register(client, str(notes))
    assert r.status_code == 422 and ".pt .pth .ckpt .bin" in r.json()["detail"]
    assert _register(client, str(tmp_path / "model.safetensors")).status_code == 422
    # a checkpoint-named symlink to a file without the suffix is not a way around it
    link = tmp_path / "link.pt"
    link.symlink_to(notes)
    _same_answer(_register(client, str(link)), _register(client, str(tmp_path / "gone.pt")),
                 str(link), str(tmp_path / "gone.pt"))
    # folders and FIFOs named like checkpoints answer like missing files
    (tmp_path / "dir.pt").mkdir()
    os.mkfifo(tmp_path / "fifo.pt")
    for p in ("dir.pt", "fifo.pt"):
        _same_answer(_register(client, str(tmp_path / p)), _register(client, str(tmp_path / "gone.pt")),
                     str(tmp_path / p), str(tmp_path / "gone.pt"))
    assert [e.name for e in table.list()] == ["base"]
    assert _register(client, "relative/model.pt").status_code == 422


def test_models_dir_allows_inside_and_refuses_outside(tmp_path):
    models, other = tmp_path / "models", tmp_path / "other"
    models.mkdir()
    other.mkdir()
    inside, outside = models / "mine.pt", other / "theirs.pt"
    inside.write_bytes(b"\x80checkpoint")
    outside.write_bytes(b"\x80checkpoint")
    (models / "escape.pt").symlink_to(outside)
    client, table = _client(WeightsPolicy(models_dirs=(str(models),)))

    r = _register(client, str(inside), name="mine")
    assert r.status_code == 200 and r.text == f"mine ({inside}) is registered."
    assert table.resolve("vit_b", str(inside)).source == str(inside.resolve())

    missing = _register(client, str(models / "absent.pt"))
    for bad in (str(outside), str(models / "escape.pt"), f"{models}/../other/theirs.pt"):
        r = _register(client, bad, name="x")
        _same_answer(r, missing, bad, str(models / "absent.pt"))
        assert "--models-dir" in r.json()["detail"] and str(other) not in r.json()["detail"].replace(bad, "")
    _same_answer(_register(client, f"file://{outside}", name="y"), missing, str(outside), str(models / "absent.pt"))
    assert [e.name for e in table.list()] == ["base", "mine"]


def test_file_url_is_a_path(tmp_path):
    ckpt = tmp_path / "m.pth"
    ckpt.write_bytes(b"\x80x")
    client, table = _client()
    assert _register(client, f"file://{ckpt}").status_code == 200
    assert table.resolve("vit_b", f"file://{ckpt}").source == str(ckpt)
    assert _register(client, "file:///etc/passwd", name="p").status_code == 422  # no checkpoint suffix
    assert _register(client, "file://otherhost/x.pt", name="q").status_code == 422


@pytest.mark.parametrize(
    "url",
    ["/" + "a" * 299 + ".pt", "/" + "/".join(["abcdefgh"] * 40) + ".pt", "/tmp/" + "b" * 300,
     "/tmp/x\x00.pt", "/tmp/x\n.pt", "/" + "c" * 5000, "http://" + "a" * 300 + ".com/w.pt",
     "http://" + ".".join(["abc"] * 80) + "/w.pt", "https://public.example/" + "p" * 3000,
     "http://[::1" + "1" * 300 + "]/x", "http://public.example:99999/x"],
)
def test_long_or_odd_strings_are_4xx_not_500(url, no_download):
    client, _ = _client()
    r = _register(client, url)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["detail"] and "internal server error" not in r.text


# -- URLs -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8000/sam/health/", "http://localhost/w.pt", "http://169.254.169.254/latest/meta-data",
     "http://[::1]:8000/x.pt", "http://0.0.0.0/x.pt", "http://[::ffff:127.0.0.1]/x.pt", "http://10.0.0.5/x.pt",
     "http://192.168.1.1/x.pt", "http://[fe80::1]/x.pt", "http://2130706433/x.pt", "http://metadata.example/x",
     "http://intranet.example/x.pt", "https://rebind.example/x.pt", "http://unresolvable.example/x.pt",
     "file:///etc/shadow", "ftp://public.example/x.pt", "gopher://public.example/x", "https:///x.pt",
     "http://user:pw@public.example/x.pt", "data:text/plain,hello", "jar:http://public.example/x!/y"],
)
def test_local_and_non_http_urls_are_refused_without_a_request(url, no_download):
    client, table = _client()
    r = _register(client, url)
    assert 400 <= r.status_code < 500, r.text
    assert not no_download
    assert [e.name for e in table.list()] == ["base"]


def test_refused_hosts_answer_alike(no_download):
    client, _ = _client()
    answers = {_register(client, f"http://{h}/x.pt").json()["detail"].replace(h, "<H>")
               for h in ("127.0.0.1", "intranet.example", "unresolvable.example")}
    assert len(answers) == 1 and "--allow-local-urls" in answers.pop()


def test_public_url_is_downloaded_with_the_limits(monkeypatch, model_cache):
    seen = {}

    def fake_fetch(url, target, max_bytes, allow_local=False, progress=None, timeout=30.0):
        seen.update(url=url, target=target, max_bytes=max_bytes, allow_local=allow_local)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"\x80weights")
        return target

    monkeypatch.setattr(weights_mod, "fetch_url", fake_fetch)
    client, table = _client(WeightsPolicy(max_download_bytes=12345))
    url = "https://public.example/dl/my%20model.pth?x=1&y=" + "z" * 500
    r = _register(client, url, name="pub")
    assert r.status_code == 200, r.text
    assert seen["max_bytes"] == 12345 and seen["allow_local"] is False
    assert seen["target"].parent == model_cache / "custom" and len(seen["target"].name) < 100
    assert table.resolve("vit_b", url).source == str(seen["target"])


def test_entry_cap(tmp_path):
    client, table = _client(WeightsPolicy(max_entries=3))
    files = []
    for i in range(4):
        f = tmp_path / f"m{i}.pt"
        f.write_bytes(b"\x80")
        files.append(f)
    assert _register(client, str(files[0]), name="a").status_code == 200
    assert _register(client, str(files[1]), name="b").status_code == 200
    r = _register(client, str(files[2]), name="c")
    assert r.status_code == 409 and "limit" in r.json()["detail"] and "--max-weights" in r.json()["detail"]
    assert len(table.list()) == 3
    # re-registering an existing entry is still answered as before
    assert "already exists" in _register(client, str(files[0]), name="a").text


def test_ip_allowed():
    for bad in ("127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.0.1", "169.254.169.254", "0.0.0.0", "100.64.0.1",
                "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fc00::1", "::ffff:10.0.0.1",
                "2002:7f00:1::", "64:ff9b::7f00:1", "2001:0:4136:e378:8000:63bf:80ff:fffe"):
        assert not ip_allowed(ipaddress.ip_address(bad)), bad
    for good in ("8.8.8.8", PUBLIC_IP, "2606:4700:4700::1111"):
        assert ip_allowed(ipaddress.ip_address(good)), good


# -- the real downloader, against servers on 127.0.0.1 ----------------------------------------------
class _Files(http.server.BaseHTTPRequestHandler):
    routes: dict = {}
    hits: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        self.hits.append(self.path)
        route = self.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        kind, value = route
        if kind == "redirect":
            hook = self.routes.get("on_redirect")
            if hook:
                hook[1]()
            self.send_response(302)
            self.send_header("Location", value)
            self.end_headers()
        elif kind == "chunked":  # no Content-Length
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(value)
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(value)))
            self.end_headers()
            self.wfile.write(value)


@pytest.fixture
def files_server():
    handler = type("Handler", (_Files,), {"routes": {}, "hits": []})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", handler
    finally:
        srv.shutdown()
        srv.server_close()


def test_download_from_allowed_local_url(files_server, model_cache):
    base, handler = files_server
    handler.routes["/w.pth"] = ("file", b"\x80" + b"w" * 5000)
    client, table = _client(WeightsPolicy(allow_local_urls=True))
    r = _register(client, f"{base}/w.pth", name="local")
    assert r.status_code == 200, r.text
    path = table.resolve("vit_b", f"{base}/w.pth").source
    assert open(path, "rb").read() == b"\x80" + b"w" * 5000
    assert client.get("/sam/progress/").json() == {"message": None, "percent": -1}


def test_download_size_limit(files_server, model_cache):
    base, handler = files_server
    handler.routes["/big.pth"] = ("file", b"x" * 5000)
    handler.routes["/stream.pth"] = ("chunked", b"x" * 5000)
    client, table = _client(WeightsPolicy(allow_local_urls=True, max_download_bytes=1000))
    for p in ("/big.pth", "/stream.pth"):
        r = _register(client, base + p, name=p)
        assert r.status_code == 413, r.text
        assert "download limit" in r.json()["detail"]
    assert [e.name for e in table.list()] == ["base"]
    leftovers = list((model_cache / "custom").glob("*")) if (model_cache / "custom").exists() else []
    assert leftovers == []


def test_loopback_refused_at_connect_time(files_server, tmp_path):
    base, handler = files_server
    handler.routes["/w.pth"] = ("file", b"\x80w")
    with pytest.raises(NotAllowedError):
        fetch_url(f"{base}/w.pth", tmp_path / "w.pth", max_bytes=1 << 20, allow_local=False)
    assert handler.hits == [] and not (tmp_path / "w.pth").exists()


def test_redirects_are_checked(files_server, model_cache, monkeypatch):
    base, handler = files_server
    handler.routes["/w.pth"] = ("file", b"\x80w")
    handler.routes["/to-ftp"] = ("redirect", "ftp://public.example/x.pt")
    handler.routes["/to-file"] = ("redirect", "file:///etc/passwd")
    client, _ = _client(WeightsPolicy(allow_local_urls=True))
    for p in ("/to-ftp", "/to-file"):
        r = _register(client, base + p, name=p)
        assert 400 <= r.status_code < 500 and "redirected" in r.json()["detail"], r.text

    # a public first hop that redirects to a loopback address: the second connection is refused
    public = {"yes": True}
    monkeypatch.setattr(weights_mod, "ip_allowed", lambda ip: public["yes"])
    handler.routes["/to-local"] = ("redirect", f"{base}/w.pth")
    handler.routes["on_redirect"] = ("hook", lambda: public.update(yes=False))
    client, table = _client(WeightsPolicy(allow_local_urls=False))
    r = _register(client, f"{base}/to-local", name="r")
    assert r.status_code == 403, r.text
    assert handler.hits.count("/w.pth") == 0 and "/to-local" in handler.hits
    assert [e.name for e in table.list()] == ["base"]


# -- prompt limits ----------------------------------------------------------------------------------
def _img():
    return encode_png_b64(np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8))


def _prompt(client, points=None, labels=None, bbox=None, raw=None):
    if raw is not None:
        return client.post("/sam/", content=raw, headers={"content-type": "application/json"})
    body = {"type": "vit_b", "b64img": _img()}
    if points is not None:
        body.update(point_coords=points, point_labels=labels if labels is not None else [1] * len(points))
    if bbox is not None:
        body["bbox"] = bbox
    return client.post("/sam/", json=body)


def test_too_many_points():
    backend = FakeBackend()
    client, _ = _client(limits=WorkLimits(max_points=512), backend=backend)
    ok = _prompt(client, [[1.0, 1.0]] * 512)
    assert ok.status_code == 200, ok.text
    t = time.perf_counter()
    r = _prompt(client, [[1.0, 1.0]] * 30_000)
    assert r.status_code == 422 and "30000 prompt points" in r.json()["detail"]
    assert "at most 512" in r.json()["detail"] and "--max-points" in r.json()["detail"]
    assert time.perf_counter() - t < 10
    assert len(backend.calls) == 1


@pytest.mark.parametrize(
    ("coords", "phrase"),
    [("[[NaN, 3]]", "finite"), ("[[3, Infinity]]", "finite"), ("[[-Infinity, 3]]", "finite"),
     ("[[3, 1e400]]", "finite"), ("[[61, 3]]", "outside the 60×40 image"), ("[[-1, 3]]", "outside"),
     ("[[3, 40.5]]", "outside"), ("[[5, 5], [1e9, 5]]", "point_coords[1]")],
)
def test_bad_point_coordinates(coords, phrase):
    backend = FakeBackend()
    client, _ = _client(backend=backend)
    n = coords.count("[") - 1
    raw = f'{{"type": "vit_b", "b64img": "{_img()}", "point_coords": {coords}, "point_labels": {[1] * n}}}'
    r = _prompt(client, raw=raw)
    assert r.status_code == 422, r.text
    assert phrase in r.json()["detail"]
    assert backend.calls == []


def test_bbox_checks_and_clipping():
    backend = FakeBackend()
    client, _ = _client(backend=backend)
    raw = f'{{"type": "vit_b", "b64img": "{_img()}", "bbox": [0, 0, NaN, 4]}}'
    assert _prompt(client, raw=raw).status_code == 422
    r = _prompt(client, bbox=[100, 0, 120, 10])
    assert r.status_code == 422 and "outside the 60×40 image" in r.json()["detail"]
    assert _prompt(client, bbox=[-5, 30, 70, 45]).status_code == 200  # drawn across the edge: clipped
    np.testing.assert_array_equal(backend.calls[-1]["box"], [0, 30, 60, 40])
    assert _prompt(client, [[0, 0], [60, 40]]).status_code == 200  # the image's corners are inside


def test_automask_area_limit():
    client, _ = _client(limits=WorkLimits(max_automask_pixels=1000))
    r = client.post("/sam/automask/", json={"type": "vit_b", "b64img": _img()})
    assert r.status_code == 422 and "at most 1000 pixels" in r.json()["detail"]
    assert "--max-automask-pixels" in r.json()["detail"]


def test_amg_work_limits():
    limits = WorkLimits()
    assert amg_work({"points_per_side": 32}) == (1024, 1)
    assert amg_work({"points_per_side": 32, "crop_n_layers": 1, "crop_n_points_downscale_factor": 2}) == (2048, 5)
    assert check_amg_work({"points_per_side": 32, "points_per_batch": 4096}, limits)["points_per_batch"] == 256
    with pytest.raises(RequestError, match="16384 point prompts.*at most 4096"):
        check_amg_work({"points_per_side": 128}, limits)
    with pytest.raises(RequestError, match="85 crops.*at most 21"):
        check_amg_work({"points_per_side": 4, "crop_n_layers": 3}, limits)
    with pytest.raises(RequestError, match="no points"):
        check_amg_work({"points_per_side": 1, "crop_n_layers": 1, "crop_n_points_downscale_factor": 2}, limits)


# -- the real backend: AMG limits, lock, health ------------------------------------------------------
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_model():
    from histosam.models.build import build_model

    torch.manual_seed(0)
    return build_model("tiny").eval()


def _real(tiny_model, limits=None):
    table = WeightsTable()
    table.add(WeightEntry(type="vit_t", name="tiny", url="local:tiny", factory=lambda: tiny_model))
    backend = HistosamBackend(cache_size=8, limits=limits)
    return create_app(backend, table, ServerConfig(limits=limits or WorkLimits())), backend


@pytest.mark.parametrize(
    ("params", "phrase"),
    [({"points_per_side": 256}, "65536 point prompts"), ({"points_per_side": 2, "crop_n_layers": 4}, "341 crops"),
     ({"points_per_side": 1, "crop_n_layers": 1, "crop_n_points_downscale_factor": 2}, "no points"),
     ({"crop_overlap_ratio": 5.0}, "crop_overlap_ratio"), ({"crop_overlap_ratio": float("nan")}, "finite")],
)
def test_amg_requests_over_the_limits_are_422(tiny_model, params, phrase):
    app, _ = _real(tiny_model)
    client = TestClient(app, raise_server_exceptions=False)
    body = {"type": "vit_t", "b64img": _img(), **params}
    t = time.perf_counter()
    r = client.post("/sam/automask/", content=_json_nan(body), headers={"content-type": "application/json"})
    assert r.status_code == 422 and phrase in r.json()["detail"], r.text
    assert time.perf_counter() - t < 30


def _json_nan(obj) -> str:
    import json

    return json.dumps(obj)  # allow_nan: writes NaN as the client-side bug would


def test_fair_lock_serves_in_arrival_order():
    lock = FairLock()
    order = []
    lock.acquire()
    threads = []
    for i in range(8):
        t = threading.Thread(target=lambda i=i: (lock.acquire(), order.append(i), lock.release()))
        t.start()
        threads.append(t)
        deadline = time.monotonic() + 10
        while lock.waiting < i + 1:  # queued before the next one starts
            assert time.monotonic() < deadline
            time.sleep(0.001)
    lock.release()
    for t in threads:
        t.join(10)
    assert order == list(range(8)) and not lock.locked()


def test_health_answers_while_the_lock_is_held(tiny_model):
    app, backend = _real(tiny_model)
    client = TestClient(app)
    with backend.lock:
        r = client.get("/sam/health/")
    assert r.status_code == 200 and r.json()["busy"] is True


def test_registry_download_runs_outside_the_lock(tiny_model, monkeypatch):
    from histosam.errors import ModelNotAvailableError
    from histosam.registry import loader

    app, backend = _real(tiny_model)
    seen = []

    def fake_resolve_files(source):
        seen.append((source, backend.lock.locked()))
        raise ModelNotAvailableError("offline (test)")

    monkeypatch.setattr(loader, "resolve_files", fake_resolve_files)
    app.state.weights.add(WeightEntry(type="vit_b", name="reg", url="https://x/reg", source="vit_b_histopathology"))
    client = TestClient(app, raise_server_exceptions=False)
    r = client.post("/sam/", json={"type": "vit_b", "b64img": _img(), "bbox": [1, 1, 9, 9]})
    assert r.status_code == 503 and "offline (test)" in r.json()["detail"]
    assert seen == [("vit_b_histopathology", False)]


# -- concurrency ------------------------------------------------------------------------------------
def _hammer(base: str, seconds: float, n_threads: int = 50, max_requests: int = 100_000):
    """``n_threads`` clients send small valid prompts on one of 4 viewports for ``seconds`` (bounded loop)."""
    rng = np.random.default_rng(0)
    images = [encode_png_b64(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)) for _ in range(4)]
    latencies, errors = [], []
    lock = threading.Lock()
    ready = threading.Barrier(n_threads + 1)
    stop = [math.inf]

    def worker(k: int):
        r = np.random.default_rng(k)
        with httpx.Client(base_url=base, timeout=120) as c:
            ready.wait(60)
            for i in range(max_requests):
                if i > 0 and time.monotonic() > stop[0]:  # every client sends at least one request
                    break
                x, y = (float(v) for v in r.uniform(5, 90, 2))
                body = {"type": "vit_t", "b64img": images[k % 4], "checkpoint_url": "local:tiny",
                        "point_coords": [[x, y], [x + 3, y + 2]], "point_labels": [0, 1]}
                if k % 3 == 0:
                    body["bbox"] = [x, y, x + 20, y + 5]
                t = time.perf_counter()
                try:
                    resp = c.post("/sam/", json=body)
                    ok = resp.status_code == 200 and isinstance(resp.json(), list)
                    detail = None if ok else f"{resp.status_code} {resp.text[:200]}"
                except httpx.HTTPError as exc:
                    detail = repr(exc)
                dt = time.perf_counter() - t
                with lock:
                    latencies.append(dt)
                    if detail:
                        errors.append(detail)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    ready.wait(60)  # all clients built: start the clock
    stop[0] = time.monotonic() + seconds
    for t in threads:
        t.join(seconds + 300)
    assert not any(t.is_alive() for t in threads)
    return latencies, errors


def _report(capsys, seconds, latencies):
    lat = np.sort(np.asarray(latencies))
    p50, p99 = float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
    with capsys.disabled():
        print(f"\n[serve concurrency {seconds:.0f} s, 50 threads] {len(lat)} requests, p50 {p50 * 1000:.0f} ms, "
              f"p99 {p99 * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms")
    return p99


def _concurrency(tiny_model, capsys, seconds):
    app, backend = _real(tiny_model)
    with running_server(app) as base:
        assert base.startswith("http://127.0.0.1:")
        latencies, errors = _hammer(base, seconds)
    assert errors == [], errors[:5]
    assert len(latencies) >= 50
    p99 = _report(capsys, seconds, latencies)
    assert math.isfinite(p99) and p99 < 120  # generous: the CI machine may be shared; the report says more
    assert backend.lock.waiting == 0 and not backend.lock.locked()


def test_concurrent_small_prompts_short(tiny_model, capsys):
    _concurrency(tiny_model, capsys, 3.0)


@pytest.mark.slow
def test_concurrent_small_prompts_60s(tiny_model, capsys):
    """The trust issue's figure: 50 clients for 60 s on 127.0.0.1, 0 errors, p99 printed."""
    _concurrency(tiny_model, capsys, 60.0)


# -- command line ----------------------------------------------------------------------------------
def test_cli_options_reach_the_app(tmp_path, monkeypatch):
    from histosam.cli.main import build_parser
    from histosam.cli.serve import build
    from histosam.errors import HistosamError

    monkeypatch.delenv("HISTOSAM_TOKEN", raising=False)
    models = tmp_path / "models"
    models.mkdir()
    (models / "a.pt").write_bytes(b"\x80")
    (tmp_path / "b.pt").write_bytes(b"\x80")
    args = build_parser().parse_args(
        ["serve", "--models-dir", str(models), "--models-dir", str(tmp_path / "models"), "--max-points", "7",
         "--max-automask-pixels", "100", "--max-amg-points", "9", "--max-amg-crops", "5", "--max-weights", "6",
         "--max-download-gb", "0.5", "--allow-local-urls"])
    app = build(args)
    policy, limits = app.state.weights.policy, app.state.config.limits
    assert policy.models_dirs == (str(models.resolve()),) * 2 and policy.allow_local_urls
    assert policy.max_download_bytes == 2**29 and policy.max_entries == 6
    assert limits == WorkLimits(max_points=7, max_automask_pixels=100, max_amg_points=9, max_amg_crops=5)
    assert app.state.backend.limits == limits
    client = TestClient(app)
    assert _register(client, str(models / "a.pt"), name="a").status_code == 200
    assert _register(client, str(tmp_path / "b.pt"), name="b").status_code == 404
    r = _prompt(client, [[1, 1]] * 8)
    assert r.status_code == 422 and "at most 7" in r.json()["detail"]

    defaults = build(build_parser().parse_args(["serve"]))
    assert defaults.state.weights.policy == WeightsPolicy() and not WeightsPolicy().allow_local_urls
    assert defaults.state.config.limits == WorkLimits()
    with pytest.raises(HistosamError, match="--models-dir"):
        build(build_parser().parse_args(["serve", "--models-dir", str(tmp_path / "nope")]))
    with pytest.raises(HistosamError, match="--max-points must be positive"):
        build(build_parser().parse_args(["serve", "--max-points", "0"]))
