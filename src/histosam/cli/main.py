"""``histosam`` command line: one module per sub-command, each thin.

Every sub-command module exposes ``add_parser(subparsers) -> argparse.ArgumentParser`` and
``run(args: argparse.Namespace) -> int``. The modules are imported lazily so that ``histosam --help``
stays fast and a broken optional dependency only affects its own command.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

#: sub-command name -> module under ``histosam.cli``
COMMANDS: dict[str, str] = {
    "info": "info",
    "models": "models",
    "predict": "predict",
    "segment": "segment",
    "evaluate": "evaluate",
    "train": "train",
    "slide": "slide",
    "tissue": "tissue",
    "serve": "serve",
}

DESCRIPTIONS: dict[str, str] = {
    "info": "versions, device, CPU features, threads, cache directory",
    "models": "list registered models and what is cached",
    "predict": "prompt-based (interactive) segmentation of one image from points/boxes",
    "segment": "automatic nucleus segmentation (AIS/AMG) of images of any size",
    "evaluate": "evaluate a model or the classical baseline on an annotated folder",
    "train": "train or finetune a model from a YAML config",
    "slide": "segment whole slides (streaming, resumable, Dask)",
    "tissue": "tissue regions (glands) of images and whole slides",
    "serve": "HTTP server compatible with QuPath's SAM extension",
}


def build_parser(load_subcommands: bool = True) -> argparse.ArgumentParser:
    from histosam import __version__

    parser = argparse.ArgumentParser(
        prog="histosam",
        description="Segment Anything for histopathology.",
    )
    parser.add_argument("--version", action="version", version=f"histosam {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="print the full traceback of an unexpected error (otherwise one line)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        try:
            mod = importlib.import_module(f"histosam.cli.{module}")
        except ModuleNotFoundError as exc:  # command not built yet or optional dependency missing
            if not exc.name or not exc.name.startswith("histosam.cli"):
                sub.add_parser(name, help=f"{DESCRIPTIONS[name]} (unavailable: {exc})")
            continue
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    if not hasattr(args, "func"):
        parser.error(f"command {args.command!r} is not available in this installation")
    if args.debug:
        os.environ["HISTOSAM_DEBUG"] = "1"  # read by code that reports errors and goes on (slide cohorts)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI turns every error into one clear line
        from histosam.errors import HistosamError

        if isinstance(exc, HistosamError):
            print(f"histosam {args.command}: error: {one_line(exc)}", file=sys.stderr)
            return 2
        if args.debug:
            raise
        print(f"histosam {args.command}: unexpected error: {type(exc).__name__}: {one_line(exc)} (please "
              "report it; --debug before the command shows the traceback)", file=sys.stderr)
        return 3


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (multi-line messages joined with ' | ')."""
    text = str(exc).strip() or type(exc).__name__
    return " | ".join(part.strip() for part in text.splitlines() if part.strip())


if __name__ == "__main__":
    sys.exit(main())
