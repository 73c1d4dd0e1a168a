"""The server's table of weights offered to the client (``GET/POST /sam/weights/``), and download progress.

The client shows ``name`` in its weights drop-down (filtered by ``type``) and sends the entry's
``url`` back as ``checkpoint_url`` with every request, so ``url`` is the key that identifies
weights. ``source`` is what :func:`histosam.load_model` receives (a registry name, a local path or a
URL); an entry may carry a ``factory`` instead (tests, pre-built models).

Nothing is downloaded when the server starts: entries are resolved to models on first use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histosam.errors import HistosamError


class RequestError(HistosamError):
    """A request the server cannot serve; ``status_code`` is the HTTP status to answer with."""

    status_code = 422


class WeightsNotFoundError(RequestError):
    status_code = 404


class CancelledError(RequestError):
    status_code = 409


@dataclass
class WeightEntry:
    """One offered set of weights. ``type`` is a client model family (``vit_b``...)."""

    type: str
    name: str
    url: str
    source: str | None = None
    factory: Callable[[], Any] | None = field(default=None, repr=False)

    def public(self) -> dict[str, str]:
        """The JSON object the client parses as ``SAMWeights`` (exactly these three keys)."""
        return {"type": self.type, "name": self.name, "url": self.url}


@dataclass
class Progress:
    """Download progress for ``GET /sam/progress/``: ``percent`` −1 when unknown."""

    message: str | None = None
    percent: int = -1
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def update(self, done: int, total: int | None, message: str | None = None) -> None:
        """Progress callback; raises :class:`CancelledError` once ``GET /sam/weights/cancel/`` was called."""
        if self.cancel.is_set():
            raise CancelledError("download cancelled")
        self.percent = int(100 * done / total) if total else -1
        if message is not None:
            self.message = message

    def as_json(self) -> dict[str, Any]:
        return {"message": self.message, "percent": self.percent}


class WeightsTable:
    """Thread-safe, ordered table of :class:`WeightEntry`; first entry of a type is its default."""

    def __init__(self) -> None:
        self._entries: list[WeightEntry] = []
        self._lock = threading.Lock()
        self.progress = Progress()

    def add(self, entry: WeightEntry) -> None:
        with self._lock:
            self._entries = [e for e in self._entries if e.url != entry.url] + [entry]

    def list(self, type: str | None = None) -> list[WeightEntry]:
        with self._lock:
            return [e for e in self._entries if type is None or e.type == type]

    def resolve(self, type: str, checkpoint_url: str | None) -> WeightEntry:
        """The entry a request means: by ``checkpoint_url`` when given, else the first of ``type``."""
        entries = self.list()
        if checkpoint_url is not None:
            for e in entries:
                if e.url == checkpoint_url:
                    return e
            known = _registry_name(checkpoint_url)
            if known is not None:  # a published URL (e.g. PathoSAM's in the extension's README)
                entry = WeightEntry(type=type, name=known, url=checkpoint_url, source=known)
                self.add(entry)
                return entry
            raise WeightsNotFoundError(
                f"checkpoint_url {checkpoint_url!r} is not registered on this server; register it "
                "first (QuPath: 'Register weights', i.e. POST /sam/weights/) or start the server with "
                "--model"
            )
        for e in entries:
            if e.type == type:
                return e
        have = sorted({e.type for e in entries})
        raise WeightsNotFoundError(
            f"no weights registered for model type {type!r}; this server offers types {have}"
        )

    def register(self, type: str, name: str, url: str) -> str:
        """``POST /sam/weights/``: add ``url`` (local path, ``file://`` URL or http(s) URL) as ``name``.

        Local files must exist. URLs of registry models (PathoSAM's) are downloaded on first use;
        other URLs are downloaded now into histosam's model cache.
        Returns the plain-text message the client shows.
        """
        for e in self.list(type):
            if e.name == name:
                return f"Model file with the name '{name}' already exists. Skip registration."
            if e.url == url:
                return f"Model file with the url '{url}' already exists. Skip registration."
        source = url
        if url.startswith("file://"):
            source = url[len("file://"):]
        if "://" not in source:
            path = Path(source).expanduser()
            if not path.is_file():
                raise WeightsNotFoundError(f"weights file {str(path)!r} does not exist on the server")
            source = str(path.resolve())
        elif not source.startswith(("http://", "https://")):
            raise RequestError(f"url must be http(s)://, file:// or a local path, got {url!r}")
        else:
            source = _registry_name(source) or self._download(source)
        self.add(WeightEntry(type=type, name=name, url=url, source=source))
        return f"{name} ({url}) is registered."

    def _download(self, url: str) -> str:
        """Download ``url`` into histosam's model cache now (the client shows progress meanwhile)."""
        import hashlib

        from histosam.registry import download as dl

        self.progress.cancel.clear()
        self.progress.message, self.progress.percent = f"downloading {url}", -1
        stem = url.rstrip("/").rsplit("/", 1)[-1] or "weights"
        filename = f"custom/{hashlib.sha256(url.encode()).hexdigest()[:16]}-{stem}"
        try:
            if hasattr(dl, "download"):  # wanted: a fetch with a progress callback that can cancel
                return str(dl.download(url, filename, progress=self.progress.update))
            return str(dl.fetch(url, filename, None, progress=False))
        finally:
            self.progress.message, self.progress.percent = None, -1
            self.progress.cancel.clear()

def _registry_name(url: str) -> str | None:
    """The histosam registry name published at ``url``, if any (loaded, and downloaded, on first use)."""
    try:
        from histosam.registry.entries import URL_ALIASES
    except ImportError:  # pragma: no cover
        return None
    return URL_ALIASES.get(url)
