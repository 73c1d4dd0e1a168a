"""``histosam predict``: one object from point and/or box prompts on one image.

Examples::

    histosam predict image.png -o mask.png --point 120,80
    histosam predict image.tif -o mask.tif --model vit_b_histopathology --box 10,20,60,90 --point 30,40,0
    histosam predict image.png -o mask.png --point 120,80 --multimask --precision fp32
    histosam predict image.png -o mask2.png --point 120,80 --point 131,84,0 --mask-input mask.png

Iterative correction: give all clicks so far (``--point`` is repeatable, each with its label) and the earlier
mask (``--mask-input``: the mask a previous run wrote, or any mask image of IMAGE's size, non-zero = object); it
goes in as SAM's mask prompt.

Coordinates are image pixels, ``x`` to the right and ``y`` down (QuPath / napari-x convention). A point's
optional third value is its label: 1 foreground (default), 0 background. Writes the mask with the highest
predicted IoU: ``.png`` as uint8 0/255, ``.tif``/``.tiff`` as a uint32 label image (1 = object); and beside it
``<OUT stem>.json`` with the prompts, every candidate's score and the chosen one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from histosam.cli.options import add_model_options, add_mpp_option
from histosam.errors import HistosamError

OUTPUT_SUFFIXES = (".png", ".tif", ".tiff")


def _numbers(text: str, what: str, counts: tuple[int, ...]) -> list[float]:
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        values = []
    if len(values) not in counts or not all(np.isfinite(values)):
        raise argparse.ArgumentTypeError(f"{what} must be {' or '.join(_forms(what))} numbers, got {text!r}")
    return values


def _forms(what: str) -> list[str]:
    return ["X,Y", "X,Y,LABEL"] if what == "--point" else ["X0,Y0,X1,Y1"]


def point_arg(text: str) -> tuple[float, float, int]:
    """``"x,y"`` or ``"x,y,label"`` → ``(x, y, label)`` (label 1 foreground, 0 background)."""
    values = _numbers(text, "--point", (2, 3))
    label = int(values[2]) if len(values) == 3 else 1
    if len(values) == 3 and values[2] not in (0.0, 1.0):
        raise argparse.ArgumentTypeError(f"--point label must be 1 (foreground) or 0 (background), got {text!r}")
    return values[0], values[1], label


def box_arg(text: str) -> tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` → a box with ``x0 < x1`` and ``y0 < y1``."""
    x0, y0, x1, y1 = _numbers(text, "--box", (4,))
    if not (x0 < x1 and y0 < y1):
        raise argparse.ArgumentTypeError(f"--box needs x0 < x1 and y0 < y1, got {text!r}")
    return x0, y0, x1, y1


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predict",
        help="prompt-based (interactive) segmentation of one image from points/boxes",
        description="Segment one object of IMAGE from point and/or box prompts (x, y image pixels) and write the "
        "best mask (.png: uint8 0/255, .tif: uint32 labels) plus <OUT stem>.json with the scores.",
    )
    p.add_argument("image", metavar="IMAGE", help="image file (PNG, JPEG, TIFF, ...)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output mask: OUT.png, OUT.tif or OUT.tiff")
    add_model_options(p)
    p.add_argument("--point", type=point_arg, action="append", default=[], metavar="X,Y[,LABEL]",
                   help="point prompt (repeatable); LABEL 1 = foreground (default), 0 = background")
    p.add_argument("--box", type=box_arg, default=None, metavar="X0,Y0,X1,Y1", help="box prompt")
    p.add_argument("--mask-input", default=None, metavar="MASK",
                   help="an earlier mask of IMAGE (PNG/TIFF of the same size, non-zero = object; e.g. the OUT of a "
                   "previous run) fed back as the mask prompt, for iterative correction with more clicks")
    p.add_argument("--multimask", action="store_true",
                   help="predict three candidates and keep the best (helps with a single ambiguous point)")
    add_mpp_option(p, "IMAGE: resampled to the model's resolution where the model states one (default: what a TIFF "
                   "states in its OME-XML or resolution tags, else none); prompts and mask stay in IMAGE's pixels")
    p.add_argument("--context", action=argparse.BooleanOptionalAction, default=None,
                   help="WSI-SAM multi-resolution context (a model with a context head): the HR frame around the "
                   "prompts plus a 4x wider LR field from IMAGE (padded beyond it); default: on when the model has "
                   "a context head and neither --mask-input nor --multimask is given")
    p.set_defaults(func=run)
    return p


def check_prompts(points: list[tuple[float, float, int]], box: tuple[float, ...] | None,
                  shape: tuple[int, int], has_mask: bool = False) -> None:
    """Raise :class:`HistosamError` when there is no prompt or a prompt lies outside the ``H×W`` image (with an
    earlier mask, background points alone are a correction)."""
    h, w = shape
    if not points and box is None:
        raise HistosamError("give at least one prompt: --point X,Y[,LABEL] and/or --box X0,Y0,X1,Y1")
    for x, y, _ in points:
        if not (0 <= x < w and 0 <= y < h):
            raise HistosamError(f"point ({x:g}, {y:g}) lies outside the {w}×{h} image (x, y pixels)")
    if box is not None:
        x0, y0, x1, y1 = box
        if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
            raise HistosamError(f"box {list(box)} does not overlap the {w}×{h} image")
    if points and not any(label == 1 for *_, label in points) and box is None and not has_mask:
        raise HistosamError("only background points given: add a foreground point (label 1) or a box")


def write_mask(path: Path, mask: np.ndarray) -> Path:
    """Write a bool ``H×W`` mask atomically: ``.png`` uint8 0/255, ``.tif``/``.tiff`` uint32 labels 0/1."""
    if path.suffix.lower() == ".png":
        from PIL import Image

        from histosam.io.atomic import atomic_path

        with atomic_path(path) as tmp:
            Image.fromarray(mask.astype(np.uint8) * 255).save(tmp, format="PNG")
        return path
    from histosam.io.labels import write_labels_tiff

    return write_labels_tiff(path, mask.astype(np.uint32))


def read_mask(path: str, shape: tuple[int, int]) -> np.ndarray:
    """A mask image (PNG, TIFF, ...; non-zero = object) of an ``H×W`` image as bool; one-line errors."""
    p = Path(path)
    if not p.is_file():
        raise HistosamError(f"--mask-input {p} does not exist")
    try:
        if p.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = np.asarray(tifffile.imread(p))
        else:
            from PIL import Image

            with Image.open(p) as im:
                arr = np.asarray(im)
    except Exception as exc:  # noqa: BLE001 -- any unreadable file is one message
        raise HistosamError(f"--mask-input {p} cannot be read as an image ({exc})") from None
    if arr.ndim == 3:
        arr = arr.any(axis=-1) if arr.shape[-1] in (3, 4) else arr[0]
    if arr.shape != tuple(shape):
        raise HistosamError(f"--mask-input {p} is {arr.shape[1]}×{arr.shape[0]} px, IMAGE {shape[1]}×{shape[0]}: "
                            "give a mask of the image's size")
    return arr != 0


def run(args: argparse.Namespace) -> int:
    from histosam.inference.predictor import Predictor
    from histosam.io.images import image_mpp, read_image
    from histosam.registry.loader import load_model

    out = Path(args.output)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise HistosamError(f"output must end in {', '.join(OUTPUT_SUFFIXES)}, got {out.name!r}")
    if not out.parent.is_dir():
        raise HistosamError(f"output folder {out.parent} does not exist")
    if args.mpp is not None and not args.mpp > 0:
        raise HistosamError("--mpp must be > 0")
    image = read_image(args.image)
    mask_path = getattr(args, "mask_input", None)
    check_prompts(args.point, args.box, image.shape[:2], has_mask=mask_path is not None)
    earlier = read_mask(mask_path, image.shape[:2]) if mask_path is not None else None
    mpp = args.mpp if args.mpp is not None else image_mpp(args.image)
    mpp_source = "given" if args.mpp is not None else ("file" if mpp is not None else "none")
    model = load_model(args.model, device=args.device, allow_pickle=args.allow_pickle)
    working_mpp = getattr(model.config, "mpp", None)
    if mpp_source == "none" and working_mpp is not None:
        print(f"{args.image}: note: no pixel size given (--mpp) or stated in the file: taken to be the model's "
              f"{working_mpp} µm/px", file=sys.stderr)
    elif mpp_source == "file":
        print(f"{args.image}: pixel size {mpp:g} µm/px from the file", file=sys.stderr)
    wants = getattr(args, "context", None)
    if wants and model.context_decoder is None:
        raise HistosamError(f"model {model.config.name!r} has no context head (--context needs one; see "
                            "scripts/train_context.py)")
    if wants and (earlier is not None or args.multimask):
        raise HistosamError("--context does not take --mask-input or --multimask; pass --no-context")
    if wants or (wants is None and model.context_decoder is not None and earlier is None and not args.multimask):
        return _run_with_context(args, model, image, mpp, mpp_source, out)
    predictor = Predictor(model, device=args.device, precision=args.precision)
    predictor.set_image(image, mpp=mpp)
    points = np.array([p[:2] for p in args.point], dtype=np.float32) if args.point else None
    labels = np.array([p[2] for p in args.point], dtype=np.int64) if args.point else None
    box = np.array(args.box, dtype=np.float32) if args.box is not None else None
    mask_kw: dict[str, Any] = {}
    if earlier is not None:
        mask_input, origin = predictor.mask_prompt(earlier, points, box)
        mask_kw = {"mask_input": mask_input, "mask_origin": origin}
    pred = predictor.predict(points=points, labels=labels, box=box, multimask=args.multimask, **mask_kw)
    scores = pred.scores[0]
    best = int(np.argmax(scores))
    mask = pred.masks[0, best]
    report: dict[str, Any] = {
        "image": str(Path(args.image)),
        "image_size": {"height": int(image.shape[0]), "width": int(image.shape[1])},
        "output": str(out),
        "model": model.config.name,
        "architecture": model.config.architecture,
        "device": str(predictor.device),
        "precision": predictor.precision,
        "mpp": mpp,
        "mpp_source": mpp_source,
        "resample_factor": predictor.scale,
        "prompts": {"points": [[x, y] for x, y, _ in args.point], "labels": [lab for *_, lab in args.point],
                    "box": list(args.box) if args.box is not None else None,
                    "mask_input": str(mask_path) if mask_path is not None else None},
        "multimask": bool(args.multimask),
        "scores": [float(s) for s in scores],
        "best": best,
        "best_score": float(scores[best]),
    }
    return _write_outputs(out, mask, report, "")


def _run_with_context(args, model, image: np.ndarray, mpp, mpp_source: str, out: Path) -> int:
    """``histosam predict`` through :class:`~histosam.inference.context.ContextPredictor` (WSI-SAM context)."""
    from histosam.inference.context import ContextPredictor

    predictor = ContextPredictor(model, device=args.device)
    predictor.set_image(image, mpp=mpp)
    points = np.array([p[:2] for p in args.point], dtype=np.float32) if args.point else None
    labels = np.array([p[2] for p in args.point], dtype=np.int64) if args.point else None
    box = np.array(args.box, dtype=np.float32) if args.box is not None else None
    pred = predictor.predict(points=points, labels=labels, box=box)
    report: dict[str, Any] = {
        "image": str(Path(args.image)), "image_size": {"height": int(image.shape[0]), "width": int(image.shape[1])},
        "output": str(out), "model": model.config.name, "architecture": model.config.architecture,
        "mpp": mpp, "mpp_source": mpp_source, "context": True,
        "hr_frame_origin_working_px": list(pred.hr_origin), "lr_scale": predictor.geometry.scale,
        "prompts": {"points": [[x, y] for x, y, _ in args.point], "labels": [lab for *_, lab in args.point],
                    "box": list(args.box) if args.box is not None else None},
        "scores": [pred.score], "best": 0, "best_score": pred.score,
    }
    return _write_outputs(out, pred.mask, report, " with context")


def _write_outputs(out: Path, mask: np.ndarray, report: dict[str, Any], how: str) -> int:
    """Write the mask and ``<out>.json`` (the report plus the mask's area and box) and print the summary line."""
    from histosam.io.atomic import atomic_write

    write_mask(out, mask)
    rows, cols = np.nonzero(mask)
    report = {**report, "area_px": int(mask.sum()),
              "bbox_xyxy": [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1] if rows.size
              else None}
    json_path = out.with_suffix(".json")
    with atomic_write(json_path) as f:
        json.dump(report, f, indent=2)
    print(f"{out}: {report['area_px']} px{how}, predicted IoU {report['best_score']:.3f} (scores in {json_path})")
    return 0
