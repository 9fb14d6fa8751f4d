"""The console's passkeys, bound through the signed API: a party in force signs with its own key to bind a
passkey it will sign in to the console with (labrelay.http.web serves the console itself)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from labrelay.errors import PermissionDenied, UsageError
from labrelay.http.deps import Console, Services, SignedJson, call, relying_party, remote
from labrelay.http.openapi import PROBLEMS
from labrelay.relay.auth import Caller
from labrelay.wire import JSON_CONTENT_TYPE

router = APIRouter(tags=["console"], responses=PROBLEMS)


def _not_the_authority(caller: Caller) -> None:
    if caller.is_authority:
        raise PermissionDenied("the directory authority does not sign in to the console")


@router.post("/v1/console/passkeys/options")
async def passkey_options(request: Request, console: Console, signed: SignedJson, services: Services) -> Response:
    """WebAuthn creation options to bind a new passkey to the signer (an admin, DPO or auditor in force)."""
    _not_the_authority(signed.caller)
    rp = relying_party(request, services.public_url)
    options = await call(console.registration_options, signed.caller.name, rp, remote(request))
    return Response(options, media_type=JSON_CONTENT_TYPE)


@router.post("/v1/console/passkeys")
async def passkey_register(
    request: Request, console: Console, signed: SignedJson, services: Services
) -> dict[str, Any]:
    """Bind the passkey the browser just made (``{"credential": PublicKeyCredential JSON}``) to the signer."""
    _not_the_authority(signed.caller)
    credential = signed.json().get("credential")
    if not isinstance(credential, dict):
        raise UsageError("request without a passkey credential")
    rp = relying_party(request, services.public_url)
    credential_id = await call(console.register, signed.caller.name, credential, rp, remote(request))
    return {"party": signed.caller.name, "credential_id": credential_id}
