"""``histosam train CONFIG.yaml [--key value ...]``: every config key is also a flag; flags win."""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

from histosam.train.config import ConfigError, TrainConfig, config_fields, load_config


def _flag_type(field: dataclasses.Field) -> tuple[Any, dict[str, Any]]:
    """argparse ``type``/``nargs`` for a dataclass field (None-able scalars accept 'none')."""
    hint = typing.get_type_hints(TrainConfig)[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
    base = args[0] if optional else hint
    origin = typing.get_origin(base)
    if origin is list:
        item = typing.get_args(base)[0]
        return item, {"nargs": "*"}
    if base is bool:
        return None, {"action": argparse.BooleanOptionalAction}
    if optional:
        return (lambda s, b=base: None if s.lower() in ("none", "null", "") else b(s)), {}
    return base, {}


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train or finetune a model from a YAML config",
                              description="Train or finetune from a YAML config. Every config key is also a "
                                          "flag (--key value) that overrides the file.")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    group = p.add_argument_group("config overrides")
    for f in config_fields():
        typ, extra = _flag_type(f)
        kw: dict[str, Any] = dict(dest=f"cfg_{f.name}", default=None, help=f"override '{f.name}'")
        if typ is not None:
            kw["type"] = typ
        kw.update(extra)
        group.add_argument(f"--{f.name.replace('_', '-')}", **kw)
    p.set_defaults(func=run)
    return p


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Config keys given on the command line (``None`` = not given)."""
    return {f.name: getattr(args, f"cfg_{f.name}") for f in config_fields()
            if getattr(args, f"cfg_{f.name}", None) is not None}


def check_data_dirs(cfg: TrainConfig, source: str) -> None:
    """Before any model is built or folder written: ``data_dirs`` must list existing folders (an empty config
    file is valid and gives the defaults, whose ``data_dirs`` is empty)."""
    if not cfg.data_dirs:
        raise ConfigError(f"{source}: config key 'data_dirs' is empty: list the folders with the training images "
                          "(<id>.png + <id>_label.tif) in the config or pass --data-dirs DIR [DIR ...]")
    for d in cfg.data_dirs:
        if not Path(d).is_dir():
            what = "is not a folder" if Path(d).exists() else "does not exist"
            raise ConfigError(f"{source}: config key 'data_dirs': {d} {what}")


def _task(path: str) -> str:
    """The config's ``task`` (``tissue`` trains a region model; anything else, or none, the instance model)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError, ValueError):
        return ""  # load_config reports what is wrong with the file
    return str(data.get("task", "")) if isinstance(data, dict) else ""


def _run_tissue(args: argparse.Namespace) -> int:
    """``task: tissue``: SAM-Path's class prompts (+ second encoder) on gland data (:mod:`histosam.train.tissue`)."""
    import yaml

    from histosam.train.tissue import tissue_config, train_tissue

    cfg = tissue_config(yaml.safe_load(Path(args.config).read_text(encoding="utf-8-sig")))
    if not Path(cfg.data_dir).is_dir():
        raise ConfigError(f"{args.config}: data_dir {cfg.data_dir} is not a folder")
    summary = train_tissue(cfg, log=lambda m: print(m, flush=True))
    print(json.dumps(summary))
    return 0


def run(args: argparse.Namespace) -> int:
    from histosam.train.loop import build_and_train

    if _task(args.config) == "tissue":
        return _run_tissue(args)
    cfg = load_config(args.config, overrides_from_args(args))
    check_data_dirs(cfg, args.config)
    summary = build_and_train(cfg, progress=not args.no_progress)
    last = summary["history"][-1] if summary["history"] else {}
    print(json.dumps({"output_dir": cfg.output_dir, "epochs_done": summary["epochs_done"],
                      "step": summary["step"], "stopped_early": summary["stopped_early"], "last": last}))
    return 0
