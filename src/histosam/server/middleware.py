"""ASGI guard in front of the app: request-body size limit and optional token.

Body limit: a ``Content-Length`` above ``max_body_bytes`` is refused before anything is read (413);
a chunked body is counted while it streams and cut off at the limit (413).

Token: when set, a request must carry ``Authorization: Bearer <token>`` *or* start its path with
``/t/<token>/`` (which is stripped). The second form exists because the QuPath extension sends no
headers: set its server URL to ``http://host:8000/t/<token>/sam/``. Failures answer 401 JSON.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from histosam.errors import BodyTooLargeError

Scope = dict[str, Any]


async def _send_json(send: Any, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """Pure ASGI middleware (no buffering of its own)."""

    def __init__(self, app: Any, max_body_bytes: int, token: str | None = None) -> None:
        self.app = app
        self.max_body_bytes = int(max_body_bytes)
        self.token = token or None

    def _authorised(self, scope: Scope) -> tuple[bool, Scope]:
        if self.token is None:
            return True, scope
        path: str = scope.get("path", "")
        if path.startswith("/t/"):
            given, _, rest = path[3:].partition("/")
            if hmac.compare_digest(given.encode(), self.token.encode()):
                new = dict(scope)
                new["path"] = "/" + rest
                new["raw_path"] = new["path"].encode()
                return True, new
            return False, scope
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, cred = value.decode("latin-1").partition(" ")
                good = hmac.compare_digest(cred.strip().encode(), self.token.encode())
                if scheme.lower() == "bearer" and good:
                    return True, scope
        return False, scope

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ok, scope = self._authorised(scope)
        if not ok:
            await _send_json(send, 401, "missing or wrong token (Authorization: Bearer <token>)")
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    await _send_json(send, 400, "invalid Content-Length header")
                    return
                if length > self.max_body_bytes:
                    await _send_json(send, 413, self._too_large())
                    return
        received = 0
        too_large = False
        replaced = False

        async def limited_receive() -> Any:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    too_large = True
                    raise BodyTooLargeError
            return message

        async def guarded_send(message: Any) -> None:
            # the app may turn the receive error into its own 4xx: answer 413 instead, once
            nonlocal replaced
            if too_large:
                if not replaced:
                    replaced = True
                    await _send_json(send, 413, self._too_large())
                return
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLargeError:
            if not replaced:
                replaced = True
                await _send_json(send, 413, self._too_large())

    def _too_large(self) -> str:
        mb = self.max_body_bytes / 2**20
        return f"request body is larger than the server's limit of {mb:.0f} MiB (see --max-body-mb)"
