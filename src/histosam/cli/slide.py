"""``histosam slide``: segment whole slides (streaming, resumable, optional Dask).

Examples::

    histosam slide slide.svs -o out/ --model vit_b_histopathology
    histosam slide 'cohort/*.svs' list.csv -o out/ --model my.pt --workers 4
    histosam slide slide.ndpi -o out/ --model NAME --roi tumour.geojson --mpp 0.25
    histosam slide slide.svs -o out/ --model histosam-nano-classes     # typed nuclei (class per nucleus)
"""

from __future__ import annotations

import argparse
import sys

from histosam.cli.options import add_model_options, add_mpp_option, mpp_value


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "slide",
        help="segment whole slides (streaming, resumable, Dask)",
        description="Nucleus segmentation of whole-slide images: tissue detection, streamed tiles, "
        "per-chunk results committed to <stem>.chunks.sqlite (a rerun resumes), outputs "
        "<stem>.geojson.gz (QuPath), .parquet/.csv, _overlay.png, _tissue.png, .provenance.json. A model with a "
        "class head (e.g. histosam-nano-classes) types every nucleus: QuPath classification, class and "
        "prob_<class> columns, overlay coloured by class, per-class counts in the provenance.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="slide files, folders, glob patterns or CSV lists (path[,mpp])")
    p.add_argument("-o", "--output", required=True, help="output folder")
    g = p.add_argument_group("model")
    add_model_options(g)
    g.add_argument("--fake-model", action="store_true",
                   help="debug: model-free colour-threshold predictor (no network needed)")
    g.add_argument("--batch-size", type=int, default=8, help="tiles per model call (default 8)")
    g.add_argument("--classes", action=argparse.BooleanOptionalAction, default=None,
                   help="type each nucleus with the model's class head (default: when the model has one; "
                        "--no-classes segments only)")
    g = p.add_argument_group("resolution and region")
    add_mpp_option(g, "the slides' level 0 (overrides their metadata; default: the metadata, else 0.25)")
    g.add_argument("--target-mpp", type=mpp_value, default=0.25,
                   help="working resolution of the model in µm/px (default 0.25)")
    g.add_argument("--roi", default=None, help="QuPath GeoJSON file or x,y,w,h box in level-0 pixels")
    g.add_argument("--no-tissue-mask", action="store_true", help="process the whole slide / ROI")
    g = p.add_argument_group("tiling")
    g.add_argument("--tile", type=int, default=None,
                   help="model tile size in working pixels (default: the model's, 1024 for histosam-nano)")
    g.add_argument("--halo", type=int, default=None,
                   help="tile halo in working pixels (default: the model's, 224 for histosam-nano)")
    g.add_argument("--chunk", type=int, default=2048, help="post-processing chunk size (default 2048)")
    g.add_argument("--context", type=int, default=128, help="chunk context in pixels (default 128)")
    g = p.add_argument_group("execution")
    ex = g.add_mutually_exclusive_group()
    ex.add_argument("--workers", type=int, default=0,
                    help="start a local Dask cluster with N worker processes (default: no Dask)")
    ex.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler")
    g.add_argument("--overwrite", action="store_true", help="recompute finished slides and chunks")
    g.add_argument("--csv", action="store_true", help="also write a CSV table")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from histosam.errors import HistosamError
    from histosam.wsi.pipeline import ModelMaps, segment_cohort
    from histosam.wsi.roi import parse_roi

    for name in ("batch_size", "tile", "chunk"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise HistosamError(f"--{name.replace('_', '-')} must be >= 1")
    if (args.halo is not None and args.halo < 0) or args.context < 0:
        raise HistosamError("--halo and --context must be >= 0")
    if args.target_mpp <= 0 or (args.mpp is not None and args.mpp <= 0):
        raise HistosamError("--mpp and --target-mpp must be > 0")
    params: dict = {}
    if args.fake_model:
        from histosam.wsi.fake import colour_threshold_maps

        predict, model_name = colour_threshold_maps, "fake-colour-threshold"
        if args.classes:
            raise HistosamError("--classes needs a model with a class head; --fake-model has none")
        tile, halo = 384, 64
    else:
        from histosam.tasks.nuclei import default_tiling

        predict = ModelMaps(args.model, args.device, precision=args.precision, allow_pickle=args.allow_pickle,
                            classes=getattr(args, "classes", None))
        model_name = args.model or "default"
        params = predict.postprocess  # loads the model now: a bad name (or --classes without a head) fails here
        tile, halo = default_tiling(predict.loaded_model, (1 << 20, 1 << 20))
    tile = args.tile if args.tile is not None else tile
    halo = args.halo if args.halo is not None else halo
    from histosam.limits import check_tiling

    check_tiling(tile, halo, args.chunk)
    roi = parse_roi(args.roi)
    client = cluster = None
    if args.workers and args.workers > 0:
        from dask.distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    elif args.scheduler:
        from dask.distributed import Client

        try:
            client = Client(args.scheduler, timeout="30s")
        except OSError as exc:
            raise HistosamError(f"cannot connect to Dask scheduler {args.scheduler}: {exc}") from exc
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        status = segment_cohort(
            args.inputs, args.output, predict, mpp=args.mpp, overwrite=args.overwrite,
            log=lambda m: print(m, file=sys.stderr), target_mpp=args.target_mpp, roi=roi, tile=tile,
            halo=halo, chunk=args.chunk, context=args.context, batch_size=args.batch_size,
            params=params, use_tissue=not args.no_tissue_mask, client=client, csv_table=args.csv,
            progress=progress, model_name=model_name,
        )
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    if not status:
        raise HistosamError("no slides found in the given inputs")
    failed = [p for p, s in status.items() if s.startswith("error")]
    done = sum(s == "done" for s in status.values())
    skipped = sum(s == "skipped" for s in status.values())
    print(f"{done} done, {skipped} skipped, {len(failed)} failed", file=sys.stderr)
    return 1 if failed else 0
