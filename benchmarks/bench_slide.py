"""Peak RAM and throughput of ``histosam.wsi.pipeline.segment_slide`` on synthetic slides.

Generates pyramidal synthetic slides (default 10k x 10k and 40k x 40k at 0.5 µm/px, two pink tissue
ellipses covering ~15 % with dark "nuclei"), then runs each in a fresh subprocess and reports its
peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``), wall time, tissue mm², mm²/s, objects.

    OMP_NUM_THREADS=1 python benchmarks/bench_slide.py                 # fake colour-threshold predictor
    python benchmarks/bench_slide.py --sizes 10000 --model NAME_OR_PATH --target-mpp 0.5
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child(args: argparse.Namespace) -> None:
    from histosam.wsi.pipeline import ModelMaps, segment_slide

    if args.model:
        predict = ModelMaps(args.model, args.device)
        params = predict.postprocess
    else:
        from histosam.wsi.fake import colour_threshold_maps as predict

        params = {}
    t0 = time.perf_counter()
    prov = segment_slide(args.child, args.out, predict, target_mpp=args.target_mpp, tile=args.tile,
                         halo=args.halo, chunk=args.chunk, context=args.context, batch_size=args.batch_size,
                         params=params, overwrite=True, model_name=args.model or "fake")
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"wall_s": round(wall, 2), "peak_rss_mb": round(peak_mb, 1),
                      "tissue_mm2": prov["tissue_area_mm2"], "objects": prov["objects"],
                      "chunks": prov["chunks_with_tissue"], "tiles": prov["tiles_predicted_this_run"],
                      "mm2_per_s": round(prov["tissue_area_mm2"] / max(prov["compute_seconds"], 1e-9), 4)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 40000], help="slide side lengths (px)")
    ap.add_argument("--mpp", type=float, default=0.5, help="synthetic slide µm/px")
    ap.add_argument("--target-mpp", type=float, default=0.5)
    ap.add_argument("--model", default=None, help="registry name or checkpoint (default: fake predictor)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--tile", type=int, default=384)
    ap.add_argument("--halo", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workdir", default=None, help="where slides and outputs go (default: a temp dir)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="histosam-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        slide = work / f"synthetic_{size}.tif"
        if not slide.exists():
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c",
                            "import sys; from histosam.wsi.synthetic import write_synthetic_slide as w; "
                            f"w(sys.argv[1], {size}, {size}, mpp={args.mpp}, levels=5, compression='zlib')",
                            str(slide)], check=True)
            print(f"generated {slide.name} ({slide.stat().st_size / 2**20:.1f} MiB) in "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
        cmd = [sys.executable, __file__, "--child", str(slide), "--out", str(work / f"out_{size}")]
        for k in ("target_mpp", "tile", "halo", "chunk", "context", "batch_size", "model", "device"):
            v = getattr(args, k)
            if v is not None:
                cmd += [f"--{k.replace('_', '-')}", str(v)]
        res = subprocess.run(cmd, check=True, capture_output=True, text=True)
        row = {"size": size, **json.loads(res.stdout.strip().splitlines()[-1])}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"{'size':>7} {'peak RSS MB':>11} {'wall s':>7} {'tissue mm2':>10} {'mm2/s':>7} {'objects':>8}")
    for r in rows:
        print(f"{r['size']:>7} {r['peak_rss_mb']:>11} {r['wall_s']:>7} {r['tissue_mm2']:>10} "
              f"{r['mm2_per_s']:>7} {r['objects']:>8}")


if __name__ == "__main__":
    main()
