"""``histosam models``: the registered models, whether each is cached, and where it comes from.

Examples::

    histosam models
    histosam models --json
    histosam models --verify
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "models",
        help="list registered models and what is cached",
        description="List the models histosam can load by name (--model NAME): architecture, whether it has an "
        "instance decoder for automatic segmentation (AIS), licence, whether its files are already in the "
        "model cache (and where), and the download URL. Offline, place the files at the printed paths.",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument("--verify", action="store_true",
                   help="check every packaged or cached model file against its published hash (exit 1 on a mismatch)")
    p.set_defaults(func=run)
    return p


def model_rows() -> list[dict[str, Any]]:
    """One dict per registry entry: name, architecture, ais_decoder, licence, cached, path(s), url(s)."""
    from histosam.registry.download import cache_dir
    from histosam.registry.entries import DEFAULT_MODEL, REGISTRY
    from histosam.registry.loader import PACKAGE_ROOT

    cache = cache_dir()
    rows = []
    for entry in REGISTRY.values():
        if entry.packaged:
            files = [PACKAGE_ROOT / entry.packaged]
        else:
            files = [cache / entry.filename] + ([cache / entry.decoder_filename] if entry.decoder_filename else [])
        rows.append({
            "name": entry.name,
            "architecture": entry.architecture,
            "ais_decoder": entry.has_decoder,
            "licence": entry.licence,
            "cached": all(Path(f).is_file() for f in files),
            "packaged": entry.packaged is not None,
            "default": entry.name == DEFAULT_MODEL,
            "paths": [str(f) for f in files],
            "url": entry.url,
            "decoder_url": entry.decoder_url,
            "description": entry.description,
        })
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table followed by one 'files' line per model."""
    head = ("NAME", "ARCH", "AIS", "CACHED", "LICENCE")
    table = [head] + [(r["name"] + (" *" if r["default"] else ""), r["architecture"],
                       "yes" if r["ais_decoder"] else "no",
                       ("packaged" if r["packaged"] else "yes") if r["cached"] else "no", r["licence"])
                      for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    lines.append("(* = default model; AIS = has an instance decoder for automatic segmentation)")
    lines.append("")
    for r in rows:
        lines.append(f"{r['name']}: {r['description']}")
        if r["cached"]:
            where = "cached at"
        else:
            where = "missing from the package:" if r["packaged"] else "not cached; goes to"
        lines.append(f"  {where} {', '.join(r['paths'])}")
        for key in ("url", "decoder_url"):
            if r[key]:
                lines.append(f"  {key.replace('_', ' ')}: {r[key]}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.verify:
        return verify_all()
    rows = model_rows()
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


def verify_all() -> int:
    """Print one line per packaged/cached model file with its hash check; 1 when any file mismatches."""
    from histosam.registry.entries import REGISTRY
    from histosam.registry.loader import verify_entry

    bad = 0
    for name in REGISTRY:
        for path, status in verify_entry(name):
            if status == "missing":
                continue
            bad += status == "MISMATCH"
            print(f"{name:<24} {status:<9} {path}")
    print(f"{bad} damaged file(s)" if bad else "all present model files match their published hashes")
    return 1 if bad else 0
