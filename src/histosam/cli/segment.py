"""``histosam segment``: automatic nucleus segmentation (AIS or AMG) of image files of any size.

Examples::

    histosam segment image.png -o out/
    histosam segment 'tiles/*.tif' folder/ -o out/ --model vit_b_histopathology --mpp 0.25 --geojson-gz
    histosam segment img.png -o out/ --mode amg --param points_per_side=16
    histosam segment img.png -o out/ --param foreground_threshold=0.6 --param context=256

Per input ``<stem>``: ``<stem>_labels.tif`` (``.ome.zarr`` above 50 Mpx), ``<stem>.geojson[.gz]`` (QuPath),
``<stem>_nuclei.csv`` / ``.parquet``, ``<stem>_provenance.json``. Finished inputs are skipped unless
``--overwrite`` (a rerun resumes a folder). A bad input gets one error line; the others still run; the exit
code is 1 when any input failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from histosam.cli.options import add_model_options, add_mpp_option


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "segment",
        help="automatic nucleus segmentation (AIS/AMG) of images of any size",
        description="Segment every nucleus of image files (tiled, streamed chunk by chunk) and write label "
        "images, QuPath GeoJSON, CSV/Parquet measurement tables and provenance per input.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    p.add_argument("-o", "--output", required=True, help="output folder")
    add_model_options(p)
    p.add_argument("--mode", choices=("ais", "amg"), default="ais",
                   help="ais: instance decoder + watershed (default); amg: SAM automatic mask generator")
    p.add_argument("--tile", type=int, default=None, help="model tile size in pixels (default: from the model)")
    p.add_argument("--halo", type=int, default=None, help="tile halo in pixels (default: from the model)")
    p.add_argument("--chunk", type=int, default=1024, help="post-processing chunk size (default 1024)")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per model call (default 4)")
    add_mpp_option(p, "the inputs: resampled to the model's resolution, µm columns in the tables (default: what "
                   "a TIFF states in its OME-XML or resolution tags, else the model's resolution)")
    p.add_argument("--geojson-gz", action="store_true", help="write <stem>.geojson.gz (gzip) instead of .geojson")
    p.add_argument("--overwrite", action="store_true", help="recompute inputs whose outputs are complete")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="AIS/engine or AMG parameter override (repeatable), e.g. foreground_threshold=0.6, "
                   "context=256, points_per_side=16")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar over chunks (default: when stderr is a terminal)")
    p.set_defaults(func=run)
    return p


def _value(text: str) -> Any:
    """``"0.5"`` -> 0.5, ``"3"`` -> 3, ``"true"`` -> True, ``"none"`` -> None, anything else stays a string."""
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_params(items: list[str], mode: str) -> dict[str, Any]:
    """``["key=value", ...]`` -> dict, keys checked against the AIS/engine or AMG parameters of ``mode``."""
    from histosam.errors import HistosamError

    if mode == "amg":
        from histosam.postprocess.amg import AMGParams

        valid = set(AMGParams.__dataclass_fields__)
    else:
        from histosam.pipeline import ENGINE_KEYS
        from histosam.postprocess.ais import AISParams

        valid = set(AISParams.__dataclass_fields__) | set(ENGINE_KEYS)
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise HistosamError(f"--param expects KEY=VALUE, got {item!r}")
        if key not in valid:
            raise HistosamError(f"unknown {mode.upper()} parameter {key!r}; valid: {', '.join(sorted(valid))}")
        params[key] = _value(value)
    return params


def _expand(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """(image paths in input order without duplicates, [(input, message)] for inputs that yield nothing)."""
    from histosam.io.images import list_images

    paths: list[Path] = []
    errors: list[tuple[str, str]] = []
    seen: set[Path] = set()
    for item in inputs:
        found = list_images([item])
        if not found:
            p = Path(item)
            errors.append((item, "folder holds no image files" if p.is_dir() else "no files match this pattern"))
        for q in found:
            try:
                key = q.resolve()
            except (OSError, RuntimeError) as exc:  # a symlink loop, an unreadable folder
                errors.append((str(q), f"cannot be resolved ({exc.__class__.__name__}: {exc})"))
                continue
            if key not in seen:
                seen.add(key)
                paths.append(q)
    return paths, errors


def shown(what: str | Path) -> str:
    """A path for a one-line message: control characters (a newline in a file name) escaped."""
    text = str(what)
    return text if text.isprintable() else repr(text)[1:-1]


def _check(args: argparse.Namespace) -> None:
    from histosam.errors import HistosamError

    for name in ("tile", "chunk", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise HistosamError(f"--{name.replace('_', '-')} must be >= 1")
    if args.halo is not None and args.halo < 0:
        raise HistosamError("--halo must be >= 0")
    if args.mpp is not None and not args.mpp > 0:
        raise HistosamError("--mpp must be > 0")
    from histosam.limits import check_tiling

    check_tiling(args.tile, args.halo, args.chunk)


def run(args: argparse.Namespace) -> int:
    from histosam.automatic import resolve_model
    from histosam.errors import HistosamError
    from histosam.pipeline import is_complete, output_names, segment_file
    from histosam.pipeline.image_job import check_params, existing_outputs, run_key

    _check(args)
    params = parse_params(args.param, args.mode)
    check_params(args.mode, params)  # values too, once for all inputs
    paths, failed = _expand(args.inputs)
    out_dir = Path(args.output)
    try:
        if out_dir.is_dir():  # label images written by an earlier run into the same folder are not inputs
            ours = out_dir.resolve()
            paths = [p for p in paths if not (p.name.endswith("_labels.tif") and p.parent.resolve() == ours)]
    except OSError as exc:
        raise HistosamError(f"output folder {shown(out_dir)} cannot be used: {exc.strerror or exc}") from exc

    def fail(what: str, msg: str) -> None:
        failed.append((what, msg))
        print(f"histosam segment: {shown(what)}: error: {shown(msg)}", file=sys.stderr)

    for item, msg in list(failed):
        print(f"histosam segment: {shown(item)}: error: {shown(msg)}", file=sys.stderr)
    if not paths:
        if failed:  # each failed input has had its line
            print(f"0 done, 0 skipped, {len(failed)} failed", file=sys.stderr)
            return 1
        raise HistosamError("no input images found")
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    model = None
    owners: dict[str, Path] = {}
    done = skipped = 0
    for path in paths:
        stem_key = output_names(path, out_dir)["provenance"].name
        if stem_key in owners:
            fail(str(path), f"same output name as {owners[stem_key]}; rename one of them")
            continue
        owners[stem_key] = path
        if model is None:  # load once; a bad model stops everything
            model = resolve_model(args.model, args.device, require_decoder=args.mode == "ais",
                                  allow_pickle=args.allow_pickle)
        try:
            if not args.overwrite and is_complete(path, out_dir, geojson_gz=args.geojson_gz):
                key = run_key(path, model, None, mode=args.mode, tile=args.tile, halo=args.halo, chunk=args.chunk,
                              batch_size=args.batch_size, device=args.device, precision=args.precision,
                              mpp=args.mpp, geojson_gz=args.geojson_gz, params=params)
                if existing_outputs(path, out_dir, key, geojson_gz=args.geojson_gz) is not None:
                    skipped += 1
                    print(f"{path}: skipped (complete outputs from the same model, input and parameters exist; "
                          "--overwrite recomputes)", file=sys.stderr)
                    continue
            names = segment_file(path, out_dir, model, args.mode, tile=args.tile, halo=args.halo,
                                 chunk=args.chunk, batch_size=args.batch_size, device=args.device,
                                 precision=args.precision, mpp=args.mpp, geojson_gz=args.geojson_gz,
                                 overwrite=args.overwrite, progress=progress, **params)
        except HistosamError as exc:
            msg = str(exc)
            fail(str(path), msg[len(str(path)) + 2:] if msg.startswith(f"{path}: ") else msg)
            continue
        except (OSError, ValueError, MemoryError) as exc:
            fail(str(path), f"{type(exc).__name__}: {exc}")
            continue
        done += 1
        provenance = json.loads(names["provenance"].read_text(encoding="utf-8"))
        working_mpp = getattr(getattr(model, "config", None), "mpp", None)
        if provenance["parameters"].get("mpp_source") == "none" and working_mpp is not None:
            print(f"{path}: note: no pixel size given (--mpp) or stated in the file: taken to be the model's "
                  f"{working_mpp} µm/px", file=sys.stderr)
        if args.mode == "amg" and provenance.get("n_objects") == 0:
            print(f"{path}: note: AMG kept no mask: every candidate fell below pred_iou_thresh / "
                  "stability_score_thresh (--param to lower them)"
                  + ("; this model has an instance decoder, and AIS (the default --mode) is its automatic mode"
                     if getattr(model, "instance_decoder", None) is not None else ""), file=sys.stderr)
        print(f"{path}: {provenance.get('n_objects')} nuclei -> {names['geojson']}", file=sys.stderr)
        if provenance.get("class_counts"):
            print(f"{path}: by class: " + ", ".join(f"{k} {v}" for k, v in provenance["class_counts"].items()),
                  file=sys.stderr)
    print(f"{done} done, {skipped} skipped, {len(failed)} failed", file=sys.stderr)
    return 1 if failed else 0
