"""What every response the routes make carries, and what it leaves behind: one pass, one function per job.

- ``harden``: no caching, no sniffing, no referrer, the content security policy (labrelay.http.web);
- ``stamp_checkpoint``: the relay's latest signed audit head, to a proven signer only;
- ``observe``: the request's metrics and its log line.

One Starlette middleware runs them (each one would wrap the request's body and the response in a task group of its
own); it sits inside ``EdgeGuard``, whose refusals are answered before any of this.
"""

from __future__ import annotations

import time

import structlog
from fastapi import Request, Response
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.types import ASGIApp

from labrelay.crypto.checkpoints import encode_header
from labrelay.http.metrics import RelayMetrics
from labrelay.http.web.routes import security_headers
from labrelay.relay.auditor import Auditor
from labrelay.wire import CHECKPOINT_HEADER

log = structlog.get_logger("labrelay.http")


def harden(response: Response) -> None:
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    security_headers(response)


def stamp_checkpoint(request: Request, response: Response, auditor: Auditor) -> None:
    latest = auditor.latest
    if latest is not None and getattr(request.state, "authenticated", False):
        # The relay's latest signed audit head: clients keep it, and can later prove what the log said.
        response.headers[CHECKPOINT_HEADER] = encode_header(latest)


def observe(request: Request, status: int, elapsed: float, metrics: RelayMetrics) -> None:
    route = getattr(request.scope.get("route"), "path", "unmatched")
    metrics.observe_request(request.method, route, status, elapsed)
    log.info("request", method=request.method, path=route, status=status, ms=round(elapsed * 1000, 1))


class ResponseMiddleware(BaseHTTPMiddleware):
    def __init__(self, app: ASGIApp, *, auditor: Auditor, metrics: RelayMetrics) -> None:
        super().__init__(app)
        self.auditor = auditor
        self.metrics = metrics

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        harden(response)
        stamp_checkpoint(request, response, self.auditor)
        observe(request, response.status_code, time.perf_counter() - started, self.metrics)
        return response
