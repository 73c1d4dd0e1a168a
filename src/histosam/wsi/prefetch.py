"""Read-ahead for slide regions: a background thread reads the next tiles while the model runs.

:class:`Prefetcher` wraps ``read_region(r0, c0, h, w) -> uint8 h x w x 3`` with a list of the
requests expected, in order. A thread reads them ahead (at most ``ahead`` buffered); a request that
is buffered is served from memory, any other request is read directly, so results never depend on
the prefetching (it only hides I/O and decoding latency). Memory: ``ahead`` tiles.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np

Key = tuple[int, int, int, int]


class Prefetcher:
    def __init__(self, read_region: Callable[[int, int, int, int], np.ndarray], plan: Sequence[Key],
                 ahead: int = 16) -> None:
        self._read = read_region
        self._plan = list(dict.fromkeys(tuple(map(int, k)) for k in plan))
        self._ahead = max(1, int(ahead))
        self._buf: dict[Key, np.ndarray] = {}
        self._taken: set[Key] = set()
        self._cv = threading.Condition()
        self._stop = False
        self._busy: Key | None = None
        self.hits = 0
        self.misses = 0
        self._thread = threading.Thread(target=self._run, name="histosam-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for key in self._plan:
            with self._cv:
                while len(self._buf) >= self._ahead and not self._stop:
                    self._cv.wait(0.5)
                if self._stop:
                    return
                if key in self._taken:
                    continue
                self._busy = key
            try:
                arr = self._read(*key)
            except Exception:  # noqa: BLE001 - the consumer re-reads directly and sees the error
                arr = None
            with self._cv:
                self._busy = None
                if arr is not None and key not in self._taken:
                    self._buf[key] = arr
                self._cv.notify_all()

    def __call__(self, r0: int, c0: int, h: int, w: int) -> np.ndarray:
        key = (int(r0), int(c0), int(h), int(w))
        with self._cv:
            while self._busy == key:
                self._cv.wait(0.5)
            arr = self._buf.pop(key, None)
            self._taken.add(key)
            self._cv.notify_all()
        if arr is not None:
            self.hits += 1
            return arr
        self.misses += 1
        return self._read(*key)

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._buf.clear()
            self._cv.notify_all()
        self._thread.join(timeout=5)
