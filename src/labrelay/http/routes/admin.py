"""The kill switch through the API: signed admin commands (administrators and the authority), and the status."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from labrelay.errors import RelayFrozen
from labrelay.http.deps import Edge, Services, SignedJsonWhileFrozen, SignedWhileFrozen, call, require_admin
from labrelay.http.edge import EdgeState
from labrelay.http.openapi import ENVELOPE_BODY, PROBLEMS
from labrelay.http.services import RelayServices
from labrelay.relay.control import CommandResult

router = APIRouter(tags=["admin"], responses=PROBLEMS)


@router.post("/v1/admin/commands", openapi_extra=ENVELOPE_BODY)
async def admin_command(signed: SignedJsonWhileFrozen, services: Services, edge: Edge) -> dict[str, Any]:
    """Run a signed admin command (freeze, unfreeze, lock, unlock, revoke, quarantine). Takes effect on the
    next request, is audited, and runs once."""
    await require_admin(services, signed.caller, "command")
    result = await call(services.control.execute, signed.json(), caller=signed.caller.name, via="api")
    await _take_effect(result, services, edge)
    return result.as_dict()


async def _take_effect(result: CommandResult, services: RelayServices, edge: EdgeState) -> None:
    """In this process, at once: the frozen gauge, and the uploads and downloads the command ends."""
    if result.action in ("freeze", "unfreeze"):
        services.metrics.frozen.set(1 if result.action == "freeze" else 0)
    if result.action == "freeze":
        edge.cut(None, RelayFrozen("the relay was frozen by its administrator"))
    elif result.action in ("lock", "revoke") and result.target is not None:
        why = await call(services.control.refusal, result.target)
        if why is not None:
            edge.cut(result.target, why)


@router.get("/v1/admin/status")
async def admin_status(caller: SignedWhileFrozen, services: Services) -> dict[str, Any]:
    """Frozen or not, locked and revoked parties, quarantined transfers, recent alerts."""
    await require_admin(services, caller, "status")
    status = await call(services.control.status)
    return {**status, "alerts": services.detector.recent_alerts() if services.detector else []}
