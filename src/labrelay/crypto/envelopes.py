"""Signed objects: a JSON payload, its signer's name, and an Ed25519 signature.

The signature covers ``b"labrelay-signed-v1\\n" + type + b"\\n" + JCS(payload)``, where JCS is RFC 8785 canonical
JSON and ``type`` is the payload's own ``type`` field (``party-entry``, ``transfer-manifest``…): a signature made
for one kind of object can never be replayed as another (a purpose string, as magic-wormhole separates keys).

An envelope on the wire::

    {"payload": {...}, "signer": "lab-paris-01", "alg": "ed25519", "sig": "<base64url>"}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import rfc8785

from labrelay.crypto.keys import SigningKey, VerifyKey, b64u, unb64u
from labrelay.errors import IntegrityError, LabrelayError

_PREFIX = b"labrelay-signed-v1\n"
MAX_ENVELOPE_BYTES = 16 * 1024


def canonical(payload: Mapping[str, Any]) -> bytes:
    """RFC 8785 (JCS) canonical JSON."""
    try:
        return rfc8785.dumps(dict(payload))
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise IntegrityError(f"payload cannot be canonicalised: {exc}") from exc


def _message(payload: Mapping[str, Any]) -> bytes:
    kind = payload.get("type")
    if not isinstance(kind, str) or not kind.isascii() or not kind:
        raise IntegrityError("signed payload has no type")
    return _PREFIX + kind.encode("ascii") + b"\n" + canonical(payload)


def sign_envelope(payload: Mapping[str, Any], key: SigningKey, signer: str) -> dict[str, Any]:
    return {
        "payload": dict(payload),
        "signer": signer,
        "alg": "ed25519",
        "sig": b64u(key.sign(_message(payload))),
    }


def signed_parts(envelope: object) -> dict[str, Any]:
    """Only the signed envelope's own fields (payload, signer, alg, sig): what a relay stores and serves, so that
    no unsigned extra field rides along with a signed object."""
    payload = envelope_payload(envelope)
    assert isinstance(envelope, Mapping)  # noqa: S101 - envelope_payload checked it; this tells mypy
    return {
        "payload": dict(payload),
        "signer": envelope.get("signer"),
        "alg": envelope.get("alg"),
        "sig": envelope.get("sig"),
    }


def envelope_signer(envelope: object) -> str:
    """The claimed signer (not yet verified), to look up its key."""
    signer = envelope.get("signer") if isinstance(envelope, Mapping) else None
    if not isinstance(signer, str) or not signer:
        raise IntegrityError("signed object without a signer")
    return signer


def envelope_payload(envelope: object) -> Mapping[str, Any]:
    """The payload (not yet verified)."""
    payload = envelope.get("payload") if isinstance(envelope, Mapping) else None
    if not isinstance(payload, Mapping):
        raise IntegrityError("signed object without a payload")
    return payload


def verify_envelope(
    envelope: object,
    expected_type: str,
    key: VerifyKey,
    error: type[LabrelayError] = IntegrityError,
) -> Mapping[str, Any]:
    """The payload, if ``envelope`` is a well-formed ``expected_type`` object signed by ``key``; else ``error``."""
    try:
        payload = envelope_payload(envelope)
        if payload.get("type") != expected_type:
            raise IntegrityError(f"expected a {expected_type}, got {str(payload.get('type'))[:40]!r}")
        assert isinstance(envelope, Mapping)  # noqa: S101 - envelope_payload checked it; this tells mypy
        if envelope.get("alg") != "ed25519":
            raise IntegrityError("unsupported signature algorithm")
        sig = envelope.get("sig")
        if not isinstance(sig, str):
            raise IntegrityError("signed object without a signature")
        key.verify(unb64u(sig), _message(payload))
    except IntegrityError as exc:
        raise error(f"{expected_type} refused: {exc.message}") from exc
    return payload
