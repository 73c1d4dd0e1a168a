"""Resumable per-chunk result store: one SQLite file next to a slide's outputs.

Each finished chunk is committed in its own transaction (``chunks(idx, n, data)``, ``data`` =
zlib-compressed JSON list of records), so a killed run loses at most the chunks in flight and a
rerun skips every committed chunk. ``meta`` holds the plan fingerprint: a store written with other
parameters is refused (:class:`StoreMismatchError`) instead of silently mixing results. Only the
driver process writes (Dask workers return records to it).
"""

from __future__ import annotations

import json
import os
import sqlite3
import zlib
from collections.abc import Iterator
from pathlib import Path

from histosam.errors import StoreMismatchError


class ChunkStore:
    """SQLite store of chunk records, keyed by chunk index (raster order)."""

    def __init__(self, path: str | os.PathLike, fingerprint: dict, overwrite: bool = False) -> None:
        self.path = Path(path)
        if overwrite and self.path.exists():
            self.path.unlink()
        self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        self._db.execute("CREATE TABLE IF NOT EXISTS chunks (idx INTEGER PRIMARY KEY, n INTEGER, data BLOB)")
        fp = json.dumps(fingerprint, sort_keys=True)
        row = self._db.execute("SELECT value FROM meta WHERE key='fingerprint'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('fingerprint', ?)", (fp,))
        elif row[0] != fp:
            self._db.close()
            from histosam.io.runkey import changed_keys

            try:
                diff = changed_keys(json.loads(row[0]), fingerprint)
            except ValueError:
                diff = ["(unreadable fingerprint)"]
            shown = ", ".join(diff[:6]) + (f" and {len(diff) - 6} more" if len(diff) > 6 else "")
            raise StoreMismatchError(
                f"{self.path} holds chunks computed with another model, slide or parameters (changed: {shown}); "
                f"rerun with --overwrite or choose another output folder"
            )

    def done(self) -> set[int]:
        """Indices of committed chunks."""
        return {r[0] for r in self._db.execute("SELECT idx FROM chunks")}

    def put(self, idx: int, records: list[dict]) -> None:
        """Commit one chunk's records atomically (replaces an earlier commit of the same chunk)."""
        blob = zlib.compress(json.dumps(records, separators=(",", ":")).encode(), 6)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("INSERT OR REPLACE INTO chunks VALUES (?, ?, ?)", (int(idx), len(records), blob))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def count(self) -> int:
        """Total number of stored objects."""
        return int(self._db.execute("SELECT COALESCE(SUM(n), 0) FROM chunks").fetchone()[0])

    def iter_chunks(self) -> Iterator[tuple[int, list[dict]]]:
        """``(idx, records)`` in chunk raster order, one chunk in memory at a time."""
        cur = self._db.execute("SELECT idx FROM chunks ORDER BY idx")
        for (idx,) in cur.fetchall():
            blob = self._db.execute("SELECT data FROM chunks WHERE idx=?", (idx,)).fetchone()[0]
            yield idx, json.loads(zlib.decompress(blob))

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else row[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ChunkStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
