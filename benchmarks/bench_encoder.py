"""Image-encoder speed: histosam vs Meta's segment-anything (fp32 reference) on identical random weights.

    python benchmarks/bench_encoder.py [--arch vit_b] [--repeats 3] [--device cpu|cuda] [--rounds N]

Prints, in one run: the reference time (Meta's encoder; for ``--arch vit_t``, MobileSAM's TinyViT as shipped in
ultralytics, which must import), with glibc's default malloc, as its users run it, and again after
:func:`histosam.inference.runtime.keep_freed_memory`, which every histosam CPU inference path switches on;
histosam's time in fp32 (exact mode) and in its default fast mode (bf16 autocast where the hardware has it, fused
attention), the speed-up ratios against both reference times, and the cosine similarity and max abs difference
of each embedding to the reference embedding.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import histosam  # noqa: E402
from histosam.inference.runtime import (  # noqa: E402
    autocast,
    keep_freed_memory,
    prepare_for_inference,
    resolve_precision,
)
from reference_models import TINY, VIT_B, reference_sam, save_sam  # noqa: E402


def _mobile_sam_reference() -> tuple[torch.nn.Module, Path]:
    """MobileSAM's stack on the seeded random weights of the vit_t parity test, and those weights saved."""
    from reference_shims import install_torchvision_shim

    install_torchvision_shim()
    from make_mobile_sam_reference import reference_model
    from mobile_sam_weights import random_state_dict

    sam = reference_model()
    state = random_state_dict({k: tuple(v.shape) for k, v in sam.state_dict().items()})
    sam.load_state_dict(state)
    path = Path("/tmp") / "bench_vit_t.pth"
    torch.save(state, path)
    return sam.eval(), path


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


def once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="vit_b", choices=["vit_b", "vit_t", "tiny"],
                    help="vit_t compares with MobileSAM's TinyViT as shipped in ultralytics (must import)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=0,
                    help="then N rounds alternating one reference call and one histosam call (default mode), "
                         "each round's ratio printed, and their median: drift of the machine's speed over the "
                         "minutes a run takes then hits both sides alike")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if args.arch == "vit_t":
        ref, path = _mobile_sam_reference()
        ref, size, ref_name = ref.to(dev), 1024, "MobileSAM TinyViT (ultralytics)"
    else:
        cfg = VIT_B if args.arch == "vit_b" else TINY
        ref = reference_sam(cfg).to(dev)
        path = save_sam(ref, Path("/tmp") / f"bench_{args.arch}.pth")
        size, ref_name = cfg["img_size"], "segment-anything"
    model = histosam.load_model(path, device=dev)
    torch.manual_seed(0)
    x = torch.randn(1, 3, size, size, device=dev)
    with torch.inference_mode():
        # the reference as its users run it (glibc's default malloc), then with the allocator setting every
        # histosam inference path applies (keep_freed_memory), which the reference's big buffers gain from too
        t_ref, e_ref = timed(lambda: ref.image_encoder(x), args.repeats)
        kept = keep_freed_memory() if dev.type == "cpu" else False
        t_ref_kept = timed(lambda: ref.image_encoder(x), args.repeats)[0] if kept else t_ref
        model = prepare_for_inference(model, dev)  # as the Predictor and the pipelines run it
        t_fp32, e_fp32 = timed(lambda: model.image_encoder(x), args.repeats)
        prec = resolve_precision("auto", dev)

        def fast():
            with autocast(dev, prec):
                return model.image_encoder(x).float()

        t_fast, e_fast = timed(fast, args.repeats)

        rounds = [(once(lambda: ref.image_encoder(x)), once(fast)) for _ in range(args.rounds)]

    def cmp(e):
        cos = torch.nn.functional.cosine_similarity(e.flatten().double(), e_ref.flatten().double(), dim=0)
        return float(cos), float((e - e_ref).abs().max() / e_ref.abs().max())

    print(f"arch={args.arch} input={size}x{size} device={dev} threads={torch.get_num_threads()} fast={prec}")
    print(f"reference {ref_name} fp32: {t_ref:.3f} s (default malloc); {t_ref_kept:.3f} s with "
          f"keep_freed_memory {'on' if kept else 'unavailable'}")
    for label, t, e in (("histosam fp32 (exact):  ", t_fp32, e_fp32), (f"histosam default ({prec}):", t_fast, e_fast)):
        c, d = cmp(e)
        print(f"{label} {t:.3f} s  speed-up {t_ref / t:.2f}x ({t_ref_kept / t:.2f}x against the reference with "
              f"kept memory)  cos {c:.6f}  max|d|/max|ref| {d:.2e}")
    for i, (t_r, t_h) in enumerate(rounds):
        print(f"round {i + 1}: reference {t_r:.3f} s, histosam {t_h:.3f} s -> {t_r / t_h:.2f}x")
    if rounds:
        ratios = sorted(t_r / t_h for t_r, t_h in rounds)
        print(f"median of {len(ratios)} alternating rounds: {ratios[len(ratios) // 2]:.2f}x "
              f"(range {ratios[0]:.2f}-{ratios[-1]:.2f}x; both sides with kept memory)")


if __name__ == "__main__":
    main()
