"""How fast could the ViT-B encoder be on this machine? Its matrix products alone, timed on their own.

    python benchmarks/bench_floor.py [--repeats 5] [--no-reference]

The encoder of a 1024² image is mostly matrix products: the linears of its 12 blocks (696 GFLOP on 4,096 tokens),
the two products of each global attention (4 layers × 12 heads) and of each windowed attention (8 layers × 300
window-heads). This script times exactly those products, in bf16, through the kernels histosam's fast path calls
(oneDNN packed linears, ``torch.bmm``) with the shapes the encoder gives them, and adds them up: a lower bound on
any bf16 implementation built on this machine's GEMM kernels, as if every softmax, bias, norm, copy and residual
add were free. It then times histosam's encoder and (unless ``--no-reference``) Meta's fp32 encoder on the same
random weights, and prints the speed-up now and the speed-up that the bound would allow.

It also prints the machine's fp32 and bf16 GEMM rates on the MLP's shape: the reference's fp32 GEMMs and
histosam's bf16 GEMMs differ by that factor (about 2× on AVX512-BF16 CPUs without AMX); everything beyond it comes
from the rest of the computation.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import histosam  # noqa: E402
from histosam.inference.runtime import (  # noqa: E402
    autocast,
    keep_freed_memory,
    prepare_for_inference,
    resolve_precision,
)
from histosam.models.fused_linear import linear  # noqa: E402
from reference_models import VIT_B, reference_sam, save_sam  # noqa: E402

TOKENS, DIM, HEADS, DEPTH, GLOBAL_LAYERS = 4096, 768, 12, 12, 4
WINDOW_TOKENS, WINDOWS = 196, 25  # 14×14 windows over the 64×64 grid padded to 70×70
ROW_BLOCK = 512  # query rows per global-attention block (histosam's CPU plan)


def best_time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def gemm_terms(repeats: int) -> list[tuple[str, int, float, float]]:
    """``(name, calls per encoder, seconds per call, GFLOP per call)`` for every product of the encoder."""
    bf = torch.bfloat16
    terms = []
    x = torch.randn(TOKENS, DIM, dtype=bf)
    hidden = torch.randn(TOKENS, 4 * DIM, dtype=bf)
    for name, inp, out_features, gelu in (("qkv", x, 3 * DIM, False), ("proj", x, DIM, False),
                                          ("mlp.lin1 + GELU", x, 4 * DIM, True), ("mlp.lin2", hidden, DIM, False)):
        layer = nn.Linear(inp.shape[1], out_features).eval()
        with torch.no_grad():
            seconds = best_time(lambda: linear(layer, inp, gelu=gelu), repeats)  # noqa: B023
        terms.append((name, DEPTH, seconds, 2 * TOKENS * inp.shape[1] * out_features / 1e9))
    head = DIM // HEADS
    q, k_t = torch.randn(1, ROW_BLOCK, head, dtype=bf), torch.randn(1, head, TOKENS, dtype=bf)
    probs, v = torch.randn(1, ROW_BLOCK, TOKENS, dtype=bf), torch.randn(1, TOKENS, head, dtype=bf)
    blocks = GLOBAL_LAYERS * HEADS * (TOKENS // ROW_BLOCK)
    gflop = 2 * ROW_BLOCK * TOKENS * head / 1e9
    terms.append(("global q·kᵀ", blocks, best_time(lambda: torch.bmm(q, k_t), repeats), gflop))
    terms.append(("global p·v", blocks, best_time(lambda: torch.bmm(probs, v), repeats), gflop))
    wh = WINDOWS * HEADS
    aug = head + 2 * 14  # the window path folds the relative-position bias into q·kᵀ (one-hot key codes)
    q_w, k_w = torch.randn(wh, WINDOW_TOKENS, aug, dtype=bf), torch.randn(wh, aug, WINDOW_TOKENS, dtype=bf)
    p_w, v_w = torch.randn(wh, WINDOW_TOKENS, WINDOW_TOKENS, dtype=bf), torch.randn(wh, WINDOW_TOKENS, head, dtype=bf)
    window_layers = DEPTH - GLOBAL_LAYERS
    terms.append(("window q·kᵀ (+bias)", window_layers, best_time(lambda: torch.bmm(q_w, k_w), repeats),
                  2 * wh * WINDOW_TOKENS**2 * aug / 1e9))
    terms.append(("window p·v", window_layers, best_time(lambda: torch.bmm(p_w, v_w), repeats),
                  2 * wh * WINDOW_TOKENS**2 * head / 1e9))
    return terms


def gemm_rate(dtype: torch.dtype, repeats: int) -> float:
    a, b = torch.randn(TOKENS, DIM, dtype=dtype), torch.randn(DIM, 4 * DIM, dtype=dtype)
    return 2 * TOKENS * DIM * 4 * DIM / best_time(lambda: a @ b, repeats) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-reference", action="store_true", help="skip timing Meta's encoder (~1 min)")
    args = ap.parse_args()
    reference = reference_sam(VIT_B)
    path = save_sam(reference, Path("/tmp") / "bench_vit_b.pth")
    x = torch.randn(1, 3, 1024, 1024)
    t_ref = None
    if not args.no_reference:  # as its users run it: glibc's default malloc, so first
        with torch.inference_mode():
            t_ref = best_time(lambda: reference.image_encoder(x), 3)
    keep_freed_memory()
    print(f"threads={torch.get_num_threads()}  GEMM {TOKENS}x{DIM}x{4 * DIM}: fp32 {gemm_rate(torch.float32, 3):.0f} "
          f"GFLOP/s, bf16 {gemm_rate(torch.bfloat16, 3):.0f} GFLOP/s")
    floor = 0.0
    for name, calls, seconds, gflop in gemm_terms(args.repeats):
        floor += calls * seconds
        print(f"  {name:22s} {calls:4d} × {seconds * 1e3:7.3f} ms = {calls * seconds:6.3f} s  "
              f"({gflop / seconds:5.0f} GFLOP/s)")
    print(f"products alone (lower bound): {floor:.3f} s")
    model = prepare_for_inference(histosam.load_model(path), torch.device("cpu"))
    precision = resolve_precision("auto", torch.device("cpu"))
    with torch.inference_mode():
        def fast() -> torch.Tensor:
            with autocast(torch.device("cpu"), precision):
                return model.image_encoder(x)

        t_fast = best_time(fast, 3)
    print(f"histosam encoder ({precision}): {t_fast:.3f} s; the products are {floor / t_fast:.0%} of it")
    if t_ref is not None:
        print(f"Meta fp32 encoder: {t_ref:.3f} s  speed-up now {t_ref / t_fast:.2f}x; "
              f"with everything but the products free {t_ref / floor:.2f}x")

if __name__ == "__main__":
    main()
