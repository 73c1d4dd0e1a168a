"""UNETR instance-decoder speed: histosam's decoder against torch-em's (micro-sam's) on identical random weights.

    OMP_NUM_THREADS=2 python benchmarks/bench_unetr.py [--repeats 3] [--interpolate] [--device cpu|cuda]

Input: one random ``1×256×64×64`` SAM embedding (what ViT-B gives for a 1024² image). The reference is torch-em's
``UNETR`` decoder part as micro-sam runs it (fp32, BatchNorm on batch statistics), timed with glibc's default
malloc and again with :func:`histosam.inference.runtime.keep_freed_memory`; histosam's decoder is loaded from the
same ``decoder_state`` and timed after ``prepare_for_inference`` in exact fp32 and in its default precision. Prints
the times, the ratios and the max abs difference of the maps to the reference's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests")]


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    out = fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--interpolate", action="store_true",
                    help="torch-em >= 0.7.10's layout (bilinear + 1x1 conv) instead of the released transposed convs")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    from reference_shims import install_torchvision_shim

    install_torchvision_shim()
    from histosam.inference.runtime import autocast, keep_freed_memory, prepare_for_inference, resolve_precision
    from histosam.registry.loader import load_model
    from reference_models import VIT_B, reference_sam, reference_unetr, save_micro_sam

    dev = torch.device(args.device)
    torch.manual_seed(0)
    sam = reference_sam(VIT_B)
    unetr = reference_unetr(sam.image_encoder, conv_transpose=not args.interpolate)
    if unetr is None:
        sys.exit("torch-em is not installed (pip install --no-deps torch-em)")
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(save_micro_sam(sam, unetr, Path(tmp) / "random.pt"), device=dev)
    unetr = unetr.to(dev)  # torch-em's module as micro-sam leaves it (train mode: BatchNorm on batch statistics)
    embedding = torch.randn(1, 256, 64, 64, device=dev)
    size = (1024, 1024)
    with torch.inference_mode():
        t_ref, ref = timed(lambda: unetr.decode((embedding, None, None), size, size), args.repeats)
        kept = keep_freed_memory() if dev.type == "cpu" else False
        t_ref_kept = timed(lambda: unetr.decode((embedding, None, None), size, size), args.repeats)[0]
        model = prepare_for_inference(model, dev)
        t_fp32, out_fp32 = timed(lambda: model.decode_instances(embedding, []), args.repeats)
        prec = resolve_precision("auto", dev)

        def fast():
            with autocast(dev, prec):
                return model.decode_instances(embedding, []).float()

        t_fast, out_fast = timed(fast, args.repeats)
    layout = "bilinear + 1x1 conv" if args.interpolate else "transposed convolutions"
    print(f"UNETR decoder ({layout}), embedding 1x256x64x64 -> 3x1024x1024, device={dev}, "
          f"threads={torch.get_num_threads()}")
    print(f"reference torch-em fp32: {t_ref:.3f} s (default malloc); {t_ref_kept:.3f} s with keep_freed_memory "
          f"{'on' if kept else 'unavailable'}")
    for label, t, out in (("histosam fp32 (exact):", t_fp32, out_fp32), (f"histosam default ({prec}):", t_fast,
                                                                         out_fast)):
        print(f"{label:26s} {t:.3f} s  speed-up {t_ref / t:.2f}x ({t_ref_kept / t:.2f}x against the kept-memory "
              f"reference)  max|d| {float((out - ref).abs().max()):.2e}")


if __name__ == "__main__":
    main()
