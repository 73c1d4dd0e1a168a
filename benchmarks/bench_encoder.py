"""Image-encoder speed: histosam vs Meta's segment-anything (fp32 reference) on identical random weights.

    python benchmarks/bench_encoder.py [--arch vit_b] [--repeats 3] [--device cpu|cuda]

Prints, in one run: the reference time, histosam's time in fp32 (exact mode) and in its default fast mode
(bf16 autocast where the hardware has it, fused attention), the speed-up ratios, and the cosine similarity and
max abs difference of each embedding to the reference embedding.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import histosam  # noqa: E402
from histosam.inference.runtime import autocast, resolve_precision  # noqa: E402
from reference_models import TINY, VIT_B, reference_sam, save_sam  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="vit_b", choices=["vit_b", "tiny"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    cfg = VIT_B if args.arch == "vit_b" else TINY
    dev = torch.device(args.device)
    ref = reference_sam(cfg).to(dev)
    path = save_sam(ref, Path("/tmp") / f"bench_{args.arch}.pth")
    model = histosam.load_model(path, device=dev)
    size = cfg["img_size"]
    torch.manual_seed(0)
    x = torch.randn(1, 3, size, size, device=dev)
    with torch.inference_mode():
        t_ref, e_ref = timed(lambda: ref.image_encoder(x), args.repeats)
        t_fp32, e_fp32 = timed(lambda: model.image_encoder(x), args.repeats)
        prec = resolve_precision("auto", dev)

        def fast():
            with autocast(dev, prec):
                return model.image_encoder(x).float()

        t_fast, e_fast = timed(fast, args.repeats)

    def cmp(e):
        cos = torch.nn.functional.cosine_similarity(e.flatten().double(), e_ref.flatten().double(), dim=0)
        return float(cos), float((e - e_ref).abs().max() / e_ref.abs().max())

    print(f"arch={args.arch} input={size}x{size} device={dev} threads={torch.get_num_threads()} fast={prec}")
    print(f"reference segment-anything fp32: {t_ref:.3f} s")
    c, d = cmp(e_fp32)
    print(f"histosam fp32 (exact):          {t_fp32:.3f} s  speed-up {t_ref / t_fp32:.2f}x  cos {c:.6f}  "
          f"max|d|/max|ref| {d:.2e}")
    c, d = cmp(e_fast)
    print(f"histosam default ({prec}):        {t_fast:.3f} s  speed-up {t_ref / t_fast:.2f}x  cos {c:.6f}  "
          f"max|d|/max|ref| {d:.2e}")


if __name__ == "__main__":
    main()
