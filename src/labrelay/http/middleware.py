"""What every response the routes make carries, and what it leaves behind: one pass, one function per job.

- ``harden``: no caching, no sniffing, no referrer, the content security policy (labrelay.http.web);
- ``stamp_checkpoint``: the relay's latest signed audit head, to a proven signer only;
- ``observe``: the request's metrics and its log line.

One plain ASGI middleware runs them, on the response's headers as they are sent; it sits inside ``EdgeGuard``, whose
refusals are answered before any of this.
"""

from __future__ import annotations

import time

import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labrelay.crypto.checkpoints import encode_header
from labrelay.http.metrics import RelayMetrics
from labrelay.http.web.routes import security_headers
from labrelay.relay.auditor import Auditor
from labrelay.wire import CHECKPOINT_HEADER

log = structlog.get_logger("labrelay.http")


def harden(headers: MutableHeaders) -> None:
    headers.setdefault("Cache-Control", "no-store")
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    security_headers(headers)


def stamp_checkpoint(scope: Scope, headers: MutableHeaders, auditor: Auditor) -> None:
    latest = auditor.latest
    if latest is not None and scope.get("state", {}).get("authenticated", False):
        # The relay's latest signed audit head: clients keep it, and can later prove what the log said.
        headers[CHECKPOINT_HEADER] = encode_header(latest)


def observe(scope: Scope, status: int, elapsed: float, metrics: RelayMetrics) -> None:
    route = getattr(scope.get("route"), "path", "unmatched")
    method = scope["method"]
    metrics.observe_request(method, route, status, elapsed)
    log.info("request", method=method, path=route, status=status, ms=round(elapsed * 1000, 1))


class ResponseMiddleware:
    """A plain ASGI middleware: it edits the response's headers as they are sent and observes the status, with no
    task group, stream or Request object of its own per request (Starlette's ``BaseHTTPMiddleware`` made each:
    about 4% of the relay's CPU under a burst of labs, decision 0027)."""

    def __init__(self, app: ASGIApp, *, auditor: Auditor, metrics: RelayMetrics) -> None:
        self.app = app
        self.auditor = auditor
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the caller meets if the application raises before it answers

        async def finished(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                harden(headers)
                stamp_checkpoint(scope, headers, self.auditor)
            await send(message)

        try:
            await self.app(scope, receive, finished)
        finally:
            observe(scope, status, time.perf_counter() - started, self.metrics)
