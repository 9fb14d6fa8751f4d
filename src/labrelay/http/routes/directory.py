"""The directory: authority-signed entries and revocations, stored verbatim for clients to verify (T3)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from labrelay.domain.audit import AuditEvent
from labrelay.domain.parties import EntryStatus, Role
from labrelay.errors import LabrelayError, PartyRevoked, PermissionDenied, UntrustedEntry, UsageError
from labrelay.http.deps import Edge, Services, Signed, SignedJsonWhileFrozen, authenticate, call, parse_json, read_body
from labrelay.http.models import DirectoryOut, Registered
from labrelay.http.openapi import ENVELOPE_BODY, PROBLEMS, SIGNED
from labrelay.relay.directory import DirectoryService, Enrolment

router = APIRouter(tags=["directory"], responses=PROBLEMS)


@router.get("/v1/directory", response_model=DirectoryOut, description=SIGNED)
async def get_directory(caller: Signed, services: Services) -> DirectoryOut:
    """Every authority-signed entry and revocation, verbatim: clients verify them against their pin."""
    await call(services.auditor.record, AuditEvent.DIRECTORY_READ, actor=caller.name)
    exported = await call(services.directory.export)
    return DirectoryOut(
        entries=[dict(e) for e in exported["entries"]], revocations=[dict(r) for r in exported["revocations"]]
    )


@router.post("/v1/directory/entries", response_model=Registered, status_code=201, openapi_extra=ENVELOPE_BODY)
async def register_entry(request: Request, services: Services) -> Registered:
    """Register an authority-signed entry. The request is signed by the entry's own key (possession), or carried by
    an administrator in force or the authority (offline enrolment: docs/enrolment.md); either way the relay stores
    only an entry the pinned authority signed."""
    body = await read_body(request)
    # The entry names the key that must have signed this request (proof of possession). Nothing about the body is
    # judged before authentication: a request that does not authenticate is refused (and audited) as such,
    # whatever it carries.
    presented = await _presented(services.directory, body)
    enrolling = presented.entry if isinstance(presented, Enrolment) else None
    caller = await authenticate(request, body=body, enrolling=enrolling)
    if not isinstance(presented, Enrolment):
        raise presented  # not JSON, or the authority did not sign it
    if caller.name != presented.entry.name and not (caller.is_authority or caller.role is Role.ADMIN):
        raise PermissionDenied("a party registers its own entry, or an administrator carries it")
    registered, new = await call(services.directory.enrol, presented, caller.name)
    return Registered(name=registered.name, serial=registered.serial, new=new)


async def _presented(directory: DirectoryService, body: bytes) -> Enrolment | LabrelayError:
    """The entry the body carries, verified once; or why it is not one, to be raised after authentication."""
    try:
        return await call(directory.enrolment, parse_json(body))
    except (UsageError, UntrustedEntry) as exc:
        return exc


@router.post("/v1/directory/revocations", response_model=Registered, status_code=201, openapi_extra=ENVELOPE_BODY)
async def register_revocation(signed: SignedJsonWhileFrozen, services: Services, edge: Edge) -> Registered:
    """Register an authority-signed revocation; takes effect on the revoked party's next request."""
    if not signed.caller.is_authority:
        raise PermissionDenied("only the directory authority registers revocations")
    revocation, new = await call(services.directory.revoke, signed.json(), signed.caller.name)
    if (await call(services.directory.resolve, revocation.name)).status is EntryStatus.REVOKED:
        edge.cut(revocation.name, PartyRevoked(f"{revocation.name} is revoked in the directory"))
    return Registered(name=revocation.name, serial=revocation.serial, new=new)
