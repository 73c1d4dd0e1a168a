"""``histosam serve`` command line: model specs, defaults offered to the client, a real subprocess."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from histosam.cli.main import build_parser
from histosam.cli.serve import _is_loopback, build, parse_model_spec
from histosam.errors import HistosamError
from histosam.server import running_server

PATHOSAM_VIT_B = "https://owncloud.gwdg.de/index.php/s/sBB4H8CTmIoBZsQ/download"


def test_parse_model_spec(tmp_path):
    ckpt = tmp_path / "my_model.pth"
    ckpt.write_bytes(b"x")
    assert parse_model_spec(f"vit_l={ckpt}") == ("vit_l", "my_model", str(ckpt.resolve()))
    assert parse_model_spec("histosam-nano") == ("vit_t", "histosam-nano", "histosam-nano")
    assert parse_model_spec("vit_h=vit_h_histopathology") == ("vit_h", "vit_h_histopathology", "vit_h_histopathology")
    with pytest.raises(HistosamError, match="unknown model type 'vit_q'"):
        parse_model_spec("vit_q=foo")
    with pytest.raises(HistosamError, match="does not exist"):
        parse_model_spec(f"vit_b={tmp_path / 'missing.pth'}")
    with pytest.raises(HistosamError, match="missing model name"):
        parse_model_spec("vit_b=")


def test_loopback():
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("192.168.1.5")


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_defaults_offer_nano_and_pathosam_without_loading(monkeypatch):
    monkeypatch.delenv("HISTOSAM_TOKEN", raising=False)
    args = _args()
    assert args.host == "127.0.0.1" and args.port == 8000
    with running_server(build(args)) as base:
        weights = httpx.get(f"{base}/sam/weights/").json()
        health = httpx.get(f"{base}/sam/health/").json()
    assert weights[0] == {"type": "vit_t", "name": "histosam-nano", "url": "histosam-nano"}
    assert {"type": "vit_b", "name": "vit_b_histopathology", "url": PATHOSAM_VIT_B} in weights
    assert [w["type"] for w in weights] == ["vit_t", "vit_b", "vit_l", "vit_h"]
    assert health["models_loaded"] == []  # nothing loaded (or downloaded) at start-up


def test_token_from_environment(monkeypatch):
    monkeypatch.setenv("HISTOSAM_TOKEN", "envtok")
    with running_server(build(_args())) as base:
        assert httpx.get(f"{base}/sam/version/").status_code == 401
        assert httpx.get(f"{base}/t/envtok/sam/version/").status_code == 200


def test_cli_subprocess_serves_on_loopback(tmp_path):
    ckpt = tmp_path / "weights.pth"
    ckpt.write_bytes(b"x")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "HISTOSAM_TOKEN"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "histosam.cli.main", "serve", "--port", str(port), "--model", f"vit_b={ckpt}",
         "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/sam/weights/", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        assert r.json() == [{"type": "vit_b", "name": "weights", "url": str(ckpt.resolve())}]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/sam/" in out


def test_token_is_redacted_from_access_log():
    import logging

    from histosam.server.runner import RedactFilter

    rec = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s"', ("1.2.3.4", "GET",
                            "/t/s3cret/sam/weights/"), None)
    assert RedactFilter("s3cret").filter(rec)
    assert rec.getMessage() == '1.2.3.4 - "GET /t/***/sam/weights/"'
