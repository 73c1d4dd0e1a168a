"""Run the app with uvicorn: in the foreground (the CLI) or in a background thread (tests, benchmarks)."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any


def _config(app: Any, host: str, port: int, log_level: str, access_log: bool = False) -> Any:
    import uvicorn

    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level, workers=1, lifespan="off", access_log=access_log
    )


@contextlib.contextmanager
def running_server(
    app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
) -> Iterator[str]:
    """Serve ``app`` from a thread; yields the base URL (``http://127.0.0.1:<port>``), stops on exit.

    ``port=0`` binds a free port chosen by the OS (the socket is bound here, so there is no race).
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    real_port = sock.getsockname()[1]
    server = uvicorn.Server(_config(app, host, real_port, log_level))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # not the main thread
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{real_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


class RedactFilter(logging.Filter):
    """Replace a secret (the URL-prefix token) in log records by ``***``."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                a.replace(self.secret, "***") if isinstance(a, str) else a for a in record.args
            )
        if isinstance(record.msg, str):
            record.msg = record.msg.replace(self.secret, "***")
        return True


def serve_forever(app: Any, host: str, port: int, log_level: str = "info", secret: str | None = None) -> None:
    """Serve ``app`` in this thread until interrupted (one process, one worker); ``secret`` is kept out of
    the access log."""
    import uvicorn

    server = uvicorn.Server(_config(app, host, port, log_level, access_log=log_level in ("info", "debug")))
    if secret:
        logging.getLogger("uvicorn.access").addFilter(RedactFilter(secret))
    server.run()
