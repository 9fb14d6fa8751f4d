"""Prometheus metrics, unauthenticated and out of the OpenAPI document: by default to the relay's own host only."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from labrelay.domain.names import is_loopback_host
from labrelay.errors import NotFound
from labrelay.http.deps import Services, remote
from labrelay.http.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, services: Services) -> Response:
    """Prometheus metrics. By default only to the relay's own host (``metrics`` setting)."""
    access = services.metrics_access
    client = remote(request)
    if access == "off" or (access == "loopback" and not (client and is_loopback_host(client))):
        raise NotFound("no such resource")
    return Response(services.metrics.render(), media_type=METRICS_CONTENT_TYPE)
