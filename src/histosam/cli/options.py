"""Options shared by the commands, defined once so that ``--model``, ``--device``, ``--precision``, ``--mpp`` and
``--allow-pickle`` mean the same everywhere."""

from __future__ import annotations

import argparse
import math

__all__ = ["positive_float", "add_model_options", "add_mpp_option", "PRECISIONS"]

PRECISIONS = ("auto", "fp32", "bf16")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (``--mpp``), with a one-line error otherwise."""
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from exc
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def device_value(text: str) -> str:
    """argparse type: a torch device this machine has (cpu, cuda, cuda:N, mps)."""
    from histosam.errors import ParameterError
    from histosam.inference.runtime import resolve_device

    try:
        resolve_device(text)
    except ParameterError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def add_model_options(p: argparse.ArgumentParser | argparse._ArgumentGroup, *, model_help: str = "",
                      precision: bool = True, allow_pickle: bool = True) -> None:
    """``--model``, ``--device``, ``--precision`` and ``--allow-pickle`` (the last two optional per command)."""
    p.add_argument("--model", default=None,
                   help="registered model name (`histosam models`) or checkpoint path (default: the embedded "
                   "default model, histosam-nano)" + (f"; {model_help}" if model_help else ""))
    p.add_argument("--device", type=device_value, default=None,
                   help="torch device: cpu, cuda, cuda:N, mps (default: cuda if available, "
                   "else cpu)")
    if precision:
        p.add_argument("--precision", choices=PRECISIONS, default="auto",
                       help="inference precision (default auto: bf16 where the hardware is fast at it, else fp32)")
    if allow_pickle:
        p.add_argument("--allow-pickle", action="store_true",
                       help="allow checkpoints with pickled Python objects (runs code from the file: only for "
                       "files you trust)")


#: pixel sizes accepted from the command line (µm/px): from far beyond 100× to a coarse overview
MPP_RANGE = (0.01, 100.0)


def mpp_value(text: str) -> float:
    """argparse type: a pixel size in :data:`MPP_RANGE` µm/px."""
    value = positive_float(text)
    if not MPP_RANGE[0] <= value <= MPP_RANGE[1]:
        raise argparse.ArgumentTypeError(f"must be between {MPP_RANGE[0]} and {MPP_RANGE[1]:g} µm/px, got {text!r}")
    return value


def add_mpp_option(p: argparse.ArgumentParser | argparse._ArgumentGroup, what: str) -> None:
    """``--mpp``: the pixel size of the inputs in µm/px (``what`` says which inputs and the default)."""
    p.add_argument("--mpp", type=mpp_value, default=None, metavar="UM_PER_PX",
                   help=f"µm per pixel of {what}")
