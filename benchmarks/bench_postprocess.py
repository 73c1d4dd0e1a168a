"""Throughput of the AIS post-processing (megapixels/s) on synthetic decoder maps.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_postprocess.py [--sizes 2000 4000] [--chunk 1024]``.
Maps: random discs (radius 3-11 px, ~25 % foreground, like nuclei at 40x) -> ``distance_maps_from_labels``
+ Gaussian noise. The chunked engine uses a predictor that crops the precomputed maps, so its time is
post-processing + stitching only.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from skimage.draw import disk

from histosam.postprocess.ais import watershed_from_maps
from histosam.postprocess.targets import distance_maps_from_labels
from histosam.tiling.engine import segment_array


def synthetic_maps(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = np.zeros((size, size), np.int32)
    for k in range(1, int(size * size / 670) + 1):
        rr, cc = disk((rng.integers(0, size), rng.integers(0, size)), rng.uniform(3, 11), shape=lab.shape)
        lab[rr, cc] = k
    maps = distance_maps_from_labels(lab)
    maps += rng.normal(0, 0.05, maps.shape).astype(np.float32)
    return maps


def coord_image(shape: tuple[int, int]) -> np.ndarray:
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    return np.stack([rr & 255, cc & 255, ((rr >> 8) << 4) | (cc >> 8)], -1).astype(np.uint8)


def crop_predictor(maps: np.ndarray):
    def predict(tiles: np.ndarray) -> np.ndarray:
        out = []
        for t in tiles:
            p = t[0, 0].astype(int)
            r, c = p[0] + 256 * (p[2] >> 4), p[1] + 256 * (p[2] & 15)
            out.append(maps[:, r : r + t.shape[0], c : c + t.shape[1]])
        return np.stack(out)

    return predict


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 4000])
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    for size in args.sizes:
        if size > 4096:
            raise SystemExit("the coordinate-encoding predictor supports sizes up to 4096")
        maps = synthetic_maps(size)
        mp = size * size / 1e6
        dt, ref = best_of(lambda m=maps: watershed_from_maps(m), args.repeats)
        print(f"watershed_from_maps {size}x{size}: {dt:.2f} s, {mp / dt:.1f} MP/s, {int(ref.max())} objects")
        img = coord_image(maps.shape[1:])
        dt, seg = best_of(
            lambda m=maps, i=img: segment_array(
                i, crop_predictor(m), tile=384, halo=64, chunk=args.chunk, context=args.context
            ),
            args.repeats,
        )
        same = int(seg.max()) == int(ref.max()) and np.array_equal(seg > 0, ref > 0)
        print(
            f"chunk engine {size}x{size} (tile 384, halo 64, chunk {args.chunk}, context {args.context}): "
            f"{dt:.2f} s, {mp / dt:.1f} MP/s, same objects as untiled: {same}"
        )


if __name__ == "__main__":
    main()
