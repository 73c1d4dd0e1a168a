"""Atomic file writes: a temporary file in the target's folder, fsync, then ``os.replace``.

Readers never see a half-written file, and on an exception the temporary file is removed and any
existing file at the target path is left untouched. The finished file or folder gets the permissions of the one
it replaces, else those a plain ``open``/``mkdir`` would give (``0o666``/``0o777`` less the umask), not the
private ``0o600``/``0o700`` of the temporary (outputs on shared storage stay readable by the group).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Self

from histosam.errors import OutputError

__all__ = ["atomic_write", "atomic_path", "atomic_dir", "atomic_torch_save", "AtomicStreamWriter"]


def _tmp_name(path: Path, suffix: str = "") -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    return Path(name)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    """The process's umask: from ``/proc/self/status`` where it is there (no change to the process), else by
    setting and restoring it."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _final_mode(path: Path, directory: bool) -> int:
    """Permission bits for what replaces ``path``: the old one's, else the default for a new file/folder."""
    with contextlib.suppress(OSError):
        return stat.S_IMODE(path.stat().st_mode)
    return (0o777 if directory else 0o666) & ~_umask()


@contextlib.contextmanager
def _replace_or_discard(tmp: Path, path: Path) -> Iterator[None]:
    """Run the body that fills the temporary file ``tmp``; then give it its final permissions, move it onto
    ``path`` (``os.replace``) and fsync the folder. If the body or the move raises, ``tmp`` is removed and the
    exception re-raised."""
    try:
        yield
        os.chmod(tmp, _final_mode(path, directory=False))
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """Context manager yielding an open file that replaces ``path`` atomically on success.

    ``mode`` is ``"w"``/``"wt"`` (text, UTF-8 unless ``encoding`` is given) or ``"wb"``; extra keyword
    arguments go to :func:`open`. The parent folder must exist.
    """
    if mode not in ("w", "wt", "wb", "x", "xb"):
        raise ValueError(f"atomic_write mode must be a write mode ('w', 'wb'), got {mode!r}")
    path = Path(path)
    if "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
    tmp = _tmp_name(path)
    with _replace_or_discard(tmp, path):
        with open(tmp, mode.replace("x", "w"), **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if "x" in mode and path.exists():
            raise FileExistsError(path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path (same folder, same suffix) for libraries that write by path themselves;
    it replaces ``path`` atomically on success and is removed on an exception."""
    path = Path(path)
    tmp = _tmp_name(path, suffix="".join(path.suffixes))
    with _replace_or_discard(tmp, path):
        yield tmp
        with contextlib.suppress(OSError):
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder that replaces the folder ``path`` on success (e.g. a Zarr store).

    The old folder is moved aside, the new one renamed into place, then the old one deleted; on an
    exception the temporary folder is deleted and the old one kept.
    """
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(tmp, _final_mode(path, directory=True))
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
        os.rmdir(old)
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_write` (creating the parent folder); returns the path."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)
    return path


class AtomicStreamWriter:
    """Base for streaming writers whose output appears at ``path`` only when :meth:`close` is called.

    A subclass's ``__init__`` sets ``path``, enters an atomic context (:func:`atomic_write`,
    :func:`atomic_dir`, ...) and keeps it, not yet exited, in ``_ctx``, and sets ``_closed = False``.
    It may override :meth:`_finish` to write trailers before the output is moved into place.
    ``close()`` and ``abort()`` act once; ``abort()`` (or an exception inside ``with``) discards the
    output and leaves any old file at ``path`` untouched.
    """

    path: Path
    _ctx: contextlib.AbstractContextManager
    _closed: bool

    def _finish(self) -> None:
        """Complete the output (trailers, inner streams) just before it is moved into place."""

    def close(self) -> Path:
        if not self._closed:
            self._closed = True
            self._finish()
            self._ctx.__exit__(None, None, None)
        return self.path

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            err = RuntimeError(f"{type(self).__name__} aborted")
            try:
                self._ctx.__exit__(RuntimeError, err, None)
            except RuntimeError as e:
                if e is not err:
                    raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


#: the names this module gives its temporary files and folders: ``.<target>.<8 random chars>.tmp[<suffixes>]``
#: (files, folders) and ``.<target>.<8 random chars>.old`` (the previous folder while it is being replaced)
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.(?:tmp(?:\..*)?|old)$")


def sweep_temp_files(folder: str | os.PathLike, stem: str) -> list[Path]:
    """Remove the temporary files and folders that an interrupted atomic write left in ``folder`` for the
    outputs of ``stem`` (targets named ``<stem>.*`` or ``<stem>_*``). Only names this module creates are
    touched, only directly in ``folder``. Returns what was removed."""
    import shutil

    removed: list[Path] = []
    folder = Path(folder)
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TEMP_NAME.match(p.name)
        if m is None:
            continue
        target = m.group("target")
        if not (target.startswith(stem) and target[len(stem): len(stem) + 1] in (".", "_")):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def make_dirs(folder: Path) -> list[Path]:
    """Create ``folder`` (and missing parents); returns the folders created, deepest first. A file in the way is
    a one-line error."""
    created = []
    try:
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"output folder {folder} exists and is not a folder (-o)")
        p = folder
        while not p.exists():
            created.append(p)
            p = p.parent
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a name too long, no permission, a read-only file system
        remove_empty_dirs(created)
        raise OutputError(f"cannot create output folder {folder}: {exc.strerror or exc}") from exc
    return created


def remove_empty_dirs(created: list[Path]) -> None:
    """Remove the folders this run created (deepest first) while they are empty: a failed run leaves none."""
    for p in created:
        try:
            p.rmdir()
        except OSError:
            return
