"""The audit trail, as the relay shows it: its signed head, one link's hash, and the export (administrators)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from labrelay.domain.audit import AuditEvent
from labrelay.errors import NotFound, UsageError
from labrelay.http.deps import Services, SignedWhileFrozen, authenticate, call, require_admin
from labrelay.http.openapi import PROBLEMS
from labrelay.relay.audit_export import export_ndjson
from labrelay.wire import NDJSON_CONTENT_TYPE

router = APIRouter(tags=["audit"], responses=PROBLEMS)

MAX_SEQ = 2**62


@router.get("/v1/audit/checkpoint")
async def audit_checkpoint(_caller: SignedWhileFrozen, services: Services) -> dict[str, Any]:
    """The relay's latest signed audit head (also sent with every response, in ``Labrelay-Checkpoint``)."""
    latest = services.auditor.latest
    if latest is None:
        raise NotFound("the audit log is empty")
    return {"checkpoint": latest.to_doc()}


# These two take typed parameters: they authenticate in their body, after FastAPI has validated them (deps).


@router.get("/v1/audit/records/{seq}")  # "record": the protocol's name, kept in the operationId too
async def audit_record_hash(request: Request, seq: int, services: Services) -> dict[str, Any]:
    """The hash of audit link ``seq``, for a client to compare with a checkpoint it holds (no content:
    other parties' links are not the caller's to read)."""
    caller = await authenticate(request, while_frozen=True)
    if not 1 <= seq <= MAX_SEQ:
        raise UsageError("audit records are numbered from 1")
    digest = await call(services.audit_log.hash_at, seq)
    anchor = await call(services.audit_log.checkpoint, "anchor")
    await call(services.auditor.record, AuditEvent.AUDIT_READ, actor=caller.name, seq=seq, found=digest is not None)
    # The anchor is signed: a relay cannot claim a link was pruned without signing where pruning stopped.
    return {"seq": seq, "hash": digest, "anchor": anchor.to_doc() if anchor else None}


@router.get("/v1/audit/export", responses={200: {"content": {NDJSON_CONTENT_TYPE: {}}}})
async def audit_export(request: Request, services: Services, after: int = 0, limit: int = 10_000) -> Response:
    """Audit links after ``after``, as NDJSON for a SIEM (administrators and the authority only)."""
    caller = await authenticate(request, while_frozen=True)
    await require_admin(services, caller, "export")
    if not 0 <= after <= MAX_SEQ or not 1 <= limit <= 100_000:
        raise UsageError("after must be >= 0 and limit between 1 and 100000")
    body = await call(export_ndjson, services.audit_log, after, limit)
    await call(services.auditor.record, AuditEvent.AUDIT_READ, actor=caller.name, after=after, export=True)
    return Response(body, media_type=NDJSON_CONTENT_TYPE)
