"""Model choices for the widgets: the embedded default, the registry's names, or a checkpoint path."""

from __future__ import annotations

import threading
from typing import Any

DEFAULT_CHOICE = "histosam-nano (embedded default)"

_lock = threading.Lock()
_loaded: dict[tuple[str, str], Any] = {}


def model_choices() -> list[str]:
    """The default first, then every registered model name (``histosam models`` lists their details)."""
    from histosam.registry.entries import DEFAULT_MODEL, list_models

    return [DEFAULT_CHOICE] + [n for n in list_models() if n != DEFAULT_MODEL]


def model_name(choice: str | None) -> str | None:
    """A widget choice (a name, the default entry, a path, or empty) → what :func:`histosam.load_model` takes."""
    choice = (choice or "").strip()
    return None if choice in ("", DEFAULT_CHOICE) else choice


def device_choices() -> list[str]:
    import torch

    return ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else []) + \
        (["mps"] if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available() else [])


def get_model(choice: str | None, device: str | None = None) -> Any:
    """Load a model once per (choice, device) (loading checks the weights' hashes, ~1 s for nano); thread-safe."""
    from histosam.registry.loader import load_model

    name = model_name(choice)
    dev = None if device in (None, "", "auto") else device
    key = (name or "", dev or "")
    with _lock:
        if key not in _loaded:
            _loaded[key] = load_model(name, device=dev)
        return _loaded[key]


def class_names(model: Any) -> tuple[str, ...]:
    """The class head's names, background first; empty when the model has no class head."""
    if getattr(model, "class_decoder", None) is None:
        return ()
    return tuple(getattr(model.config, "class_names", ()) or ())


def class_colors(model: Any, names: tuple[str, ...]) -> list[list[int]]:
    """An RGB colour per class name (the model's own, else histosam's QuPath colours)."""
    from histosam.pipeline.image_job import class_colors as colors

    return colors(model, names)
