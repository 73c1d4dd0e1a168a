"""The server's table of weights offered to the client (``GET/POST /sam/weights/``), and download progress.

The client shows ``name`` in its weights drop-down (filtered by ``type``) and sends the entry's
``url`` back as ``checkpoint_url`` with every request, so ``url`` is the key that identifies
weights. ``source`` is what :func:`histosam.load_model` receives (a registry name, a local path or a
URL); an entry may carry a ``factory`` instead (tests, pre-built models).

Nothing is downloaded when the server starts: entries are resolved to models on first use.

``POST /sam/weights/`` is open to every client of the server, so registration follows a
:class:`WeightsPolicy`:

- a **path** (or ``file://`` URL) must be absolute, name a checkpoint file (:data:`CHECKPOINT_SUFFIXES`,
  the suffixes :func:`histosam.load_model` reads) and be an existing, readable regular file; once symbolic
  links are resolved it must lie inside one of ``models_dirs`` when any are given, else still carry a
  checkpoint suffix. Every failure of the file-system checks gets the *same* 404 answer, so the endpoint
  does not tell a client which files exist (checks on the string alone may say what is wrong);
- a **URL** must be ``http(s)``; its host must resolve to public addresses only (no loopback, private,
  link-local, unspecified, multicast or reserved address) unless ``allow_local_urls``. The check is
  repeated when each connection is opened (redirects, DNS rebinding); proxies are not used. The download
  stops at ``max_download_bytes``; one download runs at a time;
- the table holds at most ``max_entries`` entries.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import ipaddress
import os
import re
import socket
import stat
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histosam.errors import (
    CancelledError,
    ConflictError,
    DownloadTooLargeError,
    HistosamError,
    ModelNotAvailableError,
    NotAllowedError,
    RequestError,
    WeightsNotFoundError,
)

#: checkpoint suffixes a registered path may have: those :func:`histosam.load_model` treats as checkpoint
#: files (``.safetensors`` is recognised there but cannot be loaded, so it is not accepted here).
CHECKPOINT_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".ckpt", ".bin")

#: longest path (bytes) and path component (bytes) accepted, as on Linux (PATH_MAX, NAME_MAX).
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255


@dataclass(frozen=True)
class WeightsPolicy:
    """What ``POST /sam/weights/`` may register (see the module docstring)."""

    models_dirs: tuple[str, ...] = ()
    allow_local_urls: bool = False
    max_download_bytes: int = 4 * 2**30
    max_entries: int = 64

    def resolved_dirs(self) -> tuple[Path, ...]:
        out = []
        for d in self.models_dirs:
            try:
                out.append(Path(d).expanduser().resolve())
            except (OSError, RuntimeError, ValueError):
                continue
        return tuple(out)


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
    """Thread-safe, ordered table of :class:`WeightEntry`; first entry of a type is its default.

    :meth:`add` (the operator's ``--model``, tests) is not checked; :meth:`register` (clients) follows
    ``policy``.
    """

    def __init__(self, policy: WeightsPolicy | None = None) -> None:
        self._entries: list[WeightEntry] = []
        self._lock = threading.Lock()
        self._download_lock = threading.Lock()
        self.policy = policy or WeightsPolicy()
        self._dirs = self.policy.resolved_dirs()
        # for the early, string-only check: the folders as given (normalised) and resolved
        self._dirs_as_given = self._dirs + tuple(
            Path(os.path.normpath(Path(d).expanduser().absolute())) for d in self.policy.models_dirs
        )
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
                f"checkpoint_url {_shorten(checkpoint_url)!r} is not registered on this server; register it "
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

        Paths and URLs are checked against :attr:`policy` (module docstring). URLs of registry models
        (PathoSAM's) are downloaded on first use; other URLs are downloaded now into histosam's model cache.
        Returns the plain-text message the client shows; refusals raise :class:`RequestError` (4xx).
        """
        for e in self.list(type):
            if e.name == name:
                return f"Model file with the name '{name}' already exists. Skip registration."
            if e.url == url:
                return f"Model file with the url '{_shorten(url)}' already exists. Skip registration."
        self._check_room()
        if url.lower().startswith("file:"):
            source = self._checked_path(_file_url_path(url))
        elif "://" not in url:
            source = self._checked_path(url)
        else:
            source = _registry_name(url) or self._download(_checked_url(url, self.policy.allow_local_urls))
        with self._lock:
            self._check_room(len(self._entries))
            self._entries = [e for e in self._entries if e.url != url]
            self._entries.append(WeightEntry(type=type, name=name, url=url, source=source))
        return f"{name} ({url}) is registered."

    def _check_room(self, count: int | None = None) -> None:
        limit = self.policy.max_entries
        if (len(self.list()) if count is None else count) >= limit:
            raise ConflictError(
                f"this server already offers {limit} weights, its limit (histosam serve --max-weights): "
                "no more can be registered until it is restarted"
            )

    # -- paths -------------------------------------------------------------------------------------
    def _checked_path(self, text: str) -> str:
        """The resolved path of a registrable checkpoint file, or a :class:`RequestError`.

        Checks on the string come first and may say what is wrong; every check that looks at the file
        system fails with one and the same answer (:meth:`_unavailable`)."""
        _check_path_text(text)
        path = Path(text).expanduser() if text.startswith("~/") else Path(text)  # not ~user: no user oracle
        if not path.is_absolute():
            raise RequestError(
                f"weights path {_shorten(text)!r} is relative; give the absolute path of the checkpoint file "
                "on the server machine"
            )
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise RequestError(
                f"weights path {_shorten(text)!r} does not name a checkpoint file: the file name must end in "
                f"{' '.join(CHECKPOINT_SUFFIXES)}"
            )
        if self._dirs and not _inside(Path(os.path.normpath(path)), self._dirs_as_given):
            raise self._unavailable(text)  # decided without touching the file system
        try:
            real = path.resolve(strict=True)
            st = real.stat()
            ok = (
                stat.S_ISREG(st.st_mode)  # no folders, devices or FIFOs (reading one would block)
                and (_inside(real, self._dirs) if self._dirs else real.suffix.lower() in CHECKPOINT_SUFFIXES)
                and os.access(real, os.R_OK)
            )
        except (OSError, RuntimeError, ValueError):
            ok = False
        if not ok:
            raise self._unavailable(text)
        return str(real)

    def _unavailable(self, text: str) -> WeightsNotFoundError:
        where = " inside the server's model folders (histosam serve --models-dir)" if self._dirs else ""
        return WeightsNotFoundError(
            f"weights file {_shorten(text)!r} does not exist on the server or may not be registered: give an "
            f"existing, readable checkpoint file ({' '.join(CHECKPOINT_SUFFIXES)}){where}"
        )

    # -- downloads ---------------------------------------------------------------------------------
    def _download(self, url: str) -> str:
        """Download ``url`` into histosam's model cache now (the client shows progress meanwhile)."""
        from histosam.registry.download import cache_dir

        if not self._download_lock.acquire(blocking=False):
            raise ConflictError("another weights download is running on this server; try again when it is done")
        try:
            self.progress.cancel.clear()
            self.progress.message, self.progress.percent = f"downloading {_shorten(url)}", -1
            target = cache_dir() / "custom" / _cache_name(url)
            if target.is_file():
                return str(target)
            fetch_url(url, target, max_bytes=self.policy.max_download_bytes,
                      allow_local=self.policy.allow_local_urls, progress=self.progress.update)
            return str(target)
        finally:
            self.progress.message, self.progress.percent = None, -1
            self.progress.cancel.clear()
            self._download_lock.release()


def _shorten(text: str, n: int = 120) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _check_path_text(text: str) -> None:
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise RequestError("weights path contains control characters (a NUL byte or a line break)")
    try:
        raw = os.fsencode(text)
    except (UnicodeError, ValueError):
        raise RequestError("weights path is not valid text for a file name") from None
    if len(raw) > MAX_PATH_BYTES:
        raise RequestError(f"weights path is too long: {len(raw)} bytes, the limit is {MAX_PATH_BYTES}")
    longest = max((len(p) for p in raw.split(b"/")), default=0)
    if longest > MAX_NAME_BYTES:
        raise RequestError(
            f"weights path {_shorten(text)!r} is too long: a file or folder name has {longest} bytes, the limit "
            f"is {MAX_NAME_BYTES}"
        )


def _file_url_path(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise RequestError(f"file:// URL {_shorten(url)!r} names another machine; give a path on the server")
    return urllib.parse.unquote(parts.path)


def _inside(path: Path, dirs: Iterable[Path]) -> bool:
    return any(path == d or path.is_relative_to(d) for d in dirs)


def _cache_name(url: str) -> str:
    """``<16 hex of sha256(url)>-<sanitised last path segment>``: short, safe, distinct per URL."""
    last = urllib.parse.urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", urllib.parse.unquote(last)).lstrip(".")[:64] or "weights"
    return f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{stem}"


# -- URL checks ------------------------------------------------------------------------------------
def ip_allowed(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether a download may connect to ``ip``: a global unicast address, also for the IPv4 address
    embedded in IPv4-mapped, 6to4, Teredo and NAT64 (64:ff9b::/96) IPv6 addresses."""
    if not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded: list[ipaddress.IPv4Address] = []
        if ip.ipv4_mapped is not None:
            embedded.append(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            embedded.append(ip.sixtofour)
        if ip.teredo is not None:
            embedded.extend(ip.teredo)
        if ip in ipaddress.ip_network("64:ff9b::/96"):
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        return all(ip_allowed(v4) for v4 in embedded)
    return True


def _not_allowed(host: str) -> NotAllowedError:
    return NotAllowedError(
        f"cannot download from {_shorten(host, 80)!r}: the host does not resolve to public addresses "
        "(loopback, private, link-local and unspecified addresses are refused unless the server runs with "
        "--allow-local-urls)"
    )


def resolve_checked(host: str, port: int, allow_local: bool) -> list[tuple]:
    """``getaddrinfo`` results for ``host``, every address checked with :func:`ip_allowed` (unless
    ``allow_local``); raises :class:`NotAllowedError` when the host does not resolve or any address is refused."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError):
        raise _not_allowed(host) from None
    if not infos:
        raise _not_allowed(host)
    if not allow_local:
        for info in infos:
            try:
                ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            except ValueError:
                raise _not_allowed(host) from None
            if not ip_allowed(ip):
                raise _not_allowed(host)
    return infos


def _checked_url(url: str, allow_local: bool) -> str:
    """``url`` when it is an http(s) URL to an allowed host; a :class:`RequestError` otherwise (no request
    is made)."""
    if len(url) > 2048:
        raise RequestError(f"url is too long: {len(url)} characters, the limit is 2048")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise RequestError("url contains spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise RequestError(f"url {_shorten(url)!r} is not a valid URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise RequestError(
            f"url {_shorten(url)!r} is not allowed: weights are registered from an http(s):// URL or a path "
            "on the server"
        )
    if not host:
        raise RequestError(f"url {_shorten(url)!r} has no host name")
    if parts.username is not None or parts.password is not None:
        raise RequestError("url must not carry a user name or password")
    resolve_checked(host, port or (443 if parts.scheme.lower() == "https" else 80), allow_local)
    return url


# -- the guarded downloader ------------------------------------------------------------------------
def _guarded_create_connection(address: tuple[str, int], timeout: Any = socket._GLOBAL_DEFAULT_TIMEOUT,
                               source_address: Any = None, *, allow_local: bool) -> socket.socket:
    """``socket.create_connection`` that connects only to addresses :func:`resolve_checked` accepts
    (checked at connect time, so redirects and changed DNS answers are checked too)."""
    host, port = address
    last: OSError | None = None
    for family, socktype, proto, _, sockaddr in resolve_checked(host, port, allow_local):
        sock = socket.socket(family, socktype, proto)
        try:
            if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last or OSError(f"cannot connect to {host}")


class _GuardedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, allow_local: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = functools.partial(_guarded_create_connection, allow_local=allow_local)


class _GuardedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, allow_local: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = functools.partial(_guarded_create_connection, allow_local=allow_local)


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, allow_local: bool) -> None:
        super().__init__()
        self.allow_local = allow_local

    def http_open(self, req: Any) -> Any:
        return self.do_open(functools.partial(_GuardedHTTPConnection, allow_local=self.allow_local), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, allow_local: bool) -> None:
        super().__init__()
        self.allow_local = allow_local

    def https_open(self, req: Any) -> Any:
        return self.do_open(functools.partial(_GuardedHTTPSConnection, allow_local=self.allow_local), req,
                            context=self._context)


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http(s) URLs only (their hosts are checked when connecting)."""

    def http_error_302(self, req: Any, fp: Any, code: int, msg: str, headers: Any) -> Any:
        location = headers.get("location") or headers.get("uri")
        if location:
            newurl = urllib.parse.urljoin(req.full_url, location)
            if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
                raise RequestError(
                    f"the download was redirected to a non-http(s) URL ({_shorten(newurl, 80)!r}), which is not "
                    "allowed"
                )
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _opener(allow_local: bool) -> urllib.request.OpenerDirector:
    """http(s) only, no proxies (a proxy would resolve the host where it cannot be checked)."""
    opener = urllib.request.OpenerDirector()
    for handler in (_HTTPHandler(allow_local), _HTTPSHandler(allow_local), _RedirectHandler(),
                    urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor(),
                    urllib.request.UnknownHandler()):
        opener.add_handler(handler)
    return opener


def fetch_url(url: str, target: Path, max_bytes: int, allow_local: bool = False,
              progress: Callable[[int, int | None], None] | None = None, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``target`` through the guarded opener, at most ``max_bytes``.

    Data go to a ``.part`` file that replaces ``target`` only when complete. Raises
    :class:`NotAllowedError` (a refused address, also after a redirect), :class:`DownloadTooLargeError`,
    :class:`CancelledError` (from ``progress``) or :class:`ModelNotAvailableError` (network or HTTP errors).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.part")
    limit_text = f"{max_bytes / 2**20:.0f} MiB"
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "histosam-serve"})
        with _opener(allow_local).open(request, timeout=timeout) as response, open(tmp, "wb") as out:
            try:
                total = int(response.headers.get("Content-Length") or 0) or None
            except ValueError:
                total = None
            if total is not None and total > max_bytes:
                raise DownloadTooLargeError(
                    f"{_shorten(url)} is {total / 2**20:.0f} MiB, more than the server's download limit of "
                    f"{limit_text} (histosam serve --max-download-gb)"
                )
            done = 0
            if progress is not None:
                progress(0, total)
            while True:
                block = response.read(1 << 20)
                if not block:
                    break
                done += len(block)
                if done > max_bytes:
                    raise DownloadTooLargeError(
                        f"{_shorten(url)} is larger than the server's download limit of {limit_text} "
                        "(histosam serve --max-download-gb)"
                    )
                out.write(block)
                if progress is not None:
                    progress(done, total)
        if done == 0:
            raise ModelNotAvailableError(f"{_shorten(url)} answered with an empty body")
        os.replace(tmp, target)
    except HistosamError:
        raise
    except urllib.error.HTTPError as exc:
        raise ModelNotAvailableError(f"cannot download {_shorten(url)}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, HistosamError):  # our own refusal, wrapped by urllib
            raise reason from None
        raise ModelNotAvailableError(f"cannot download {_shorten(url)}: {reason}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _registry_name(url: str) -> str | None:
    """The histosam registry name published at ``url``, if any (loaded, and downloaded, on first use)."""
    try:
        from histosam.registry.entries import URL_ALIASES
    except ImportError:  # pragma: no cover
        return None
    return URL_ALIASES.get(url)
