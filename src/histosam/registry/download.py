"""Model cache and downloads: ``$HISTOSAM_MODEL_DIR`` (default ``~/.cache/histosam/models``), hash-verified."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from histosam.errors import CheckpointError, ModelNotAvailableError


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


def fetch(url: str, filename: str, expected_hash: str | None, progress: bool = True) -> Path:
    """Path of the cached file, downloading (with a progress bar) and verifying it if needed.

    Offline or on a failed download, raises :class:`ModelNotAvailableError` saying where to put the file.
    """
    target = cache_dir() / filename
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=total or None, unit="B", unit_scale=True, desc=filename)
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                if bar is not None:
                    bar.update(len(block))
            if bar is not None:
                bar.close()
        verify(tmp, expected_hash)
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        tmp.unlink(missing_ok=True)
        raise ModelNotAvailableError(
            f"cannot download {url} ({exc}). Download it elsewhere and place it at {target} "
            f"(or set HISTOSAM_MODEL_DIR), or pass the file path instead of the model name"
        ) from exc
    except CheckpointError:
        tmp.unlink(missing_ok=True)
        raise
    return target
