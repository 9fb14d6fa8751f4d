"""Liveness, for load balancers: unauthenticated, it reveals nothing but the version."""

from __future__ import annotations

from fastapi import APIRouter

from labrelay import __version__
from labrelay.http.models import Health

router = APIRouter()


@router.get("/healthz", response_model=Health, tags=["operations"])
async def healthz() -> Health:
    """Liveness, for load balancers. Unauthenticated; reveals nothing but the version."""
    return Health(status="ok", version=__version__)
