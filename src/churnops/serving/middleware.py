"""Pure ASGI middleware of the prediction API: the guard (allowed Host names, the body-size
limit, request metrics) and the bearer token; both answer refusals with the API's error body.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from churnops.observability import ServingMetrics

# NB: Swagger UI's own files, served by the app (FastAPIOffline) and open like /docs.
DOCS_ASSETS = "/docs-assets"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def send_error(
    send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer from pure ASGI middleware with the API's error body, ``{"detail": ...}``."""
    body = orjson.dumps({"detail": detail})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


def host_name(header: bytes) -> str:
    """The name in a Host header, without its port: ``[::1]:8000`` -> ``::1``."""
    text = header.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1:].partition("]")[0]
    return text.rpartition(":")[0] if text.count(":") == 1 else text


class GuardMiddleware:
    """Pure ASGI middleware: refuses unknown Host headers with 400 and oversized bodies with
    413, and records request metrics."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: ServingMetrics,
        max_body_bytes: int,
        allowed_hosts: frozenset[str] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        limit = self.max_body_bytes
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host")
        if self.allowed_hosts is not None and host is not None:
            name = host_name(host)
            if name not in self.allowed_hosts:
                detail = (
                    f"Host {name!r} is not served here; add it to CHURNOPS_API_ALLOWED_HOSTS "
                    "if this API is meant to answer under that name"
                )
                await send_error(send, 400, detail)
                self._observe(scope, 400, start)
                return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(send, int(declared))
            self._observe(scope, 413, start)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise _BodyTooLarge
            return message

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, limited_receive, recording_send)
        except _BodyTooLarge:
            status = 413
            await self._refuse(send, received)
        finally:
            self._observe(scope, status, start)

    async def _refuse(self, send: Send, size: int) -> None:
        detail = (
            f"request body of {size} bytes exceeds the limit of {self.max_body_bytes} bytes; "
            "send fewer customers per request"
        )
        await send_error(send, 413, detail)

    def _observe(self, scope: Scope, status: int, start: float) -> None:
        route = scope.get("route")
        path = getattr(route, "path", "unmatched")
        self.metrics.observe_request(path, scope["method"], status, time.perf_counter() - start)


class BearerTokenMiddleware:
    """Pure ASGI middleware: every route but the probes needs ``Authorization: Bearer <token>``.

    /health and /ready stay open, so load balancers and orchestrators can probe without the
    secret, and so do /docs and /openapi.json. The comparison is constant-time.
    """

    # NB: the docs pages and the OpenAPI document carry field names only (their example is a
    # placeholder when a token is set), so a user can reach "Authorize" without the secret.
    OPEN_PATHS = frozenset({"/health", "/ready", "/docs", "/docs/oauth2-redirect", "/openapi.json"})

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or path in self.OPEN_PATHS
            or path.startswith(DOCS_ASSETS + "/")
            or self._allowed(scope)
        ):
            await self.app(scope, receive, send)
            return
        detail = (
            "missing or wrong bearer token: send the header "
            "Authorization: Bearer <CHURNOPS_API_TOKEN>"
        )
        await send_error(send, 401, detail, [(b"www-authenticate", b"Bearer")])

    def _allowed(self, scope: Scope) -> bool:
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, credentials = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self.token)
