"""Automatic mask generation (AMG): histosam vs Meta's ``SamAutomaticMaskGenerator`` on identical random weights.

    OMP_NUM_THREADS=2 python benchmarks/bench_amg.py [--size 1024] [--tiny] [--points-per-side 32]

Both get the same random ViT-B in Meta's checkpoint format, the same synthetic H&E image and SAM's default AMG
parameters (32×32 point grid in batches of 64, predicted-IoU 0.88, stability 0.95, box NMS 0.7; ``--loose``
sets both thresholds to 0 so that every mask goes through NMS). Prints both times, the ratio, the number of
masks each kept and their mean best-match IoU. The reference runs first, with glibc's default malloc; histosam
runs with its defaults (bf16 encoder where fast, fp32 prompt decoding).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference_shims import install_torchvision_shim  # noqa: E402

install_torchvision_shim()

from bench_ais import he_image  # noqa: E402

import histosam  # noqa: E402
from histosam.postprocess.amg import AMGParams, generate_masks  # noqa: E402
from reference_models import TINY, VIT_B, reference_sam, save_sam  # noqa: E402


def _mean_best_iou(ours: list[np.ndarray], ref: list[np.ndarray]) -> float:
    if not ours or not ref:
        return float("nan")
    best = []
    for r in ref:
        ious = [np.logical_and(r, o).sum() / max(np.logical_or(r, o).sum(), 1) for o in ours]
        best.append(max(ious))
    return float(np.mean(best))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--tiny", action="store_true", help="small random ViT (fast smoke run)")
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--loose", action="store_true", help="predicted-IoU and stability thresholds 0")
    args = ap.parse_args()
    from segment_anything import SamAutomaticMaskGenerator

    torch.manual_seed(0)
    sam = reference_sam(TINY if args.tiny else VIT_B).eval()
    model = histosam.load_model(save_sam(sam, Path("/tmp") / "bench_amg_sam.pth"), device="cpu")
    image = he_image(args.size)
    params = AMGParams(points_per_side=args.points_per_side,
                       **({"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0} if args.loose else {}))
    kw = {k: v for k, v in params.to_dict().items() if k != "min_mask_region_area"}
    with torch.inference_mode():
        t = time.perf_counter()
        ref = SamAutomaticMaskGenerator(sam, output_mode="binary_mask", **kw).generate(image)
        t_ref = time.perf_counter() - t
        t = time.perf_counter()
        ours = generate_masks(histosam.Predictor(model), image, params)
        t_ours = time.perf_counter() - t
    print(f"image {args.size}², random {'tiny ViT' if args.tiny else 'ViT-B'}, {torch.get_num_threads()} threads, "
          f"AMG {kw}")
    print(f"reference SamAutomaticMaskGenerator (fp32): {t_ref:.1f} s, {len(ref)} masks")
    print(f"histosam generate_masks (default precision): {t_ours:.1f} s, {len(ours)} masks -> "
          f"speed-up {t_ref / t_ours:.2f}x")
    print(f"mean best-match IoU of the reference masks among histosam's: "
          f"{_mean_best_iou([o.segmentation for o in ours], [r['segmentation'] for r in ref]):.4f}")


if __name__ == "__main__":
    main()
