"""Checkpoints written by training: the resumable ``latest.pt`` and histosam model files.

- ``latest.pt``: ``{"format": "histosam-train-state", "version": 1, "model": state_dict, "optimizer": ...,
  "scheduler": ..., "epoch": next epoch to run, "step": global step, "best": best val loss, "torch_rng": ...,
  "config": TrainConfig dict}``; written atomically (``histosam.io.atomic.atomic_torch_save``). It holds
  tensors and plain Python values only (:func:`plain_train_state` checks this when it is built) and is read
  with ``torch.load(weights_only=True)``: a ``latest.pt`` that someone else put into an output folder can
  never run code on ``histosam train`` resume; anything else than a training state is a ``CheckpointError``.
- model files (``best.pt``, ``final.pt``): histosam's format ``{"format": "histosam", "version": 1,
  "config": ModelConfig dict, "state_dict": ..., "postprocess": {...}}``, through
  ``histosam.registry.formats.save_histosam``. Initial weights for finetuning are read by
  ``histosam.load_model`` (see ``histosam.train.loop.initial_model``).
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histosam.errors import CheckpointError

TRAIN_STATE_FORMAT = "histosam-train-state"
TRAIN_STATE_VERSION = 1
#: key -> accepted types of a training state's entries (checked after loading)
_TRAIN_STATE_KEYS: dict[str, tuple[type, ...]] = {
    "model": (dict,), "optimizer": (dict,), "scheduler": (dict,), "epoch": (int,), "step": (int,),
    "best": (int, float), "torch_rng": (torch.Tensor,), "config": (dict,),
}
_SCALARS = (type(None), bool, int, float, complex, str, bytes)  # exact types (no subclasses: IntEnum, np.float64)
_TORCH = (torch.Tensor, torch.dtype, torch.device, torch.Size)


def save_model(path: str | Path, model: torch.nn.Module) -> None:
    """Write ``model`` in histosam's checkpoint format (atomic)."""
    from histosam.registry.formats import save_histosam

    save_histosam(model, path)


def plain_train_state(obj: Any, where: str = "state") -> Any:
    """``obj`` with numpy scalars turned into Python values and containers into plain dicts/lists/tuples;
    ``TypeError`` naming the entry for anything that ``torch.load(weights_only=True)`` would refuse (numpy
    arrays, arbitrary objects)."""
    if type(obj) in _SCALARS or isinstance(obj, _TORCH):
        return obj
    if isinstance(obj, (np.bool_, np.number)):  # np.float64 is a float subclass: converted, not kept
        return obj.item()
    if isinstance(obj, np.str_):
        return str(obj)
    if isinstance(obj, dict):
        return {plain_train_state(k, f"{where} key {k!r}"): plain_train_state(v, f"{where}[{k!r}]")
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [plain_train_state(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(f"training state entry {where} is a {type(obj).__module__}.{type(obj).__qualname__}; "
                    "only tensors and plain Python values can be saved (loaded with weights_only=True)")


def save_train_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write a training state atomically, after :func:`plain_train_state`."""
    from histosam.io.atomic import atomic_torch_save

    atomic_torch_save(plain_train_state(state), path)


def _invalid(path: str | Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a valid histosam training state ({why}); delete it or use another output_dir, "
        "or pass --no-resume to start from scratch (it will be overwritten)")


def _reason(exc: BaseException) -> str:
    """One line about why ``torch.load`` failed (never torch's hint to retry with ``weights_only=False``)."""
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
    if isinstance(exc, pickle.UnpicklingError):
        found = [x for x in lines if "Unsupported global" in x or "GLOBAL" in x]
        if found:
            return "it contains pickled Python objects, which are never loaded: " + found[0].rstrip(".")[:200]
        after = [i for i, x in enumerate(lines) if "WeightsUnpickler error" in x]
        detail = lines[after[0]].split("WeightsUnpickler error:", 1)[-1].strip() if after else ""
        if after and not detail and after[0] + 1 < len(lines):
            detail = lines[after[0] + 1]
        if not after and lines and "weights_only" not in lines[0]:
            detail = lines[0]
        return "not a PyTorch weights file" + (f": {detail[:200]}" if detail else "")
    head = lines[0][:200] if lines else ""
    if isinstance(exc, (EOFError, RuntimeError)) or "zip" in head.lower():
        return "unreadable, truncated or corrupt: " + (head.split(". ")[0] if head else type(exc).__name__)
    return f"{type(exc).__name__}: {head}" if head else type(exc).__name__


def load_train_state(path: str | Path) -> dict[str, Any]:
    """Read ``latest.pt`` with ``weights_only=True`` (tensors and plain values only; pickled objects are
    refused, never run); raises a one-line ``CheckpointError`` naming the file when it is not a training
    state (foreign, corrupt, truncated, empty, a folder, or a pickle carrying code)."""
    path = Path(path)
    if path.is_dir():
        raise _invalid(path, "it is a folder")
    try:
        if path.stat().st_size == 0:
            raise _invalid(path, "it is empty")
    except OSError as exc:
        raise CheckpointError(f"cannot read training state {path}: {exc.strerror or exc}") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols on junk input
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise CheckpointError(f"cannot read training state {path}: {exc.strerror or exc}") from exc
    except Exception as exc:  # noqa: BLE001 -- the unpickler raises anything (IndexError, KeyError, ...) on junk
        raise _invalid(path, _reason(exc)) from exc
    if not isinstance(obj, dict) or obj.get("format") != TRAIN_STATE_FORMAT:
        what = f"format {obj.get('format')!r}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise _invalid(path, f"it holds {what}, not {TRAIN_STATE_FORMAT!r}")
    if obj.get("version") != TRAIN_STATE_VERSION:
        raise _invalid(path, f"version {obj.get('version')!r}; this histosam reads version {TRAIN_STATE_VERSION}")
    for key, types in _TRAIN_STATE_KEYS.items():
        if key not in obj:
            raise _invalid(path, f"no {key!r} entry")
        value = obj[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise _invalid(path, f"{key!r} is a {type(value).__name__}")
    return obj
