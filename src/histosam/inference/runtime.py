"""Fast-path switches in one place: device, precision (bf16 autocast or exact fp32), CPU feature detection."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
from collections.abc import Iterator
from typing import TypeVar

import torch

from histosam.errors import ParameterError

ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)

PRECISIONS = ("auto", "fp32", "bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """CPU feature flags from /proc/cpuinfo (empty where unavailable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AMX or AVX512-BF16)."""
    flags = cpu_flags()
    return bool({"amx_bf16", "avx512_bf16"} & flags)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` → CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ParameterError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from exc
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (dev.index is not None and dev.index >= n):
            raise ParameterError(f"device {device!r} is not available here ({n} CUDA device(s)); use --device cpu")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ParameterError(f"device {device!r} is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ParameterError(f"unsupported device {device!r}: use cpu, cuda, cuda:N or mps")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` → ``"bf16"`` on CUDA and on CPUs with native bf16, else ``"fp32"``."""
    if precision not in PRECISIONS:
        raise ParameterError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """``torch.autocast`` to bf16 when ``precision == "bf16"``; a no-op for exact fp32."""
    if precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks for reuse instead of returning them to the OS; once per process.

    PyTorch's CPU tensors come straight from ``malloc``. Blocks above 32 MB (the UNETR decoder's 1024² feature
    maps are 128-268 MB in bf16) are mmapped and unmapped again on every forward, so every forward page-faults
    them in anew: ~400k minor faults and ~1.3 s of kernel time per 1024² decode on a 2-core EPYC (decoder
    3.2 s → 2.0 s with this, see ``benchmarks/RESULTS.md``). Sets ``M_MMAP_MAX=0`` and the largest
    ``M_TRIM_THRESHOLD``: the process then keeps its peak heap (RSS does not shrink after a peak; it does not
    grow beyond it for repeated work of the same shapes). Opt out with ``HISTOSAM_KEEP_FREED_MEMORY=0``.
    A no-op off glibc. Returns whether the setting is active. Limit: glibc always mmaps blocks above 64 MB in
    a secondary arena, and moves a thread to one after an allocation failed (e.g. a corrupt file asked for an
    absurd size); that thread's big blocks then behave as by default (correct, only slower).
    """
    if os.environ.get("HISTOSAM_KEEP_FREED_MEMORY", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    libc = _glibc()
    if libc is None:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (other C libraries' ``mallopt`` codes differ), else ``None``."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    has_all = all(hasattr(libc, f) for f in ("gnu_get_libc_version", "mallopt", "malloc_trim"))
    return libc if has_all else None


def resident_mb() -> float:
    """This process's resident set size in MiB (``/proc/self/statm``; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def release_freed_memory(above_mb: float = 0.0) -> None:
    """Return the heap's free pages to the OS (glibc ``malloc_trim(0)``; a no-op elsewhere), when the resident
    size exceeds ``above_mb`` MiB.

    Long streaming runs call it between chunks, so that :func:`keep_freed_memory` saves the page faults of the
    forwards inside a chunk while the resident size stays bounded: whole slides always (one chunk's peak),
    the per-image job above a budget (trimming costs the next chunk its page faults again).
    """
    if above_mb > 0 and resident_mb() <= above_mb:
        return
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def prepare_for_inference(model: ModuleT, device: torch.device) -> ModuleT:
    """Move to ``device``, eval mode; on CPU channels-last (faster oneDNN convolutions) and
    :func:`keep_freed_memory`."""
    model = model.to(device).eval()
    if device.type == "cpu":
        keep_freed_memory()
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # (not in the stubs)
    return model
