"""Peak memory (RSS) of ``histosam.pipeline.segment_file`` on a large synthetic H&E-like image.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_memory.py [--size 10000] [--model NAME|PATH] [--chunk 1024]``.

The image (``size``×``size`` RGB, pink tissue everywhere with purple nuclei on a jittered 24-px lattice,
drawn strip by strip with :func:`histosam.wsi.synthetic.render_region`) is written once as an uncompressed
TIFF. A **fresh subprocess** then segments it with the full per-image job (AIS chunk engine, per-chunk
measurements and polygons, OME-Zarr labels above 50 Mpx, streamed GeoJSON, CSV/Parquet, provenance) and
reports ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after the imports and at the end (and the kernel's
``VmHWM``). The image is drawn in another subprocess: Linux carries the parent's peak RSS into ``ru_maxrss``
across ``exec``, so the launching process stays small. Without ``--model`` the network is
replaced by the model-free colour-threshold predictor (:mod:`histosam.wsi.fake`), so the number measures
the pipeline's own memory; the RGB image itself (``size² · 3`` bytes) is held in memory by design.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_image(path: Path, size: int, strip: int = 1000) -> None:
    import tifffile

    from histosam.wsi.synthetic import render_region

    patches = [(size / 2, size / 2, size, size)]  # one ellipse covering the whole image: tissue everywhere
    img = np.empty((size, size, 3), np.uint8)
    for y in range(0, size, strip):
        img[y: y + strip] = render_region(0, y, size, min(strip, size - y), patches)
    tifffile.imwrite(path, img, photometric="rgb")


def _vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(image: str, out: str, model: str | None, chunk: int, cache_mb: float | None) -> None:
    import torch  # noqa: F401 - imported up front so that "after imports" includes it (~180 MiB)
    import tqdm.auto  # noqa: F401

    import histosam.automatic  # noqa: F401
    import histosam.pipeline as pipeline
    import histosam.tiling.engine  # noqa: F401
    from histosam.wsi.fake import colour_threshold_maps

    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    kw = {} if cache_mb is None else {"cache_mb": cache_mb}
    if model:
        names = pipeline.segment_file(image, out, model, chunk=chunk, progress=False, overwrite=True, **kw)
    else:
        names = pipeline.segment_file(image, out, None, predict_maps=colour_threshold_maps, chunk=chunk,
                                      progress=False, overwrite=True, **kw)
    wall = time.perf_counter() - t
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    prov = json.loads(Path(names["provenance"]).read_text())
    print(json.dumps({"peak_rss_mb": peak_kb / 1024, "after_import_rss_mb": base_kb / 1024,
                      "vm_hwm_mb": _vm_hwm_mb(), "wall_s": wall,
                      "n_objects": prov["n_objects"], "labels": Path(names["labels"]).name,
                      "timings": prov["timings"]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=10_000, help="image side in pixels (default 10000)")
    ap.add_argument("--model", default=None, help="model name/path (default: fake colour-threshold maps)")
    ap.add_argument("--chunk", type=int, default=1024, help="post-processing chunk (default 1024)")
    ap.add_argument("--cache-mb", type=float, default=None,
                    help="tile-map cache budget of the chunk engine (default: the engine's)")
    ap.add_argument("--workdir", default=None, help="folder for the image and outputs (default: a temp dir)")
    ap.add_argument("--child", nargs=2, metavar=("IMAGE", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--write-image", metavar="PATH", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.model, args.chunk, args.cache_mb)
        return
    if args.write_image:
        write_image(Path(args.write_image), args.size)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        image = Path(tmp) / f"synthetic_{args.size}.tif"
        t = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--size", str(args.size), "--write-image", str(image)],
                       check=True, env=env)
        print(f"wrote {image.name} ({args.size}x{args.size}) in {time.perf_counter() - t:.1f} s", flush=True)
        cmd = [sys.executable, __file__, "--child", str(image), str(Path(tmp) / "out"), "--chunk", str(args.chunk)]
        if args.model:
            cmd += ["--model", args.model]
        if args.cache_mb is not None:
            cmd += ["--cache-mb", str(args.cache_mb)]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode != 0:
            sys.exit(f"child failed:\n{res.stderr}")
        r = json.loads(res.stdout.strip().splitlines()[-1])
    image_mb = args.size * args.size * 3 / 2**20
    print(f"image {args.size}x{args.size} ({image_mb:.0f} MiB RGB), predictor "
          f"{args.model or 'fake colour-threshold'}, chunk {args.chunk}, cache_mb {args.cache_mb or 'default'}")
    print(f"peak RSS {r['peak_rss_mb']:.0f} MiB (VmHWM {r['vm_hwm_mb']:.0f} MiB; after imports "
          f"{r['after_import_rss_mb']:.0f} MiB); "
          f"{r['n_objects']} nuclei in {r['wall_s']:.1f} s -> {r['labels']}")
    print("timings:", {k: round(v, 1) for k, v in r["timings"].items()})


if __name__ == "__main__":
    main()
