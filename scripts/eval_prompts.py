"""Prompt-based segmentation of whole images, as a user runs it (issue 16: prompts outside the top-left quarter).

    OMP_NUM_THREADS=1 python scripts/eval_prompts.py --tasks single,position -o prompts-eval.json
    OMP_NUM_THREADS=1 python scripts/eval_prompts.py --tasks iterative,clicks --clicks-objects 50

Images: the MoNuSeg validation ids of ``configs/histosam-nano.yaml`` (``val_ids`` found in ``--data``), whole
1000×1000 images never trained on, through :class:`histosam.Predictor` (``set_image`` once per image).

Tasks (each one prints a line and goes into the JSON):

- ``single``: PathoSAM's protocol, one prompt per nucleus: the centre point (distance-transform maximum,
  multimask, the highest-scoring mask kept) or the tight box (single mask); masks painted into a label image
  largest first and scored by mSA (the same numbers as ``histosam evaluate --task point`` / ``--task box``).
  Also per nucleus: IoU of its mask with its own GT (mean) and the Pearson correlation of the predicted IoU
  (the score of the kept mask) with that true IoU, pooled over all nuclei of all images.
- ``iterative``: :func:`~histosam.evaluation.protocols.iterative_prompting` with ``--iterations`` rounds
  (8 = the initial prompt + 7 correction rounds), mSA after the last one, point and box start, no mask feedback
  (as ``histosam evaluate --task iterative``).
- ``clicks``: Kim et al.'s click protocol (:func:`~histosam.evaluation.protocols.click_protocol`, 20 clicks,
  previous logits fed back): NoC@85, NoF@85, mean IoU after the first click; on ``--clicks-objects`` randomly
  drawn nuclei per image (each nucleus is prompted on its own, so a subset gives unbiased per-object means;
  0 = all).
- ``position``: a real nucleus (a 64×64 crop around it from a validation image) at every position of a 512×512
  frame in steps of 32 px (15×15 = 225 images, one frame each): ``--position-mode slide`` (default) cuts the
  frame from the nucleus' own image so that the crop lands there (real tissue all around, as when a field of
  view moves; nuclei are picked where no padding is needed), ``paste`` pastes the crop into a fixed tissue
  background. For each, the centre point and the tight box give a mask; masks are moved back to the crop's
  coordinates and compared pairwise (IoU) and with the nucleus' own GT. Reported: the fraction of pairs with
  IoU >= 0.9, the minimum and median pairwise IoU, the mean IoU with the GT; ``inner_*`` the same among the
  positions where the nucleus is at least 128 px (half a prompt window) from every frame border.

``--prompt-window N`` passes ``prompt_window=N`` to the Predictor (0 = decode on the whole frame, the behaviour
before issue 16); left out, the Predictor's default. ``--predictor-file`` runs another version of the
Predictor, e.g. the one before prompt windows::

    git show 449f3af~1:src/histosam/inference/predictor.py > /tmp/predictor_before.py
    OMP_NUM_THREADS=1 python scripts/eval_prompts.py --predictor-file /tmp/predictor_before.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path("/work/shared/data/monuseg/train")


def val_ids(config: Path, data: Path) -> list[str]:
    import yaml

    ids = yaml.safe_load(config.read_text())["val_ids"]
    return [i for i in ids if (data / f"{i}.png").is_file() and (data / f"{i}_label.tif").is_file()]


def load(data: Path, sample_id: str) -> tuple[np.ndarray, np.ndarray]:
    import tifffile
    from PIL import Image

    with Image.open(data / f"{sample_id}.png") as im:
        image = np.asarray(im.convert("RGB"))
    return image, np.asarray(tifffile.imread(data / f"{sample_id}_label.tif")).astype(np.uint32)


def make_predictor(model, prompt_window: int | None, predictor_file: Path | None = None):
    import histosam

    cls = histosam.Predictor
    if predictor_file is not None:  # another version of histosam/inference/predictor.py (before/after runs)
        import importlib.util

        spec = importlib.util.spec_from_file_location("histosam_predictor_under_test", predictor_file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        cls = module.Predictor
        print(f"Predictor from {predictor_file}", file=sys.stderr)
    kw = {} if prompt_window is None else {"prompt_window": prompt_window}
    return cls(model, device="cpu", **kw)


def pearson(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


# ---------------------------------------------------------------------------------------------- single prompts
def single_prompts(predictor, image: np.ndarray, gt: np.ndarray, batch_size: int) -> dict:
    """One centre point / one tight box per nucleus: mSA, per-nucleus IoU and predicted IoU."""
    from histosam.evaluation import protocols as P
    from histosam.evaluation.metrics import MSA_THRESHOLDS, segmentation_accuracy_scores

    predictor.set_image(image)
    ids = [int(i) for i in np.unique(gt[gt > 0])]
    gt_px = P._object_pixels(gt, ids)
    centres, boxes = P.object_centers(gt), P.object_boxes(gt)
    out = {"n": len(ids)}
    for kind in ("point", "box"):
        masks, ious, scores = {}, [], []
        t0 = time.perf_counter()
        for a in range(0, len(ids), batch_size):
            batch = ids[a: a + batch_size]
            if kind == "point":
                pred = predictor.predict(points=np.array([[centres[i]] for i in batch], np.float32),
                                         labels=np.ones((len(batch), 1), np.int64), multimask=True)
            else:
                pred = predictor.predict(box=np.array([boxes[i] for i in batch], np.float32))
            sc = np.asarray(pred.scores)
            best = sc.argmax(axis=1)
            for b, i in enumerate(batch):
                px = np.flatnonzero(np.asarray(pred.masks[b, best[b]]))
                masks[i] = px
                inter = np.intersect1d(gt_px[i], px, assume_unique=True).size
                union = gt_px[i].size + px.size - inter
                ious.append(inter / union if union else 0.0)
                scores.append(float(sc[b, best[b]]))
        seconds = time.perf_counter() - t0
        seg = P.merge_masks(gt.shape, masks)
        sa = segmentation_accuracy_scores(gt, seg, MSA_THRESHOLDS)
        out[kind] = {"mSA": float(sa.mean()), "SA50": float(sa[0]), "mean_iou": float(np.mean(ious)),
                     "pearson": pearson(scores, ious), "seconds": seconds, "ious": ious, "scores": scores}
    return out


# ------------------------------------------------------------------------------------------------ position
def pick_nuclei(samples: list[tuple[str, np.ndarray, np.ndarray]], n: int, crop: int, seed: int,
                frame: int = 512, step: int = 32):
    """``n`` medium-sized nuclei (area 150..600 px), from different images, preferring nuclei whose crop can sit
    at every position of a ``frame`` sliding over the image without leaving it (else the image is
    reflect-padded)."""
    from histosam.evaluation import protocols as P

    rng = np.random.default_rng(seed)
    picks = []
    last = (frame - crop) // step * step  # the last position
    for k in range(n):
        sid, image, gt = samples[k % len(samples)]
        centres = P.object_centers(gt)
        areas = np.bincount(gt.ravel())
        h, w = gt.shape
        ok = [i for i, (x, y) in sorted(centres.items()) if 150 <= areas[i] <= 600
              and crop // 2 <= x < w - crop // 2 and crop // 2 <= y < h - crop // 2]
        central = [i for i in ok if last <= centres[i][1] - crop // 2 <= h - frame
                   and last <= centres[i][0] - crop // 2 <= w - frame]
        i = int(rng.choice(central or ok))
        x, y = centres[i]
        y0, x0 = y - crop // 2, x - crop // 2
        picks.append({"image": sid, "id": i, "yx": (int(y0), int(x0)), "rgb": image[y0: y0 + crop, x0: x0 + crop],
                      "mask": gt[y0: y0 + crop, x0: x0 + crop] == i, "background": image[:frame, :frame],
                      "whole": image, "point": (x - x0, y - y0), "central": bool(central)})
    return picks


def position_frame(pick: dict, y: int, x: int, mode: str, frame: int = 512) -> np.ndarray:
    """The ``frame``×``frame`` image with the nucleus crop's top-left corner at (y, x).

    ``slide``: the frame cut from the nucleus' own image so that the crop lands at (y, x), real tissue all
    around (the image reflect-padded where the frame would leave it); ``paste``: the crop pasted into a fixed
    tissue background (the image's top-left frame)."""
    crop = pick["rgb"].shape[0]
    if mode == "paste":
        img = pick["background"].copy()
        img[y: y + crop, x: x + crop] = pick["rgb"]
        return img
    whole = np.pad(pick["whole"], ((frame, frame), (frame, frame), (0, 0)), mode="reflect")
    y0, x0 = pick["yx"][0] + frame - y, pick["yx"][1] + frame - x
    return np.ascontiguousarray(whole[y0: y0 + frame, x0: x0 + frame])


def position_test(predictor, pick: dict, step: int = 32, frame: int = 512, margin: int = 64,
                  mode: str = "slide") -> dict:
    """Masks for the same nucleus at every position (steps of ``step``): pairwise IoU and IoU with its GT."""
    crop = pick["rgb"].shape[0]
    gm = pick["mask"]
    rows, cols = np.nonzero(gm)
    box = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32)
    px, py = pick["point"]
    side = crop + 2 * margin  # masks compared in the crop's coordinates, margin around it
    positions = [(y, x) for y in range(0, frame - crop + 1, step) for x in range(0, frame - crop + 1, step)]
    res = {}
    stacks: dict[str, list] = {"point": [], "box": []}
    areas: dict[str, list] = {"point": [], "box": []}
    for y, x in positions:
        img = position_frame(pick, y, x, mode, frame)
        assert np.array_equal(img[y: y + crop, x: x + crop], pick["rgb"])
        predictor.set_image(img)
        p_pt = predictor.predict(points=np.array([[px + x, py + y]], np.float32), labels=np.ones(1, np.int64),
                                 multimask=True)
        p_bx = predictor.predict(box=box + np.array([x, y, x, y], np.float32))
        for kind, pred in (("point", p_pt), ("box", p_bx)):
            best = int(np.asarray(pred.scores)[0].argmax())
            m = np.asarray(pred.masks[0, best])
            rel = np.zeros((side, side), bool)  # crop coordinates −margin .. crop+margin
            ya, xa = max(y - margin, 0), max(x - margin, 0)
            yb, xb = min(y + crop + margin, frame), min(x + crop + margin, frame)
            rel[ya - (y - margin): yb - (y - margin), xa - (x - margin): xb - (x - margin)] = m[ya:yb, xa:xb]
            stacks[kind].append(rel.ravel())
            areas[kind].append(int(m.sum()))
    g = np.zeros((side, side), bool)
    g[margin: margin + crop, margin: margin + crop] = gm
    for kind in ("point", "box"):
        a = np.stack(stacks[kind]).astype(np.float32)
        total = np.asarray(areas[kind], np.float64)  # pixels also outside the compared region count in unions
        inter = a @ a.T
        union = total[:, None] + total[None, :] - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        iu = iou[np.triu_indices(len(a), 1)]
        gi = (a @ g.ravel().astype(np.float32)) / (total + g.sum() - a @ g.ravel().astype(np.float32))
        # positions whose nucleus centre is >= 128 px (half a 256-px window) from every frame border
        inner = np.array([all(frame // 4 <= v + crop // 2 <= frame - frame // 4 for v in pos) for pos in positions])
        ii = iou[np.ix_(inner, inner)][np.triu_indices(int(inner.sum()), 1)]
        res[kind] = {"pairs_iou_ge_0.9": float((iu >= 0.9).mean()), "min_pairwise_iou": float(iu.min()),
                     "median_pairwise_iou": float(np.median(iu)), "mean_iou_gt": float(gi.mean()),
                     "inner_positions": int(inner.sum()),
                     "inner_pairs_iou_ge_0.9": float((ii >= 0.9).mean()) if ii.size else float("nan"),
                     "inner_min_pairwise_iou": float(ii.min()) if ii.size else float("nan"),
                     "min_iou_gt": float(gi.min()), "positions": len(positions),
                     "iou_gt_map": gi.reshape(int(np.sqrt(len(positions))), -1).round(3).tolist()}
    return res


# ------------------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "histosam-nano.yaml")
    ap.add_argument("--ids", nargs="*", default=None, help="image ids (default: val_ids of --config in --data)")
    ap.add_argument("--model", default="histosam-nano")
    ap.add_argument("--prompt-window", type=int, default=None)
    ap.add_argument("--predictor-file", type=Path, default=None,
                    help="take Predictor from this file (e.g. `git show REV:src/histosam/inference/predictor.py`)")
    ap.add_argument("--tasks", default="single,position")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--max-clicks", type=int, default=20)
    ap.add_argument("--clicks-objects", type=int, default=50)
    ap.add_argument("--position-nuclei", type=int, default=3)
    ap.add_argument("--position-step", type=int, default=32)
    ap.add_argument("--position-mode", choices=("slide", "paste"), default="slide")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    import histosam
    from histosam.evaluation import protocols as P

    torch.manual_seed(0)
    tasks = [t for t in args.tasks.split(",") if t]
    ids = args.ids or val_ids(args.config, args.data)
    if not ids:
        print(f"no validation images in {args.data}", file=sys.stderr)
        return 1
    model = histosam.load_model(args.model, device="cpu")
    predictor = make_predictor(model, args.prompt_window, args.predictor_file)
    report: dict = {"model": model.config.name, "ids": ids, "prompt_window": args.prompt_window,
                    "effective_window": getattr(predictor, "window", None), "tasks": tasks, "images": {}}
    samples = [(i, *load(args.data, i)) for i in ids]
    t_all = time.perf_counter()
    pooled = {"point": ([], []), "box": ([], [])}
    for sid, image, gt in samples:
        row = report["images"].setdefault(sid, {})
        if "single" in tasks:
            r = single_prompts(predictor, image, gt, args.batch_size)
            for kind in ("point", "box"):
                pooled[kind][0].extend(r[kind].pop("scores"))
                pooled[kind][1].extend(r[kind].pop("ious"))
            row["single"] = r
            print(f"{sid} single: point mSA {r['point']['mSA']:.4f} IoU {r['point']['mean_iou']:.3f} "
                  f"r {r['point']['pearson']:.3f} | box mSA {r['box']['mSA']:.4f} IoU {r['box']['mean_iou']:.3f} "
                  f"r {r['box']['pearson']:.3f} ({r['point']['seconds']:.0f}+{r['box']['seconds']:.0f} s)",
                  flush=True)
        if "iterative" in tasks:
            it = {}
            for start in ("point", "box"):
                t0 = time.perf_counter()
                res = P.iterative_prompting(predictor, image, gt, start=start, n_iterations=args.iterations,
                                            seed=args.seed, batch_size=args.batch_size)
                it[start] = {"msa": res.msa, "seconds": time.perf_counter() - t0}
            row["iterative"] = it
            print(f"{sid} iterative: point {it['point']['msa'][0]:.4f} -> {it['point']['msa'][-1]:.4f} | box "
                  f"{it['box']['msa'][0]:.4f} -> {it['box']['msa'][-1]:.4f}", flush=True)
        if "clicks" in tasks:
            keep = np.unique(gt[gt > 0])
            if args.clicks_objects and len(keep) > args.clicks_objects:
                keep = np.sort(np.random.default_rng(args.seed).choice(keep, args.clicks_objects, replace=False))
            sub = np.where(np.isin(gt, keep), gt, 0)
            t0 = time.perf_counter()
            res = P.click_protocol(predictor, image, sub, max_clicks=args.max_clicks, batch_size=args.batch_size)
            row["clicks"] = {"n": len(keep), "NoC@85": res.noc(0.85), "NoC@90": res.noc(0.9),
                             "NoF@85": res.nof(0.85), "mIoU@1": float(res.ious[:, 0].mean()),
                             "iou_per_click": res.ious.mean(axis=0).tolist(), "seconds": time.perf_counter() - t0}
            c = row["clicks"]
            print(f"{sid} clicks ({c['n']} nuclei): NoC@85 {c['NoC@85']:.2f} NoF@85 {c['NoF@85']:.3f} "
                  f"mIoU@1 {c['mIoU@1']:.3f}", flush=True)
    summary: dict = {}
    rows = list(report["images"].values())
    if "single" in tasks:
        for kind in ("point", "box"):
            summary[kind] = {k: float(np.mean([r["single"][kind][k] for r in rows]))
                             for k in ("mSA", "SA50", "mean_iou")}
            summary[kind]["mean_iou_pooled"] = float(np.mean(pooled[kind][1]))
            summary[kind]["pearson_pooled"] = pearson(*pooled[kind])
    if "iterative" in tasks:
        for kind in ("point", "box"):
            curve = np.mean([r["iterative"][kind]["msa"] for r in rows], axis=0)
            summary[f"iterative_{kind}"] = {"msa_per_round": curve.tolist(), "final": float(curve[-1])}
    if "clicks" in tasks:
        n = np.array([r["clicks"]["n"] for r in rows], np.float64)
        for k in ("NoC@85", "NoC@90", "NoF@85", "mIoU@1"):
            summary.setdefault("clicks", {})[k] = float(np.sum(n * [r["clicks"][k] for r in rows]) / n.sum())
    if "position" in tasks:
        picks = pick_nuclei(samples, args.position_nuclei, 64, args.seed, step=args.position_step)
        pos = []
        for pk in picks:
            r = position_test(predictor, pk, step=args.position_step, mode=args.position_mode)
            r["nucleus"] = {"image": pk["image"], "id": pk["id"], "crop_origin_yx": pk["yx"],
                            "mode": args.position_mode, "central": pk["central"]}
            pos.append(r)
            print(f"position {pk['image']}#{pk['id']}: " + " | ".join(
                f"{k}: pairs>=0.9 {r[k]['pairs_iou_ge_0.9']:.3f} (inner {r[k]['inner_pairs_iou_ge_0.9']:.3f}) "
                f"min {r[k]['min_pairwise_iou']:.3f} (inner {r[k]['inner_min_pairwise_iou']:.3f}) "
                f"IoU-GT mean {r[k]['mean_iou_gt']:.3f} min {r[k]['min_iou_gt']:.3f}" for k in ("point", "box")),
                flush=True)
        report["position"] = pos
        summary["position"] = {k: {m: float(np.mean([r[k][m] for r in pos])) for m in
                                   ("pairs_iou_ge_0.9", "min_pairwise_iou", "median_pairwise_iou", "mean_iou_gt",
                                    "inner_pairs_iou_ge_0.9", "inner_min_pairwise_iou")} for k in ("point", "box")}
    report["summary"] = summary
    report["seconds"] = time.perf_counter() - t_all
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
