"""Cost of typing nuclei on a slide: ``segment_slide`` with and without the class head, same model, same slide.

The model (default ``histosam-nano-classes``) runs once with its class head (``ModelMaps(classes=True)``: the
head's probabilities are predicted, averaged per nucleus in the chunk engine, written as classes) and once without
(``classes=False``: the same trunk and AIS head only). Runs alternate (off, on, off, on, ...) in this process after
one model load each, with the CLI's defaults (target 0.25 µm/px, the model's tiling, chunk 2048, batch 8); the
figures are the ratios of the fastest and of the median compute time of each mode (issue 17's target: <= 1.3x),
and, to tell the model's share from the pipeline's, the same ratio for the map predictor alone on one tile of the
model's size (alternating, ``--tile-reps`` each). CPU seconds of this process (user + system, all threads) are
printed too: on a shared machine they move less than wall-clock time when other work competes for the cores.

    python benchmarks/bench_slide_classes.py                       # CMU-1-Small-Region if present, else synthetic
    python benchmarks/bench_slide_classes.py --slide S.svs --reps 3 --device cuda
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

CMU = Path(__file__).resolve().parents[2] / "shared" / "data" / "wsi" / "CMU-1-Small-Region.svs"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slide", default=None, help=f"slide file (default: {CMU} if present, else a synthetic one)")
    ap.add_argument("--model", default="histosam-nano-classes", help="a model with a class head")
    ap.add_argument("--device", default=None)
    ap.add_argument("--reps", type=int, default=2, help="runs of each mode (alternating)")
    ap.add_argument("--target-mpp", type=float, default=0.25)
    ap.add_argument("--tile-reps", type=int, default=4, help="predictor-only runs of each mode on one tile")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    from histosam.tasks.nuclei import default_tiling
    from histosam.wsi.pipeline import ModelMaps, segment_slide

    work = Path(args.workdir or tempfile.mkdtemp(prefix="histosam-bench-classes-"))
    work.mkdir(parents=True, exist_ok=True)
    slide = Path(args.slide) if args.slide else CMU
    if not slide.exists():
        from histosam.wsi.synthetic import write_synthetic_slide

        slide = write_synthetic_slide(work / "synthetic.tif", 4096, 4096, mpp=0.25, levels=3)
    predictors = {}
    for mode, classes in (("plain", False), ("classes", True)):
        t0 = time.perf_counter()
        predictors[mode] = ModelMaps(args.model, args.device, classes=classes)
        predictors[mode].postprocess  # noqa: B018 - load now, outside the timings
        print(f"{mode}: model loaded in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    model = predictors["classes"].loaded_model
    tile, halo = default_tiling(model, (1 << 20, 1 << 20))
    times: dict[str, list[float]] = {"plain": [], "classes": []}
    cpu: dict[str, list[float]] = {"plain": [], "classes": []}
    provs: dict[str, dict] = {}
    for rep in range(args.reps):
        for mode in ("plain", "classes"):
            pm = predictors[mode]
            c0 = _cpu_s()
            prov = segment_slide(slide, work / mode, pm, target_mpp=args.target_mpp, tile=tile, halo=halo,
                                 chunk=2048, context=128, batch_size=8, params=pm.postprocess, overwrite=True,
                                 model_name=args.model)
            times[mode].append(prov["compute_seconds"])
            cpu[mode].append(_cpu_s() - c0)
            provs[mode] = prov
            print(json.dumps({"rep": rep, "mode": mode, "compute_s": prov["compute_seconds"],
                              "total_s": prov["total_seconds"], "cpu_s": round(cpu[mode][-1], 2),
                              "objects": prov["objects"]}), flush=True)
    best = {m: min(v) for m, v in times.items()}
    ratio = best["classes"] / best["plain"]
    same = provs["plain"]["objects"] == provs["classes"]["objects"]
    print(f"slide {slide.name}: {provs['plain']['objects']} nuclei ({'same' if same else 'DIFFERENT'} with classes), "
          f"tiling {tile} + 2x{halo}, target {args.target_mpp} µm/px")
    print(f"compute s  plain: min {best['plain']:.2f} (median {statistics.median(times['plain']):.2f})  "
          f"classes: min {best['classes']:.2f} (median {statistics.median(times['classes']):.2f})")
    med = statistics.median(times["classes"]) / statistics.median(times["plain"])
    print(f"ratio classes / plain: {ratio:.3f}x fastest, {med:.3f}x median (target <= 1.3x)")
    print(f"CPU s (run, all threads)  plain: min {min(cpu['plain']):.1f}  classes: min {min(cpu['classes']):.1f}  "
          f"ratio {min(cpu['classes']) / min(cpu['plain']):.3f}x")
    tile_times = _tile_ratio(predictors, tile + 2 * halo, args.tile_reps)
    print(f"predictor alone, one {tile + 2 * halo}² tile: plain {min(tile_times['plain']):.2f} s, classes "
          f"{min(tile_times['classes']):.2f} s, ratio {min(tile_times['classes']) / min(tile_times['plain']):.3f}x")
    print(f"class counts: {provs['classes']['class_counts']}")
    return 0 if same else 1


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _tile_ratio(predictors: dict, size: int, reps: int) -> dict[str, list[float]]:
    """Seconds of each mode's map predictor on one ``size``² H&E-like tile (after one warm-up call each)."""
    import numpy as np

    rng = np.random.default_rng(0)
    tile = np.empty((1, size, size, 3), np.uint8)
    tile[:] = (230, 170, 205)
    yy, xx = np.mgrid[-7:8, -7:8]
    disc = yy**2 + xx**2 <= 36
    for cy, cx in rng.integers(7, size - 8, (size * size // 800, 2)):
        tile[0, cy - 7:cy + 8, cx - 7:cx + 8][disc] = (90, 40, 140)
    for pm in predictors.values():
        pm(tile)
    out: dict[str, list[float]] = {m: [] for m in predictors}
    for _ in range(reps):
        for mode, pm in predictors.items():
            t0 = time.perf_counter()
            pm(tile)
            out[mode].append(time.perf_counter() - t0)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
