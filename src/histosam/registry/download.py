"""Model cache and downloads: ``$HISTOSAM_MODEL_DIR`` (default ``~/.cache/histosam/models``), hash-verified."""

from __future__ import annotations

import hashlib
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from histosam.errors import CheckpointError, DownloadCancelled, ModelNotAvailableError


def cache_dir() -> Path:
    """Folder where downloaded checkpoints live (``$HISTOSAM_MODEL_DIR`` or ``~/.cache/histosam/models``)."""
    env = os.environ.get("HISTOSAM_MODEL_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "histosam" / "models"


def file_hash(path: str | os.PathLike, algorithm: str) -> str:
    """Hex digest of a file (``sha256`` or ``xxh128``), read in 4 MiB blocks."""
    if algorithm == "sha256":
        h = hashlib.sha256()
    elif algorithm == "xxh128":
        import xxhash

        h = xxhash.xxh128()
    else:
        raise ValueError(f"unknown hash algorithm {algorithm!r}")
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, expected: str | None) -> None:
    """Raise :class:`CheckpointError` when the file's hash differs from ``"algo:hex"``."""
    if not expected:
        return
    algo, _, digest = expected.partition(":")
    actual = file_hash(path, algo)
    if actual != digest:
        raise CheckpointError(f"{path} has {algo} {actual}, expected {digest}: the file is corrupt, truncated or a "
                              "different release; delete it and download again")


ProgressCallback = Callable[[int, "int | None"], None]


def fetch(url: str, filename: str, expected_hash: str | None, progress: bool | ProgressCallback = True,
          cancel: threading.Event | None = None) -> Path:
    """Path of the cached file ``cache_dir() / filename``, downloading and verifying it if it is not there yet.

    Args:
        url: ``http(s)://`` or ``file://`` URL.
        filename: name (may contain sub-folders) inside :func:`cache_dir`.
        expected_hash: ``"algo:hexdigest"`` checked before the file enters the cache, or ``None``.
        progress: ``True`` for a tqdm bar on stderr, ``False`` for silence, or a callback
            ``(done_bytes, total_bytes) -> None`` called after every 1 MiB block (``total_bytes`` is ``None``
            when the server sends no ``Content-Length``). An exception raised by the callback aborts the download.
        cancel: set this event (from another thread) to stop the download: raises :class:`DownloadCancelled`.

    The data go to a temporary ``.part`` file next to the target and enter the cache with ``os.replace`` only
    once complete and verified, so an interrupted or cancelled download leaves nothing behind.
    Offline or on a failed download, raises :class:`ModelNotAvailableError` naming the URL and where to put the
    file; a hash mismatch raises :class:`CheckpointError`.
    """
    target = cache_dir() / filename
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.part")
    callback = progress if callable(progress) else None
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            bar = None
            if progress is True:
                from tqdm import tqdm

                bar = tqdm(total=total, unit="B", unit_scale=True, desc=Path(filename).name)
            done = 0
            if callback is not None:
                callback(0, total)
            while True:
                if cancel is not None and cancel.is_set():
                    raise DownloadCancelled(f"download of {url} cancelled")
                block = response.read(1 << 20)
                if not block:
                    break
                out.write(block)
                done += len(block)
                if bar is not None:
                    bar.update(len(block))
                if callback is not None:
                    callback(done, total)
            if bar is not None:
                bar.close()
        verify(tmp, expected_hash)
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise ModelNotAvailableError(
            f"cannot download {url} ({exc}). Download it elsewhere and place it at {target} "
            f"(or set HISTOSAM_MODEL_DIR), or pass the file path instead of the model name"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)
    return target


def download(url: str, filename: str, expected_hash: str | None = None,
             progress: bool | ProgressCallback = False, cancel: threading.Event | None = None) -> Path:
    """:func:`fetch` with keyword defaults suited to servers (no progress bar unless asked)."""
    return fetch(url, filename, expected_hash, progress=progress, cancel=cancel)
