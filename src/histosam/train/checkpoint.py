"""Checkpoints written by training: the resumable ``latest.pt`` and histosam model files.

- ``latest.pt``: ``{"format": "histosam-train-state", "version": 1, "model": state_dict, "optimizer": ...,
  "scheduler": ..., "epoch": next epoch to run, "step": global step, "best": best val loss, "torch_rng": ...,
  "config": TrainConfig dict}``; written atomically (temp file in the same folder + ``os.replace``).
- model files (``best.pt``, ``final.pt``): histosam's format ``{"format": "histosam", "version": 1,
  "config": ModelConfig dict, "state_dict": ..., "postprocess": {...}}``, through
  ``histosam.registry.formats.save_histosam``. Initial weights for finetuning are read by
  ``histosam.load_model`` (see ``histosam.train.loop.initial_model``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from histosam.errors import CheckpointError


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temp file next to ``path``, then ``os.replace`` (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_model(path: str | Path, model: torch.nn.Module) -> None:
    """Write ``model`` in histosam's checkpoint format (atomic)."""
    from histosam.registry.formats import save_histosam

    save_histosam(model, path)


def load_train_state(path: str | Path) -> dict[str, Any]:
    """Read ``latest.pt``; raises ``CheckpointError`` when it is not a training state."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"cannot read training state {path}: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("format") != "histosam-train-state":
        raise CheckpointError(f"{path} is not a histosam training state")
    return obj
