"""``histosam tissue``: tissue regions (glands; benign / malignant with the default region model) of images and
whole slides.

Examples::

    histosam tissue gland.png -o out/ --mpp 0.62
    histosam tissue slide.svs -o out/            # streamed chunk by chunk, resumable

Per image ``<stem>``: ``<stem>_tissue.tif`` (uint8 class map), ``<stem>_regions.geojson`` (QuPath annotations
with classes), ``<stem>_regions.csv`` (class, area µm², perimeter µm, centroid), ``<stem>_tissue_provenance.json``
(areas per class). Slides (``.svs``, ``.ndpi``, ...) write the same names; their class map is at the model's
working resolution (stated in the TIFF's resolution tags).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from histosam.cli.options import add_model_options, add_mpp_option


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "tissue", help="tissue regions (glands) of images and whole slides",
        description="Segment tissue regions with a region model (default histosam-tissue): class map, QuPath "
        "annotations, a region table and provenance per input.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image or slide files, folders or glob patterns")
    p.add_argument("-o", "--output", required=True, help="output folder")
    add_model_options(p, model_help="a region model (default histosam-tissue)", precision=False)
    add_mpp_option(p, "the inputs (default: what the file states, else the model's resolution)")
    p.add_argument("--tile", type=int, default=None, help="model tile in working pixels (default: from the model)")
    p.add_argument("--halo", type=int, default=None, help="tile halo in working pixels (default: from the model)")
    p.add_argument("--chunk", type=int, default=1024, help="slide chunk in working pixels (default 1024)")
    p.add_argument("--min-area", type=float, default=None, metavar="UM2",
                   help="drop regions smaller than this (µm²; default 500)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from histosam.cli.segment import _expand, shown
    from histosam.errors import HistosamError
    from histosam.pipeline.tissue_job import tissue_file
    from histosam.registry.loader import load_model
    from histosam.wsi.regions import SLIDE_SUFFIXES, segment_tissue_slide

    if args.chunk < 1 or (args.tile is not None and args.tile < 16) or (args.halo is not None and args.halo < 0):
        raise HistosamError("--chunk must be >= 1, --tile >= 16, --halo >= 0")
    if args.min_area is not None and not args.min_area >= 0:
        raise HistosamError("--min-area must be >= 0")
    paths, failed = _expand(args.inputs)
    slides = [Path(x) for x in args.inputs if Path(x).suffix.lower() in SLIDE_SUFFIXES and Path(x).is_file()]
    paths += [s for s in slides if s not in paths]
    for item, msg in failed:
        if Path(item).suffix.lower() not in SLIDE_SUFFIXES:
            print(f"histosam tissue: {shown(item)}: error: {shown(msg)}", file=sys.stderr)
    failed = [(i, m) for i, m in failed if Path(i).suffix.lower() not in SLIDE_SUFFIXES]
    if not paths:
        if failed:
            return 1
        raise HistosamError("no input images found")
    model = load_model(args.model or "histosam-tissue", device=args.device, allow_pickle=args.allow_pickle)
    done = 0
    for path in paths:
        try:
            if path.suffix.lower() in SLIDE_SUFFIXES:
                record = segment_tissue_slide(path, args.output, model, mpp=args.mpp, chunk=args.chunk,
                                              tile=args.tile, halo=args.halo, min_area_um2=args.min_area)
            else:
                record = tissue_file(path, args.output, model, mpp=args.mpp, tile=args.tile, halo=args.halo,
                                     min_area_um2=args.min_area)
        except (HistosamError, OSError, ValueError, MemoryError) as exc:
            failed.append((str(path), str(exc)))
            print(f"histosam tissue: {shown(path)}: error: {shown(exc)}", file=sys.stderr)
            continue
        done += 1
        areas = ", ".join(f"{k} {v / 1e6:.3f} mm²" for k, v in record["class_areas_um2"].items())
        print(f"{path}: {record['regions']} regions ({areas}) -> {record['outputs']['geojson']}", file=sys.stderr)
    print(f"{done} done, {len(failed)} failed", file=sys.stderr)
    return 1 if failed else 0
