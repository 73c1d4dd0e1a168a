"""``histosam serve``: HTTP server compatible with QuPath's SAM extension (samapi protocol).

One process, one worker, loopback only unless ``--host`` says otherwise. Models are offered under
the extension's model types (``vit_b``...) and loaded on first use; nothing is downloaded at start-up.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

from histosam.errors import HistosamError

#: offered when no --model is given: ``TYPE=registry name``. Only histosam-nano ships with the package;
#: the PathoSAM models are downloaded when a client first uses them.
DEFAULT_MODELS = (
    "vit_t=histosam-nano",
    "vit_b=vit_b_histopathology",
    "vit_l=vit_l_histopathology",
    "vit_h=vit_h_histopathology",
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve",
        help="HTTP server compatible with QuPath's SAM extension",
        description=(
            "Serve histosam models to QuPath's SAM extension (qupath-extension-sam). Set the extension's "
            "server URL to http://HOST:PORT/sam/ (with a token: http://HOST:PORT/t/TOKEN/sam/)."
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000, the extension's default)")
    p.add_argument(
        "--model", action="append", metavar="[TYPE=]NAME_OR_PATH", default=None,
        help="weights to offer, as a registry name or checkpoint path, under a client model type "
        "(vit_h, vit_l, vit_b, vit_t; default vit_b, vit_t for histosam-nano). Repeatable; the first of a "
        "type is its default. "
        f"Default: {' '.join(DEFAULT_MODELS)}",
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument(
        "--token", default=None,
        help="require this token (Authorization: Bearer TOKEN, or URL prefix /t/TOKEN/); "
        "default: the HISTOSAM_TOKEN environment variable, else none",
    )
    p.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body in MiB (default 64)")
    p.add_argument(
        "--max-pixels", type=int, default=4096 * 4096,
        help="largest viewport image in pixels, width×height (default 16777216 = 4096²)",
    )
    p.add_argument(
        "--models-dir", action="append", metavar="DIR", default=None,
        help="folder from which clients may register checkpoint files (QuPath's 'Register weights' with a "
        "path); repeatable. Default: any readable .pt/.pth/.ckpt/.bin file on this machine",
    )
    p.add_argument(
        "--allow-local-urls", action="store_true",
        help="let clients register weights from URLs on loopback, private or link-local addresses "
        "(refused by default: the server would fetch from its own network)",
    )
    p.add_argument("--max-download-gb", type=float, default=4.0,
                   help="largest weights download a client may start, in GiB (default 4)")
    p.add_argument("--max-weights", type=int, default=64,
                   help="most entries in the weights table, registered ones included (default 64)")
    p.add_argument("--max-points", type=int, default=512, help="most prompt points per request (default 512)")
    p.add_argument(
        "--max-automask-pixels", type=int, default=4096 * 2048,
        help="largest viewport for automatic segmentation in pixels (default 8388608 = 4096×2048)",
    )
    p.add_argument("--max-amg-points", type=int, default=4096,
                   help="most AMG point prompts per automask request, over all crops (default 4096 = 64²)")
    p.add_argument("--max-amg-crops", type=int, default=21,
                   help="most AMG crops per automask request (default 21: crop_n_layers up to 2)")
    p.add_argument("--cache-size", type=int, default=8, help="image embeddings kept (LRU, default 8)")
    p.add_argument("--max-models", type=int, default=2, help="models kept loaded (LRU, default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--preload", action="store_true", help="load the first model before serving")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)
    return p


def parse_model_spec(spec: str) -> tuple[str, str, str]:
    """``[TYPE=]NAME_OR_PATH`` -> ``(type, display name, source)``; raises :class:`HistosamError`."""
    from histosam.server.protocol import SAM_TYPES

    type_, sep, source = spec.partition("=")
    if not sep:
        type_, source = ("vit_t" if spec == "histosam-nano" else "vit_b"), spec
    if type_ not in SAM_TYPES:
        raise HistosamError(f"--model {spec!r}: unknown model type {type_!r}; expected one of {list(SAM_TYPES)}")
    if not source:
        raise HistosamError(f"--model {spec!r}: missing model name or path")
    path = Path(source).expanduser()
    name = path.stem if (path.suffix or os.sep in source) else source
    if os.sep in source or path.suffix:
        if not path.is_file():
            raise HistosamError(f"--model {spec!r}: checkpoint {str(path)!r} does not exist")
        source = str(path.resolve())
    return type_, name, source


def _public_url(source: str) -> str:
    """What the client sees as ``url``: a registry model's published URL (PathoSAM's owncloud links, as in
    the extension's README), else the name or path itself."""
    try:
        from histosam.registry.entries import REGISTRY
    except ImportError:  # pragma: no cover
        return source
    entry = REGISTRY.get(source)
    return entry.url if entry is not None and entry.url else source


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build(args: argparse.Namespace):  # -> FastAPI app
    """The app ``run`` serves, built from parsed arguments (separate for tests)."""
    from histosam.server import HistosamBackend, ServerConfig, WeightEntry, WeightsTable, create_app
    from histosam.server.backend import WorkLimits
    from histosam.server.weights import WeightsPolicy

    for opt in ("max_download_gb", "max_weights", "max_points", "max_automask_pixels", "max_amg_points",
                "max_amg_crops"):
        if not getattr(args, opt) > 0:
            raise HistosamError(f"--{opt.replace('_', '-')} must be positive, got {getattr(args, opt)}")
    dirs = []
    for d in args.models_dir or ():
        path = Path(d).expanduser()
        if not path.is_dir():
            raise HistosamError(f"--models-dir {d!r} is not a folder")
        dirs.append(str(path.resolve()))
    policy = WeightsPolicy(
        models_dirs=tuple(dirs), allow_local_urls=bool(args.allow_local_urls),
        max_download_bytes=int(args.max_download_gb * 2**30), max_entries=int(args.max_weights),
    )
    limits = WorkLimits(
        max_points=int(args.max_points), max_automask_pixels=int(args.max_automask_pixels),
        max_amg_points=int(args.max_amg_points), max_amg_crops=int(args.max_amg_crops),
    )
    table = WeightsTable(policy)
    for spec in args.model or DEFAULT_MODELS:
        type_, name, source = parse_model_spec(spec)
        table.add(WeightEntry(type=type_, name=name, url=_public_url(source), source=source))
    token = args.token or os.environ.get("HISTOSAM_TOKEN") or None
    backend = HistosamBackend(device=args.device, cache_size=args.cache_size, max_models=args.max_models,
                              limits=limits)
    config = ServerConfig(
        max_body_bytes=int(args.max_body_mb * 2**20), max_pixels=int(args.max_pixels), token=token, limits=limits
    )
    if args.preload:
        backend._model(table.list()[0])  # noqa: SLF001 - deliberate warm-up
    return create_app(backend, table, config)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        import torch

        torch.set_num_threads(int(args.threads))
    token = args.token or os.environ.get("HISTOSAM_TOKEN")
    if not _is_loopback(args.host) and not token:
        print(
            f"histosam serve: warning: listening on {args.host} without a token: anyone who can reach this "
            "port can use it (set --token or HISTOSAM_TOKEN)",
            file=sys.stderr,
        )
    if not _is_loopback(args.host) and not args.models_dir:
        print(
            "histosam serve: note: clients may register any readable checkpoint file (.pt .pth .ckpt .bin) "
            "on this machine as weights; restrict them with --models-dir DIR",
            file=sys.stderr,
        )
    app = build(args)
    from histosam.server import serve_forever

    prefix = "/t/<token>" if token else ""
    print(f"histosam serve: QuPath SAM extension server URL: http://{args.host}:{args.port}{prefix}/sam/",
          file=sys.stderr)
    serve_forever(app, args.host, args.port, log_level=args.log_level, secret=token or None)
    return 0
