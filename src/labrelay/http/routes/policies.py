"""Routing policies: the authority's signed policies and withdrawals, served verbatim for clients to verify."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from labrelay.errors import PermissionDenied
from labrelay.http.deps import Services, Signed, SignedJson, SignedJsonWhileFrozen, call
from labrelay.http.models import Envelope, PolicyRegistered, PolicyWithdrawals, PolicyWithdrawn
from labrelay.http.openapi import ENVELOPE_BODY, PROBLEMS

router = APIRouter(tags=["policies"], responses=PROBLEMS)


@router.post("/v1/policies", response_model=PolicyRegistered, status_code=201, openapi_extra=ENVELOPE_BODY)
async def register_policy(signed: SignedJson, services: Services) -> PolicyRegistered:
    """Register a routing policy the authority signed (the authority's own request)."""
    if not signed.caller.is_authority:
        raise PermissionDenied("only the directory authority registers routing policies")
    policy, new = await call(services.policies.register, signed.json(), signed.caller.name)
    return PolicyRegistered(version=policy.version, new=new)


@router.get("/v1/policies/current", response_model=Envelope)
async def current_policy(caller: Signed, services: Services) -> dict[str, Any]:
    """The routing policy with the highest issue, as the authority signed it: clients verify it against their
    pin, its validity and the withdrawals, and refuse one older than any they verified before."""
    return dict(await call(services.policies.envelope, caller.name))


@router.post("/v1/policies/withdrawals", response_model=PolicyWithdrawn, status_code=201, openapi_extra=ENVELOPE_BODY)
async def withdraw_policy(signed: SignedJsonWhileFrozen, services: Services) -> PolicyWithdrawn:
    """Register the authority's signed withdrawal of a policy version: no new transfer is routed under it."""
    if not signed.caller.is_authority:
        raise PermissionDenied("only the directory authority withdraws routing policies")
    withdrawal, new = await call(services.policies.withdraw, signed.json(), signed.caller.name)
    return PolicyWithdrawn(version=withdrawal.version, serial=withdrawal.serial, new=new)


@router.get("/v1/policies/withdrawals", response_model=PolicyWithdrawals)
async def policy_withdrawals(caller: Signed, services: Services) -> PolicyWithdrawals:
    """Every policy withdrawal the authority signed, verbatim: clients verify them against their pin."""
    return PolicyWithdrawals(withdrawals=[dict(w) for w in await call(services.policies.withdrawals, caller.name)])


@router.get("/v1/policies/{version}", response_model=Envelope)
async def policy_version(version: str, caller: Signed, services: Services) -> dict[str, Any]:
    return dict(await call(services.policies.envelope, caller.name, version))
