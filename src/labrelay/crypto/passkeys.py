"""Passkeys (WebAuthn) for the console, through py_webauthn: the ceremonies' options and the checks of their answers.

The relay is the relying party. Its id (``rp_id``) is the host name of the console's origin; browsers only let a
credential made for one host sign for that host, so a page on another origin cannot use it. Every check here fails
closed: a response that does not verify raises ``AuthenticationFailed``, whatever the library's reason.

User verification is required (the authenticator checked a PIN or a biometric), and resident keys are
required, so that sign-in starts without typing a name.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from labrelay.errors import AuthenticationFailed

CHALLENGE_BYTES = 32
TIMEOUT_MS = 120_000
COMMAND_DOMAIN = b"labrelay-console-command-v1\n"
SIGNIN_DOMAIN = b"labrelay-console-signin-v1\n"
_SEALED = re.compile(r"v1\.([0-9]{1,15})\.([A-Za-z0-9_-]{43})\.([A-Za-z0-9_-]{43})")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise AuthenticationFailed("malformed base64url in a passkey response") from None


@dataclass(frozen=True, slots=True)
class Relying:
    """Who the relay is to the browser: its WebAuthn id and the one origin it accepts."""

    rp_id: str
    origin: str
    name: str = "labrelay"


@dataclass(frozen=True, slots=True)
class NewPasskey:
    credential_id: str  # base64url
    public_key: bytes  # COSE
    sign_count: int


@contextlib.contextmanager
def _refused(what: str) -> Iterator[None]:
    """Whatever the library objects to (or chokes on: absurd nesting), the answer is a refusal, named by type only."""
    try:
        yield
    except (WebAuthnException, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise AuthenticationFailed(f"passkey {what} refused: {type(exc).__name__}") from None


def registration_options(rp: Relying, party: str, user_id: bytes, challenge: bytes, existing: list[str]) -> str:
    """Options for ``navigator.credentials.create`` (JSON), for ``party``."""
    options = generate_registration_options(
        rp_id=rp.rp_id,
        rp_name=rp.name,
        user_name=party,
        user_id=user_id,
        user_display_name=party,
        challenge=challenge,
        timeout=TIMEOUT_MS,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.REQUIRED,
            user_verification=UserVerificationRequirement.REQUIRED,
        ),
        exclude_credentials=[PublicKeyCredentialDescriptor(id=unb64url(c)) for c in existing],
    )
    return str(options_to_json(options))


def verify_registration(rp: Relying, credential: dict[str, Any], challenge: bytes) -> NewPasskey:
    with _refused("registration"):
        verified = verify_registration_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=rp.rp_id,
            expected_origin=rp.origin,
            require_user_verification=True,
        )
    return NewPasskey(b64url(verified.credential_id), verified.credential_public_key, verified.sign_count)


def authentication_options(rp: Relying, challenge: bytes, allowed: list[str]) -> str:
    """Options for ``navigator.credentials.get`` (JSON). ``allowed`` empty: any passkey of this relay."""
    options = generate_authentication_options(
        rp_id=rp.rp_id,
        challenge=challenge,
        timeout=TIMEOUT_MS,
        allow_credentials=[PublicKeyCredentialDescriptor(id=unb64url(c)) for c in allowed],
        user_verification=UserVerificationRequirement.REQUIRED,
    )
    return str(options_to_json(options))


def credential_id_of(credential: dict[str, Any]) -> str:
    """The (claimed, not yet verified) credential id of an assertion, to look its key up."""
    raw = credential.get("rawId")
    if not isinstance(raw, str) or not 16 <= len(raw) <= 1400:
        raise AuthenticationFailed("passkey response without a credential id")
    return b64url(unb64url(raw))


def verify_assertion(
    rp: Relying, credential: dict[str, Any], challenge: bytes, public_key: bytes, sign_count: int
) -> int:
    """Check an assertion made by the passkey whose COSE key is ``public_key``. Returns the new sign count."""
    with _refused("assertion"):
        verified = verify_authentication_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=rp.rp_id,
            expected_origin=rp.origin,
            credential_public_key=public_key,
            credential_current_sign_count=sign_count,
            require_user_verification=True,
        )
    return int(verified.new_sign_count)


def command_challenge(payload: dict[str, Any]) -> bytes:
    """The challenge a passkey signs to approve one admin command: a hash of the command itself, so the signature
    covers exactly what runs (compact, key-sorted JSON, like the audit checkpoints)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(COMMAND_DOMAIN + text.encode("utf-8")).digest()


# ------------------------------------------------------------------ sign-in challenges the relay keeps nothing of


def _signin_mac(key: bytes, rp: Relying, body: str) -> bytes:
    message = SIGNIN_DOMAIN + f"{rp.rp_id}\n{rp.origin}\n{body}".encode()
    return hmac.new(key, message, hashlib.sha256).digest()


def seal_challenge(key: bytes, rp: Relying, challenge: bytes, expires: int) -> str:
    """A sign-in challenge as the browser holds it (in a cookie), so that the relay holds nothing for a sign-in
    anyone may start: ``v1.EXPIRES.CHALLENGE.MAC``, the expiry in Unix seconds, the challenge in base64url, and an
    HMAC-SHA-256 over both and the relying party under ``key``, a secret only the relay's processes hold."""
    body = f"v1.{expires}.{b64url(challenge)}"
    return f"{body}.{b64url(_signin_mac(key, rp, body))}"


def open_challenge(key: bytes, rp: Relying, sealed: str | None, now: int) -> tuple[bytes, int]:
    """(challenge, expiry) of a sign-in challenge ``seal_challenge`` sealed with ``key`` for ``rp``, not expired at
    ``now`` (Unix seconds); anything else is refused."""
    if not sealed:
        raise AuthenticationFailed("no passkey sign-in in progress (the sign-in cookie is missing); start again")
    match = _SEALED.fullmatch(sealed)
    if match is None:
        raise AuthenticationFailed("malformed sign-in challenge; start again")
    body, mac = sealed.rsplit(".", 1)
    if not hmac.compare_digest(unb64url(mac), _signin_mac(key, rp, body)):
        raise AuthenticationFailed("this sign-in challenge was not issued by this relay; start again")
    expires = int(match.group(1))
    if expires <= now:
        raise AuthenticationFailed("passkey sign-in challenge expired; start again")
    return unb64url(match.group(2)), expires
