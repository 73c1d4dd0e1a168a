"""Run keys: everything that determines an output set, so that a rerun or a resume never reuses results that
another model, other parameters, another input or another histosam version produced.

A run key is a JSON-able dict with four parts:

- ``model``: ``{"weights", "config"}``; ``weights`` is a content hash of every parameter and buffer
  (:func:`histosam.models.param_cache.weights_fingerprint`), so two files with the same weights match and a
  finetuned copy under the same name does not;
- ``input``: ``{"name", "size_bytes", "mtime_ns"}`` of the input file;
- ``parameters``: every option that changes the result (mode, tiling, precision, mpp, post-processing, ...);
- ``histosam_version``.

It is stored in the provenance (image runs) and in the chunk store's fingerprint (slides). A mismatch raises
:class:`RunMismatchError`, naming the parts that differ and how to proceed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from histosam.errors import RunMismatchError

__all__ = ["RunMismatchError", "model_identity", "input_identity", "make_run_key", "changed_keys",
           "check_run_key"]


def model_identity(model: Any = None, predict_maps: Any = None) -> dict[str, Any]:
    """What makes a model compute what it computes: ``{"weights", "config"}`` of a loaded model (content hash of
    every parameter and buffer; hash of its configuration without its name, e.g. the post-processing defaults it
    carries), else of a map predictor (its ``identity`` attribute when it has one, e.g.
    :class:`histosam.wsi.pipeline.ModelMaps`, or ``{"weights": None, "predictor": <its name>}``). The model's
    name is not part of it: the same weights under another file name are the same model."""
    if model is not None and hasattr(model, "state_dict"):
        import dataclasses
        import hashlib
        import json

        from histosam.models.param_cache import weights_fingerprint

        cfg = getattr(model, "config", None)
        cfg_dict = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else {}
        cfg_dict = {k: v for k, v in cfg_dict.items() if k != "name"}
        cfg_hash = hashlib.blake2b(json.dumps(cfg_dict, sort_keys=True, default=str).encode(),
                                   digest_size=8).hexdigest()
        return {"weights": weights_fingerprint(model), "config": cfg_hash}
    ident = getattr(predict_maps, "identity", None)
    if isinstance(ident, Mapping):
        return dict(ident)
    name = getattr(predict_maps, "__name__", None) or type(predict_maps).__name__
    return {"weights": None, "predictor": str(name)}


def input_identity(path: str | os.PathLike) -> dict[str, Any]:
    """Name, size and modification time (ns) of an input file: a changed or replaced file gives another key."""
    p = Path(path)
    st = p.stat()
    return {"name": p.name, "size_bytes": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def make_run_key(*, model: Mapping[str, Any], input: Mapping[str, Any], parameters: Mapping[str, Any]
                 ) -> dict[str, Any]:
    """The run key (see the module docstring); ``parameters`` are normalised to JSON types."""
    import json

    import histosam

    params = json.loads(json.dumps(dict(parameters), sort_keys=True, default=str))
    return {"histosam_version": histosam.__version__, "model": dict(model), "input": dict(input),
            "parameters": params}


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the entries that differ between two run keys (``[]`` when equal)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{k}" if prefix else str(k)
            if k not in old or k not in new:
                out.append(name)
            else:
                out.extend(changed_keys(old[k], new[k], name))
        return out
    return [] if old == new else [prefix or "(all)"]


def check_run_key(old: Mapping[str, Any] | None, new: Mapping[str, Any], *, what: str) -> None:
    """Raise :class:`RunMismatchError` unless ``old == new``. ``what`` names the existing results in the message
    (e.g. ``"out/a_provenance.json"``); ``old=None`` means they carry no run key (an older histosam)."""
    if old is None:
        raise RunMismatchError(f"{what} was written without a run key (an older histosam), so it cannot be "
                               "matched to this model and these parameters; --overwrite recomputes it, or "
                               "choose another output folder (-o)")
    diff = changed_keys(old, new)
    if diff:
        shown = ", ".join(diff[:6]) + (f" and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise RunMismatchError(f"{what} was made with another model, input or parameters (changed: {shown}); "
                               "--overwrite recomputes it, or choose another output folder (-o)")
