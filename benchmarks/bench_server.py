"""Load test of ``histosam serve``: concurrent QuPath-like clients on loopback, latency percentiles.

Starts ``histosam serve`` in a subprocess on 127.0.0.1 (free port), then ``--clients`` threads send
prompt requests shaped like the QuPath extension's (a box or foreground/background points on one of
``--images`` viewports, so most requests hit the shared embedding cache) for ``--duration`` seconds;
with ``--automask-every K`` every K-th request of a client is ``/sam/automask/``. Prints p50/p90/p99
latency, throughput, error count and the server's cache counters, then stops the server.
Only ever talks to 127.0.0.1. Bounded: the run ends after ``--duration`` plus one request timeout.

    python benchmarks/bench_server.py --model vit_t=histosam-nano --clients 20 --duration 30
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "monuseg" / "train"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _viewports(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` RGB uint8 viewports: crops of a real H&E image when ../shared/data exists, else noise blobs."""
    rng = np.random.default_rng(seed)
    pngs = sorted(DATA.glob("*.png")) if DATA.is_dir() else []
    out = []
    for i in range(n):
        if pngs:
            from PIL import Image

            img = np.asarray(Image.open(pngs[i % len(pngs)]).convert("RGB"))
            y, x = rng.integers(0, img.shape[0] - size + 1), rng.integers(0, img.shape[1] - size + 1)
            out.append(np.ascontiguousarray(img[y : y + size, x : x + size]))
        else:
            out.append(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    return out


def _b64png(img: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _prompt_body(rng: np.random.Generator, b64: str, size: int, model_type: str) -> dict:
    if rng.random() < 0.5:
        x, y = rng.integers(0, size - 40, 2)
        w, h = rng.integers(10, 40, 2)
        return {"type": model_type, "b64img": b64, "bbox": [int(x), int(y), int(x + w), int(y + h)],
                "multimask_output": False}
    fg = rng.integers(0, size, (int(rng.integers(1, 3)), 2)).tolist()
    bg = rng.integers(0, size, (int(rng.integers(0, 2)), 2)).tolist()
    return {"type": model_type, "b64img": b64, "point_coords": bg + fg,
            "point_labels": [0] * len(bg) + [1] * len(fg), "multimask_output": bool(rng.random() < 0.5)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_t=histosam-nano", help="histosam serve --model spec")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    ap.add_argument("--images", type=int, default=4, help="distinct viewports (embedding cache keys)")
    ap.add_argument("--size", type=int, default=512, help="viewport side in pixels")
    ap.add_argument("--automask-every", type=int, default=0, help="every K-th request is automask (0: never)")
    ap.add_argument("--threads", type=int, default=2, help="server torch threads")
    ap.add_argument("--timeout", type=float, default=120.0, help="per-request timeout in seconds")
    ap.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = ap.parse_args(argv)

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "histosam.cli.main", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--model", args.model, "--threads", str(args.threads), "--log-level", "warning", "--preload"]
    server = subprocess.Popen(cmd, env={**os.environ, "HISTOSAM_TOKEN": ""})
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{base}/sam/version/", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                print("server did not start", file=sys.stderr)
                return 1
            time.sleep(0.2)
        model_type = args.model.partition("=")[0] if "=" in args.model else "vit_b"
        images = [_b64png(v) for v in _viewports(args.images, args.size)]
        # warm: one embedding per viewport (first-touch latency is reported separately)
        warm = []
        with httpx.Client(base_url=base, timeout=args.timeout) as c:
            for b64 in images:
                t0 = time.perf_counter()
                r = c.post("/sam/", json={"type": model_type, "b64img": b64, "bbox": [10, 10, 50, 50]})
                warm.append(time.perf_counter() - t0)
                r.raise_for_status()

        lat: list[tuple[str, float]] = []
        errors: list[str] = []
        lock = threading.Lock()
        stop_at = time.monotonic() + args.duration

        def client(seed: int) -> None:
            rng = np.random.default_rng(seed)
            with httpx.Client(base_url=base, timeout=args.timeout) as c:
                k = 0
                while time.monotonic() < stop_at:
                    k += 1
                    b64 = images[int(rng.integers(len(images)))]
                    if args.automask_every and k % args.automask_every == 0:
                        path, body = "/sam/automask/", {"type": model_type, "b64img": b64}
                    else:
                        path, body = "/sam/", _prompt_body(rng, b64, args.size, model_type)
                    t0 = time.perf_counter()
                    try:
                        r = c.post(path, json=body)
                        ok = r.status_code == 200 and isinstance(r.json(), list)
                        err = None if ok else f"{r.status_code}: {r.text[:200]}"
                    except (httpx.HTTPError, json.JSONDecodeError) as exc:
                        err = f"{type(exc).__name__}: {exc}"
                    dt = time.perf_counter() - t0
                    with lock:
                        (errors.append(err) if err else lat.append((path, dt)))

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
        t_start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=args.duration + args.timeout + 10)
        wall = time.monotonic() - t_start
        stats = httpx.get(f"{base}/sam/health/", timeout=10).json()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()

    def pct(values: list[float], q: float) -> float | None:
        return round(float(np.percentile(values, q)) * 1000, 1) if values else None

    summary = {
        "model": args.model, "clients": args.clients, "duration_s": round(wall, 1), "viewport": args.size,
        "requests_ok": len(lat), "errors": len(errors), "throughput_rps": round(len(lat) / wall, 2),
        "first_touch_ms": [round(w * 1000, 1) for w in warm],
    }
    for path in sorted({p for p, _ in lat}):
        vals = [d for p, d in lat if p == path]
        summary[path] = {"n": len(vals), "p50_ms": pct(vals, 50), "p90_ms": pct(vals, 90), "p99_ms": pct(vals, 99)}
    summary["server"] = {k: stats.get(k) for k in ("embedding_hits", "embedding_misses", "automask_runs",
                                                    "automask_hits", "embeddings_cached")}
    if errors:
        summary["first_errors"] = errors[:3]
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if not errors else 2


if __name__ == "__main__":
    sys.exit(main())
