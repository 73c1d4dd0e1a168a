"""Click-to-mask latency: one point prompt after the embedding (issue 16's target: ≤ 15 ms, median).

    OMP_NUM_THREADS=2 python benchmarks/bench_prompts.py [--image PATH] [--n 200] [--threads 2]

``set_image`` on a whole image (default: a MoNuSeg validation image, 1000×1000, 9 tiles at histosam-nano's 512
frame; without the data, the bundled CC0 crop) and every tile's embedding computed first; then ``--n`` single
clicks at random positions, each one ``predict`` call as an interactive tool makes it (one point, full-size
mask), timed one by one: median and 90th percentile, for the default prompt windows and for
``prompt_window=0`` (the whole 512 frame: the behaviour before windows). Also one point with ``multimask`` and
one tight box, and ``predict_logits`` (no full-size mask).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
VAL_IMAGE = Path("/work/shared/data/monuseg/train/TCGA-21-5786-01Z-00-DX1.png")
BUNDLED = ROOT / "src" / "histosam" / "data" / "cmu1_small_region_crop.png"


def _times(fn, args_list) -> np.ndarray:
    out = []
    for a in args_list:
        t0 = time.perf_counter()
        fn(**a)
        out.append((time.perf_counter() - t0) * 1e3)
    return np.asarray(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", type=Path, default=None)
    ap.add_argument("--model", default="histosam-nano")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--windows", default="default,0", help="prompt_window values to compare (default = model's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from PIL import Image

    import histosam

    path = args.image or (VAL_IMAGE if VAL_IMAGE.is_file() else BUNDLED)
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    h, w = rgb.shape[:2]
    model = histosam.load_model(args.model, device="cpu")
    rng = np.random.default_rng(0)
    xy = np.stack([rng.uniform(0, w - 1, args.n), rng.uniform(0, h - 1, args.n)], 1).astype(np.float32)
    print(f"image {path.name} {h}×{w}, model {model.config.name}, torch threads {torch.get_num_threads()}, "
          f"{args.n} clicks")
    for win in args.windows.split(","):
        kw = {} if win == "default" else {"prompt_window": int(win)}
        pred = histosam.Predictor(model, device="cpu", **kw)
        t0 = time.perf_counter()
        pred.set_image(rgb)
        n_tiles = len(pred.get_tile_embeddings())
        embed_s = time.perf_counter() - t0
        for p in xy[:5]:  # warm-up
            pred.predict(points=p[None])
        one = [{"points": p[None]} for p in xy]
        rows = {
            "1 point": _times(pred.predict, one),
            "1 point, multimask": _times(pred.predict, [dict(a, multimask=True) for a in one[: args.n // 2]]),
            "1 box (24 px)": _times(pred.predict, [{"box": np.clip(np.r_[p - 12, p + 12], 0, [w, h, w, h])}
                                                   for p in xy[: args.n // 2]]),
            "1 point, logits only": _times(pred.predict_logits, one[: args.n // 2]),
        }
        print(f"\nprompt_window={win} (effective {pred.window}): set_image + {n_tiles} tile embeddings "
              f"{embed_s:.2f} s, precision {pred.precision}")
        for name, t in rows.items():
            print(f"  {name:24s} median {np.median(t):7.2f} ms   p90 {np.percentile(t, 90):7.2f} ms   "
                  f"(n={len(t)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
