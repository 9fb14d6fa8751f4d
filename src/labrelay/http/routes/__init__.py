"""The relay's routes, one router per area, in the order they are matched and documented.

``health`` and ``metrics`` are unsigned; ``API_ROUTERS`` is the signed /v1 API; the console's pages and JSON routes
are in ``labrelay.http.web``, included between the API and the metrics when the relay has a console.
"""

from __future__ import annotations

from fastapi import APIRouter

from labrelay.http.routes import admin, audit, console, directory, policies, transfers, uploads

API_ROUTERS: tuple[APIRouter, ...] = (
    directory.router,
    policies.router,
    transfers.router,
    uploads.router,
    audit.router,
    admin.router,
    console.router,
)
