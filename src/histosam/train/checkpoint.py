"""Checkpoints written by training: the resumable ``latest.pt`` and histosam model files.

- ``latest.pt``: ``{"format": "histosam-train-state", "version": 1, "model": state_dict, "optimizer": ...,
  "scheduler": ..., "epoch": next epoch to run, "step": global step, "best": best val loss, "torch_rng": ...,
  "config": TrainConfig dict}``; written atomically (``histosam.io.atomic.atomic_torch_save``).
- model files (``best.pt``, ``final.pt``): histosam's format ``{"format": "histosam", "version": 1,
  "config": ModelConfig dict, "state_dict": ..., "postprocess": {...}}``, through
  ``histosam.registry.formats.save_histosam``. Initial weights for finetuning are read by
  ``histosam.load_model`` (see ``histosam.train.loop.initial_model``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from histosam.errors import CheckpointError


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
