"""Checkpoints written by training: the resumable ``latest.pt`` and histosam model files.

- ``latest.pt``: ``{"format": "histosam-train-state", "version": 1, "model": state_dict, "optimizer": ...,
  "scheduler": ..., "epoch": next epoch to run, "step": global step, "best": best val loss, "torch_rng": ...,
  "config": TrainConfig dict}``; written atomically (temp file in the same folder + ``os.replace``).
- model files (``best.pt``, ``final.pt``): histosam's format ``{"format": "histosam", "version": 1,
  "config": ModelConfig dict, "state_dict": ..., "postprocess": {...}}``, through
  ``histosam.registry.formats.save_histosam`` when that exists, else the private writer below.
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


def _model_config_dict(model: torch.nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return {}
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)


def save_model(path: str | Path, model: torch.nn.Module) -> None:
    """Write ``model`` in histosam's checkpoint format (atomic)."""
    try:
        from histosam.registry.formats import save_histosam  # type: ignore[attr-defined]
    except ImportError:
        save_histosam = None
    if save_histosam is not None:
        save_histosam(model, path)
        return
    config = _model_config_dict(model)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save({"format": "histosam", "version": 1, "config": config, "state_dict": state,
                       "postprocess": dict(config.get("postprocess", {}))}, path)


def load_model_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Initial weights: a histosam file, a train state, or a plain state dict (strict=False, reported)."""
    try:
        from histosam.registry.formats import load_into  # type: ignore[attr-defined]
    except ImportError:
        load_into = None
    if load_into is not None:
        load_into(model, path)
        return
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if isinstance(obj, dict) and "state_dict" in obj:
        state = obj["state_dict"]
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        state = obj["model"]
    elif isinstance(obj, dict):
        state = obj
    else:
        raise CheckpointError(f"{path}: not a checkpoint (got {type(obj).__name__})")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if len(missing) == len(model.state_dict()):
        raise CheckpointError(f"{path}: no parameter names match the {_model_config_dict(model).get('name')} model")
    if missing or unexpected:
        print(f"checkpoint {path}: {len(missing)} missing, {len(unexpected)} unexpected keys (kept random)")


def load_train_state(path: str | Path) -> dict[str, Any]:
    """Read ``latest.pt``; raises ``CheckpointError`` when it is not a training state."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"cannot read training state {path}: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("format") != "histosam-train-state":
        raise CheckpointError(f"{path} is not a histosam training state")
    return obj
