"""One prompt with vs without WSI-SAM context, after the embeddings: median decode time of many runs.

Without context: the model's prompt encoder + mask decoder on the HR frame's embedding (``decode_masks``).
With context: ``decode_context`` on the cached HR and LR embeddings and the head's cached per-frame features
(what :class:`~histosam.inference.context.ContextPredictor` does per prompt). Target: ratio ≤ 2.

    python benchmarks/bench_context.py --model runs/context/best.pt --threads 1
    python benchmarks/bench_context.py --model runs/tissue_A/best.pt   # attaches an untrained head (same cost)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="runs/tissue_A/best.pt")
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--prompt", choices=("box", "point"), default="box")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import histosam
    from histosam.inference.context import ContextGeometry, ImageSource, frames_tensor
    from histosam.models.context_head import attach_context_head

    model = histosam.load_model(args.model, device="cpu").eval()
    if model.context_decoder is None:
        attach_context_head(model)
    g = ContextGeometry(int(model.image_size), int(model.config.context.get("scale", 4)))
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (3 * g.frame, 3 * g.frame, 3)).astype(np.uint8)
    src = ImageSource(img)
    hr0 = g.hr_origin((1.5 * g.frame, 1.5 * g.frame))
    lr0 = g.lr_origin(hr0)
    with torch.no_grad():
        x = frames_tensor(model, [src.read(*hr0, g.frame, 1), src.read(*lr0, g.frame, g.scale)])
        emb, skips = model.encode(x)
        head = model.context_decoder
        feats = (head.frame_features(emb[:1], [s[:1] for s in skips]),
                 head.frame_features(emb[1:], [s[1:] for s in skips]))
    c = g.frame / 2
    if args.prompt == "box":
        box = np.array([c - 40, c - 30, c + 40, c + 30])
        hr_kw = {"boxes": torch.tensor(box[None], dtype=torch.float32)}
        lr_box = g.boxes_to(box + np.r_[hr0, hr0], hr0, "lr")
        lr_kw = {"lr_boxes": torch.tensor(lr_box[None], dtype=torch.float32)}
    else:
        pt = np.array([[c, c]])
        hr_kw = {"point_coords": torch.tensor(pt[None], dtype=torch.float32),
                 "point_labels": torch.ones(1, 1, dtype=torch.int64)}
        lr_kw = {"lr_point_coords": torch.tensor(g.to_lr(pt + np.array(hr0), hr0)[None], dtype=torch.float32)}

    def plain():
        return model.decode_masks(emb[:1], multimask=False, **hr_kw)

    def context():
        return model.decode_context(emb[:1], [s[:1] for s in skips], emb[1:], [s[1:] for s in skips],
                                    features=feats, lr_mask=False, **hr_kw, **lr_kw)

    times = {"plain": [], "context": []}
    with torch.no_grad():
        for _ in range(10):
            plain()
            context()
        for _ in range(args.repeats):  # interleaved, so load changes hit both alike
            for name, fn in (("plain", plain), ("context", context)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    n_head = sum(p.numel() for p in head.parameters())
    print(json.dumps({"model": args.model, "frame": g.frame, "prompt": args.prompt, "threads": torch.get_num_threads(),
                      "repeats": args.repeats, "median_ms_without_context": round(med["plain"], 3),
                      "median_ms_with_context": round(med["context"], 3),
                      "ratio": round(med["context"] / med["plain"], 3), "context_head_parameters": n_head,
                      "context_head_mb_fp32": round(n_head * 4 / 2**20, 2)}))


if __name__ == "__main__":
    main()
