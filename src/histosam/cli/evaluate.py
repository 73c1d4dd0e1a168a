"""``histosam evaluate``: score a model or the classical baseline on an annotated folder.

The folder holds ``<id>.png`` + ``<id>_label.tif`` (see :mod:`histosam.evaluation.datasets`). Writes
to OUT: ``report.md`` (command, settings, mean and per-image tables), ``<task>.csv`` tables and PNG plots.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from histosam.cli.options import add_model_options, add_mpp_option

TASKS = ("ais", "amg", "point", "box", "iterative", "clicks", "baseline", "classes", "tissue")
#: prompted regions with/without WSI-SAM context (histosam.evaluation.regions_prompted)
REGION_TASKS = ("region-boxes", "region-points", "region-clicks", "region-prompts")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate a model or the classical baseline on an annotated folder",
        description="Score automatic (ais, amg, baseline) or interactive (point, box, iterative, clicks) "
        "segmentation against instance labels: mSA, SA50/SA75, PQ, AJI; NoC/NoF/SPC for clicks.",
    )
    p.add_argument("--data", required=True, type=Path, help="folder with <id>.png + <id>_label.tif")
    add_model_options(p, model_help="not used by --task baseline")
    add_mpp_option(p, "the images (default: the model's resolution; histosam-nano: 0.25)")
    p.add_argument("--task", choices=TASKS + REGION_TASKS, default="ais")
    p.add_argument("--val-fraction", type=float, default=0.0, help="fraction of images in the val split")
    p.add_argument("--seed", type=int, default=42, help="seed of the split and of prompt sampling")
    p.add_argument("--split", choices=("val", "train", "all"), default="all")
    p.add_argument("--max-images", type=int, default=None, help="first N images (sorted by id) only")
    p.add_argument("--ids", type=Path, default=None,
                   help="score only these images: a text file with one id per line, or a JSON file with a 'val' "
                   "list (the split.json a training run writes)")
    p.add_argument("-o", "--out", type=Path, default=None, help="output folder (default evaluation-<task>)")
    p.add_argument("--pixel-size", type=float, default=0.25, help="µm per pixel (baseline)")
    p.add_argument("--relabel-gt", action="store_true",
                   help="connected-component relabelling of the GT before scoring (as micro-sam)")
    p.add_argument("--n-iterations", type=int, default=8, help="iterative prompting iterations")
    p.add_argument("--use-masks", action="store_true", help="feed back low-res logits (iterative)")
    p.add_argument("--max-clicks", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32,
                   help="objects per predict call (0 = all at once; use 1 for per-click latency as SPC)")
    p.add_argument("--compare", action="append", default=[], metavar="NAME=MODEL",
                   help="region tasks: another model decoded without context (e.g. the same-budget baseline); "
                   "repeatable")
    p.add_argument("--box-noise", type=float, default=0.1, help="region tasks: box noise (HQ-SAM's scale)")
    p.add_argument("--max-regions", type=int, default=None, help="region tasks: first N regions per image")
    p.set_defaults(func=run)
    return p


def _select(args):
    from histosam.evaluation.datasets import DatasetError, list_samples, split_ids

    samples = list_samples(args.data)
    if args.split != "all":
        if args.val_fraction <= 0:
            raise DatasetError("--split train/val needs --val-fraction > 0")
        train, val = split_ids([s.id for s in samples], args.val_fraction, args.seed)
        keep = set(val if args.split == "val" else train)
        samples = [s for s in samples if s.id in keep]
    if args.ids is not None:
        keep = set(_read_ids(args.ids))
        samples = [s for s in samples if s.id in keep]
    if args.max_images is not None:
        samples = samples[: max(args.max_images, 0)]
    if not samples:
        raise DatasetError("no images selected")
    return samples


def _read_ids(path: Path) -> list[str]:
    import json

    from histosam.evaluation.datasets import DatasetError

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"cannot read --ids {path}: {exc.strerror or exc}") from exc
    if path.suffix == ".json":
        data = json.loads(text)
        ids = data.get("val") if isinstance(data, dict) else data
        if not isinstance(ids, list):
            raise DatasetError(f"--ids {path}: expected a JSON list or an object with a 'val' list")
        return [str(i) for i in ids]
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _auto_scores(gt, pred, relabel: bool) -> dict:
    from histosam.evaluation import metrics as M

    gt_eval = M.relabel_connected(gt) if relabel else gt
    sa = M.segmentation_accuracy_scores(gt_eval, pred)
    dq, sq, pq = M.panoptic_quality(gt_eval, pred)
    return {
        "n_gt": int(len(np.unique(gt_eval[gt_eval > 0]))), "n_pred": int(len(np.unique(pred[pred > 0]))),
        "mSA": float(sa.mean()),
        **{f"SA{int(round(t * 100))}": float(s) for t, s in zip(M.MSA_THRESHOLDS, sa)},
        "DQ": dq, "SQ": sq, "PQ": pq, "AJI": M.aggregated_jaccard_index(gt_eval, pred),
    }


#: columns of the per-image Markdown table (the CSV has all)
MD_COLUMNS = ("image", "n_gt", "n_pred", "mSA", "SA50", "SA75", "PQ", "AJI", "F_d", "mPQ", "point", "box", "I_P",
              "I_B",
              "NoC@80", "NoC@85", "NoC@90", "NoF@85", "NoF@90", "SPC", "mIoU@1", "seconds")


def _load_model(args):
    import histosam

    return histosam.load_model(args.model, device=args.device, allow_pickle=args.allow_pickle)


def run(args: argparse.Namespace) -> int:
    from histosam.evaluation import report as R
    from histosam.evaluation.datasets import load_sample

    samples = _select(args)
    if args.task in REGION_TASKS:
        return _region_prompts(args, samples)
    out = args.out or Path(f"evaluation-{args.task}")
    out.mkdir(parents=True, exist_ok=True)
    model = predictor = None
    if args.task != "baseline":
        import histosam

        model = _load_model(args)
        if args.task in ("point", "box", "iterative", "clicks"):
            predictor = histosam.Predictor(model, device=args.device, precision=args.precision)
    rows, extra = [], {}
    t_start = time.perf_counter()
    for k, s in enumerate(samples, 1):
        image, gt, gt_classes = load_sample(s)
        t0 = time.perf_counter()
        row = {"image": s.id}
        if args.task in ("baseline", "ais", "amg"):
            if args.task == "baseline":
                from histosam.evaluation.baseline import classical_nuclei

                pred = classical_nuclei(image, pixel_size_um=args.pixel_size)
            else:
                import histosam

                pred = histosam.segment(image, model=model, mode=args.task, mpp=args.mpp, device=args.device,
                                        precision=args.precision)
            row |= _auto_scores(gt, np.asarray(pred), args.relabel_gt)
        elif args.task == "classes":
            row |= _classes(model, image, gt, gt_classes, s.id, args, extra)
        elif args.task == "tissue":
            row |= _tissue(model, image, gt, gt_classes, s, args)
        elif args.task in ("point", "box", "iterative"):
            row |= _interactive(predictor, image, gt, args, extra)
        else:
            row |= _clicks(predictor, image, gt, args, extra)
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        key = "mSA" if "mSA" in row else next(iter(k for k in row if k not in ("image",)))
        print(f"[{k}/{len(samples)}] {s.id}: {key}={row[key]:.4f} ({row['seconds']:.1f}s)", file=sys.stderr)
    tables = R.write_tables(rows, out, args.task, md_columns=None if args.task in ("classes", "tissue") else MD_COLUMNS)
    _plots(args, rows, extra, out)
    model_name = "-" if model is None else getattr(getattr(model, "config", None), "name", args.model)
    if "type_stats" in extra:  # HoVer-Net's statistics over all images (counts summed, as HoVer-Net reports them)
        stats, names = extra["type_stats"], extra["class_names"]
        pooled = {"image": "all (pooled)", "F_d": stats.f_d,
                  **{f"F_{names[k]}": stats.f_c(k) for k in range(1, len(names))}}
        tables["mean"] = {**tables["mean"], **{f"pooled {k}": v for k, v in pooled.items() if k != "image"}}
        conf = ["| true \\ predicted | " + " | ".join(names[1:]) + " |", "|---" * len(names) + "|"]
        conf += [f"| {names[i + 1]} | " + " | ".join(str(int(v)) for v in row) + " |"
                 for i, row in enumerate(stats.confusion)]
        tables["md"] += "\n\n## Confusion of paired nuclei (HoVer-Net pairing)\n\n" + "\n".join(conf)
    _write_report(args, out, tables, len(samples), time.perf_counter() - t_start, model_name)
    mean = tables["mean"]
    shown = [c for c in ("mSA", "SA50", "PQ", "AJI", "point", "box", "I_P", "I_B", "NoC@85", "NoC@90",
                         "NoF@90", "SPC", "object_F1", "object_Dice", "object_Hausdorff_um", "region_Dice",
                         "region_IoU", "weighted_Dice", "grade_correct") if c in mean]
    shown += [c for c in mean if c.startswith("pooled ") or c == "mPQ"]
    print(" ".join(f"{c}={mean[c]:.4f}" for c in shown))
    print(f"wrote {out / 'report.md'}")
    return 0


def _region_prompts(args, samples) -> int:
    """Prompted regions with and without context (:mod:`histosam.evaluation.regions_prompted`): Dice per region
    for noisy boxes / 1, 3, 5, 10 points, NoC@85/90; images at ``--mpp`` resampled to the model's resolution."""
    import histosam
    from histosam.evaluation.datasets import load_sample
    from histosam.evaluation.regions_prompted import RegionPromptConfig, Setting, evaluate_regions, write_report
    from histosam.tasks.nuclei import resample_labels, resample_rgb

    model = _load_model(args)
    settings = ([Setting("context", model, True)] if model.context_decoder is not None else [])
    settings.append(Setting("no-context", model, False))
    for spec in args.compare:
        name, _, path = spec.partition("=")
        other = histosam.load_model(path or name, device=args.device, allow_pickle=args.allow_pickle)
        settings.append(Setting(name if path else Path(name).stem, other, False))
    cfg = RegionPromptConfig(box_noise=args.box_noise, boxes=args.task in ("region-boxes", "region-prompts"),
                             points=(1, 3, 5, 10) if args.task in ("region-points", "region-prompts") else (),
                             clicks=args.task in ("region-clicks", "region-prompts"), max_clicks=args.max_clicks,
                             seed=args.seed, max_regions=args.max_regions)
    images = []
    for s in samples:
        image, gt, _ = load_sample(s)
        f = (args.mpp / model.config.mpp) if (args.mpp and model.config.mpp) else 1.0
        if abs(f - 1) > 1e-6:
            image = resample_rgb(image, f)
            gt = resample_labels(gt, image.shape[:2])
        images.append((s.id, image, np.asarray(gt).astype(np.int32)))
    result = evaluate_regions(settings, images, cfg, log=lambda m: print(m, file=sys.stderr))
    out = args.out or Path(f"evaluation-{args.task}")
    report = write_report(result, out, "histosam " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    print(report.read_text())
    print(f"wrote {report}")
    return 0


def _classes(model, image, gt, gt_classes, sample_id: str, args, extra) -> dict:
    """Typed nuclei against a per-pixel class map: HoVer-Net's F_d / F_c (pairing radius 12 px at 0.25 µm/px,
    scaled with --mpp; counts summed over images in ``extra["type_stats"]``) and PQ / mPQ per image."""
    from histosam.errors import DatasetError
    from histosam.evaluation import metrics as M
    from histosam.evaluation.classes import TypeStats, hovernet_radius, instance_centroids, instance_types
    from histosam.tasks.nuclei import segment_typed_nuclei

    if gt_classes is None:
        raise DatasetError(f"{sample_id}: no <id>_class.tif: --task classes needs a class map per image")
    typed = segment_typed_nuclei(image, model, args.mpp, device=args.device, precision=args.precision)
    names = typed.class_names
    stats = extra.setdefault("type_stats", TypeStats(tuple(range(1, len(names)))))
    extra["class_names"] = names
    t_ids, t_xy = instance_centroids(gt)
    p_ids, p_xy = instance_centroids(typed.labels)
    one = TypeStats(tuple(range(1, len(names))))
    for acc in (stats, one):
        acc.add(t_xy, instance_types(gt, gt_classes, t_ids), p_xy, typed.classes[p_ids - 1],
                hovernet_radius(args.mpp))
    lut = np.zeros(int(typed.labels.max()) + 1, np.int64)
    lut[1:] = typed.classes
    mpq, per = M.multiclass_pq(gt, gt_classes, typed.labels, lut[typed.labels], classes=range(1, len(names)))
    row = {"n_gt": len(t_ids), "n_pred": len(p_ids), "F_d": one.f_d, "mPQ": mpq}
    for k in range(1, len(names)):
        row[f"F_{names[k]}"] = one.f_c(k)
        row[f"PQ_{names[k]}"] = per.get(k, float("nan"))
    return row


def _tissue(model, image, gt, gt_classes, sample, args) -> dict:
    """Regions: GlaS object F1 / Dice / Hausdorff (µm) of the region instances, region (foreground) pixel Dice and
    IoU, per-class pixel Dice when the folder has ``<id>_class.tif``, and the image grade when ``grade.csv``
    (GlaS) lies beside the images and the model grades its regions (benign / malignant classes)."""
    from histosam.evaluation.glands import glas_object_metrics, pixel_scores
    from histosam.tasks.tissue import segment_tissue

    res = segment_tissue(image, model, mpp=args.mpp)
    obj = glas_object_metrics(gt, res.instances)
    px = pixel_scores((gt > 0).astype(np.uint8), (res.class_map > 0).astype(np.uint8), 2)
    mpp = float(args.mpp or res.mpp)
    row = {"n_gt": int(len(np.unique(gt[gt > 0]))), "n_pred": int(len(np.unique(res.instances[res.instances > 0]))),
           "object_F1": obj.f1, "object_Dice": obj.dice, "object_Hausdorff_um": obj.hausdorff * mpp,
           "region_Dice": float(px["dice"][1]), "region_IoU": float(px["iou"][1])}
    if gt_classes is not None:
        per = pixel_scores(gt_classes, res.class_map, len(res.class_names))
        row["weighted_Dice"] = per["weighted_dice"]
        for k, name in enumerate(res.class_names):
            row[f"Dice_{name}"] = float(per["dice"][k])
    grade = _grade(sample)
    names = res.class_names
    if grade and "malignant gland" in names and "benign gland" in names:
        votes = [int((res.class_map == names.index(n)).sum()) for n in ("benign gland", "malignant gland")]
        if sum(votes):
            row["grade_correct"] = float((votes[1] > votes[0]) == (grade == "malignant"))
    return row


def _grade(sample) -> str:
    """The GlaS image grade (``benign`` / ``malignant``) from ``grade.csv`` beside or above the image, or ''."""
    import csv

    folder = Path(sample.image).parent
    for where in (folder / "grade.csv", folder.parent / "grade.csv"):
        if where.is_file():
            with open(where, newline="", encoding="utf-8") as f:
                for r in csv.DictReader(f):
                    if r.get("name") == sample.id:
                        return (r.get("grade_glas") or "").strip()
    return ""


def _interactive(predictor, image, gt, args, extra) -> dict:
    from histosam.evaluation.protocols import iterative_prompting

    n_it = args.n_iterations if args.task == "iterative" else 1
    starts = ("point", "box") if args.task == "iterative" else (args.task,)
    row = {"n_gt": int(len(np.unique(gt[gt > 0])))}
    for start in starts:
        res = iterative_prompting(predictor, image, gt, start=start, n_iterations=n_it, use_masks=args.use_masks,
                                  seed=args.seed, batch_size=args.batch_size, relabel=args.relabel_gt, mpp=args.mpp)
        row[start] = res.msa[0]
        row[f"{start}_SA50"] = res.sa50[0]
        if args.task == "iterative":
            row["I_P" if start == "point" else "I_B"] = res.msa[-1]
        extra.setdefault(f"{start} start", []).append(res.msa)
    if args.task != "iterative":
        row["mSA"] = row[args.task]
    return row


def _clicks(predictor, image, gt, args, extra) -> dict:
    from histosam.evaluation.protocols import click_protocol

    res = click_protocol(predictor, image, gt, max_clicks=args.max_clicks, batch_size=args.batch_size, mpp=args.mpp)
    extra.setdefault("clicks", []).append(res.ious)
    return {"n_gt": len(res.ious), "NoC@80": res.noc(0.8), "NoC@85": res.noc(0.85), "NoC@90": res.noc(0.9),
            "NoF@85": res.nof(0.85), "NoF@90": res.nof(0.9), "SPC": res.spc,
            "SPC_with_embedding": res.spc_with_embedding,
            "mIoU@1": float(res.ious[:, 0].mean()) if len(res.ious) else float("nan")}


def _plots(args, rows, extra, out: Path) -> None:
    from histosam.evaluation import report as R

    if args.task in ("baseline", "ais", "amg"):
        ts = [f"SA{v}" for v in range(50, 100, 5)]
        curve = [float(np.nanmean([r[t] for r in rows])) for t in ts]
        R.plot_threshold_curves({args.task: curve}, out / "sa_per_threshold.png")
    elif args.task == "clicks":
        ious = np.concatenate(extra["clicks"]) if extra.get("clicks") else np.zeros((0, 1))
        R.plot_click_curves({"mean IoU": ious.mean(axis=0)}, out / "iou_per_click.png")
    elif args.task == "iterative":
        curves = {k: np.mean(v, axis=0) for k, v in extra.items()}
        R.plot_click_curves(curves, out / "msa_per_iteration.png", xlabel="iteration", ylabel="mSA", start=0)


def _write_report(args, out: Path, tables, n_images: int, seconds: float, model_name: str) -> None:
    from histosam import __version__
    from histosam.evaluation import report as R

    cmd = "histosam " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["evaluate"] \
        else "histosam evaluate " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                                             if k not in ("func", "command") and v not in (None, False))
    mean = tables["mean"]
    lines = [
        f"# histosam evaluate: {args.task}", "",
        f"Command: `{cmd}`", "",
        f"histosam {__version__}; data `{args.data}`; {n_images} images; split {args.split} "
        f"(val fraction {args.val_fraction}, seed {args.seed}); model {model_name}; "
        f"GT relabelled: {args.relabel_gt}; wall time {seconds:.1f} s.", "",
        "Conventions: mSA = mean SA over IoU thresholds 0.50..0.95 (elf matching; SA = 0 when TP = 0), "
        "dataset score = mean of per-image scores; PQ matches at IoU > 0.5; AJI after Kumar et al.", "",
        "## Mean", "", R.to_markdown([mean]), "",
        "## Per image", "", tables["md"],
    ]
    R.atomic_write_text(out / "report.md", "\n".join(lines))
