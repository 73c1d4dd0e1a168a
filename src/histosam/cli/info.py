"""``histosam info``: versions, compute device, CPU features, threads, precision and the model cache.

Examples::

    histosam info
    histosam info --json
"""

from __future__ import annotations

import argparse
import json
import platform
from typing import Any

#: CPU flags worth reporting (``/proc/cpuinfo`` names) → what they mean for histosam
CPU_FEATURES: dict[str, str] = {
    "amx_bf16": "AMX-BF16 (fast bf16 matrix units)",
    "avx512_bf16": "AVX512-BF16",
    "avx512f": "AVX512",
    "avx2": "AVX2",
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "info",
        help="versions, device, CPU features, threads, cache directory",
        description="Print what histosam runs on: package versions, the default device (CUDA and GPU name), CPU "
        "features that make bf16 fast (AMX, AVX512-BF16), torch threads, the default precision, the model "
        "cache folder and whether the embedded default model is installed.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)
    return p


def collect() -> dict[str, Any]:
    """Everything ``histosam info`` reports, as a JSON-serialisable dict."""
    import numpy as np
    import torch

    from histosam import __version__
    from histosam.inference import runtime
    from histosam.registry.download import cache_dir
    from histosam.registry.entries import DEFAULT_MODEL, REGISTRY
    from histosam.registry.loader import PACKAGE_ROOT

    device = runtime.resolve_device(None)
    cuda = torch.cuda.is_available()
    flags = runtime.cpu_flags()
    entry = REGISTRY[DEFAULT_MODEL]
    embedded = PACKAGE_ROOT / entry.packaged if entry.packaged else None
    cache = cache_dir()
    return {
        "histosam": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "cpu": platform.processor() or platform.machine(),
        "cpu_features": {name: name in flags for name in CPU_FEATURES},
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "default_precision": runtime.resolve_precision("auto", device),
        "model_cache_dir": str(cache),
        "model_cache_exists": cache.is_dir(),
        "default_model": DEFAULT_MODEL,
        "embedded_model_file": str(embedded) if embedded else None,
        "embedded_model_present": bool(embedded and embedded.is_file()),
    }


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def format_text(info: dict[str, Any]) -> str:
    """Human-readable lines for :func:`collect`'s dict."""
    gpu = ", ".join(info["gpus"]) if info["gpus"] else "none"
    lines = [
        f"histosam        {info['histosam']}",
        f"python          {info['python']} ({info['platform']})",
        f"torch           {info['torch']} (CUDA build: {info['cuda_version'] or 'no'})",
        f"numpy           {info['numpy']}",
        f"device          {info['device']}",
        f"CUDA available  {_yes(info['cuda_available'])}",
        f"GPU             {gpu}",
        f"CPU             {info['cpu']}",
    ]
    for name, label in CPU_FEATURES.items():
        lines.append(f"  {label:<34}{_yes(info['cpu_features'][name])}")
    embedded = "present" if info["embedded_model_present"] else "MISSING"
    lines += [
        f"torch threads   {info['torch_threads']} (inter-op {info['torch_interop_threads']})",
        f"precision       {info['default_precision']} (default 'auto' on {info['device']})",
        f"model cache     {info['model_cache_dir']}" + ("" if info["model_cache_exists"] else " (not created yet)"),
        f"default model   {info['default_model']}: {embedded} ({info['embedded_model_file']})",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    info = collect()
    print(json.dumps(info, indent=2) if args.json else format_text(info))
    return 0
