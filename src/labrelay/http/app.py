"""The relay's FastAPI application. ``create_app(services)`` builds it; ``labrelay.runtime`` supplies services.

Every route under /v1 authenticates its request (RFC 9421) before doing anything, reads at most a bounded body,
and hands over to a service in a worker thread. Upload chunks (tus 1.0 core, PATCH) and payload downloads are
streamed: a 300 MB payload never sits in the relay's memory. The routes are in ``routes/`` (one router per area),
their plumbing in ``deps``, the answers to errors in ``errors``, what runs around the requests in ``lifespan``.
"""

from __future__ import annotations

from fastapi import FastAPI

from labrelay import __version__
from labrelay.http.edge import EdgeGuard, EdgeState
from labrelay.http.errors import add_error_handlers
from labrelay.http.lifespan import lifespan
from labrelay.http.middleware import ResponseMiddleware
from labrelay.http.routes import API_ROUTERS, health, metrics
from labrelay.http.services import RelayServices
from labrelay.http.web.routes import add_web


def create_app(services: RelayServices) -> FastAPI:
    app = FastAPI(
        title="labrelay",
        version=__version__,
        summary="End-to-end encrypted relay for lab results. Every /v1 request is signed (RFC 9421).",
        docs_url=None,  # Swagger UI would load scripts from a CDN; the console (http/web) ships its own pages
        redoc_url=None,
        lifespan=lifespan,
        redirect_slashes=False,  # a redirect would be built from the Host header; clients use the exact paths
    )
    edge = EdgeState(services.edge)
    app.state.services = services
    app.state.edge = edge
    services.metrics.watch_edge(edge)
    add_error_handlers(app)
    app.include_router(health.router)
    for router in API_ROUTERS:
        app.include_router(router)
    if services.console is not None:
        add_web(app)
    app.include_router(metrics.router)
    app.add_middleware(ResponseMiddleware, auditor=services.auditor, metrics=services.metrics)
    app.add_middleware(EdgeGuard, state=edge)  # added last: outermost, before anything parses the request
    return app
