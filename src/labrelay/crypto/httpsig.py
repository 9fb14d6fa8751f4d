"""Every request to the relay is signed: HTTP Message Signatures (RFC 9421), Ed25519, with Content-Digest.

Profile (docs/protocol.md):

- one signature, label ``labrelay``, tag ``labrelay-v1``, ``alg="ed25519"``, ``keyid`` = party name (or
  ``@authority``), ``created`` (Unix seconds) and a random ``nonce`` of at least 128 bits;
- covered components: ``@method``, ``@target-uri``, plus ``content-digest`` for any request with a body, plus
  the protocol headers that change a request's meaning (``content-type``, ``upload-offset``, ``range`` …);
- the relay refuses a signature older than its replay window or from the future beyond the clock skew, and a
  nonce it has seen within the window (the nonce store is the caller's: ``labrelay.relay.auth``).

We use the ``http-message-signatures`` library for the signature base and verification, with the clock
injected (its default reads the system time), and check Content-Digest (RFC 9530) incrementally for streamed
bodies.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import http_sf
from http_message_signatures import (
    HTTPMessageSigner,
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    InvalidSignature,
    algorithms,
)
from http_message_signatures.exceptions import HTTPMessageSignaturesException

from labrelay.crypto.keys import SigningKey, VerifyKey
from labrelay.errors import AuthenticationFailed, IntegrityError

LABEL = "labrelay"
TAG = "labrelay-v1"
BASE_COMPONENTS = ("@method", "@target-uri")
MIN_NONCE_LEN = 22  # 128 bits in base64url


class HeaderLines:
    """Header field lines as received (repeated names kept), the view the RFC 9421 library reads."""

    def __init__(self, lines: Iterable[tuple[str, str]], writable: MutableMapping[str, str] | None = None):
        self._lines = list(lines)
        self._writable = writable

    def items(self) -> list[tuple[str, str]]:
        return list(self._lines)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(name.lower() for name, _ in self._lines))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(n.lower() == name.lower() for n, _ in self._lines)

    def get(self, name: str) -> str | None:
        values = [v for n, v in self._lines if n.lower() == name.lower()]
        return ", ".join(values) if values else None

    def __setitem__(self, name: str, value: str) -> None:
        if self._writable is None:
            raise TypeError("read-only headers")
        self._lines = [(n, v) for n, v in self._lines if n.lower() != name.lower()] + [(name, value)]
        self._writable[name] = value

    def __delitem__(self, name: str) -> None:
        if self._writable is None:
            raise TypeError("read-only headers")
        self._lines = [(n, v) for n, v in self._lines if n.lower() != name.lower()]
        self._writable.pop(name, None)


@dataclass
class RequestView:
    """The parts of a request a signature covers: method, absolute URL, header lines."""

    method: str
    url: str
    headers: HeaderLines


class _OneKey(HTTPSignatureKeyResolver):
    def __init__(self, public: VerifyKey | None = None, private: SigningKey | None = None) -> None:
        self._public = public
        self._private = private

    def resolve_public_key(self, key_id: str) -> Any:
        return self._public.crypto_key() if self._public else None

    def resolve_private_key(self, key_id: str) -> Any:
        if self._private is None:
            raise KeyError(key_id)
        return self._private.crypto_key()


# ------------------------------------------------------------------ Content-Digest (RFC 9530)


class DigestCheck:
    """Checks a streamed body against its (signed) Content-Digest without holding the body."""

    def __init__(self, header_value: str | None) -> None:
        if not header_value:
            raise AuthenticationFailed("request body without a Content-Digest")
        try:
            parsed = http_sf.parse(header_value.encode("ascii"), tltype="dictionary")
        except (ValueError, UnicodeEncodeError) as exc:
            raise AuthenticationFailed("malformed Content-Digest") from exc
        member = parsed.get("sha-256") if isinstance(parsed, dict) else None
        if not isinstance(member, tuple) or not isinstance(member[0], bytes) or len(member[0]) != 32:
            raise AuthenticationFailed("Content-Digest must carry a sha-256 member")
        self._expected = member[0]
        self._hash = hashlib.sha256()
        self.size = 0

    def update(self, data: bytes) -> None:
        self._hash.update(data)
        self.size += len(data)

    def verify(self) -> None:
        if not hmac.compare_digest(self._hash.digest(), self._expected):
            raise IntegrityError("request body does not match its Content-Digest")


def content_digest_of(reader: Any, length: int, piece: int = 1 << 20) -> str:
    """The Content-Digest field value (``sha-256=:…:``) of the next ``length`` bytes of ``reader``, read in pieces
    so that a large upload chunk never has to sit in memory to be signed."""
    digest = hashlib.sha256()
    left = length
    while left > 0:
        block = reader.read(min(piece, left))
        if not block:
            raise IntegrityError("file ended before the declared length")
        digest.update(block)
        left -= len(block)
    return str(http_sf.ser({"sha-256": (digest.digest(), {})}))


# ------------------------------------------------------------------ signing, on clients


def new_nonce() -> str:
    return secrets.token_urlsafe(18)  # 144 bits


def sign_request(
    method: str,
    url: str,
    headers: MutableMapping[str, str],
    body: bytes | None,
    *,
    keyid: str,
    key: SigningKey,
    now: datetime,
    extra_components: Sequence[str] = (),
    digest: str | None = None,
) -> None:
    """Add Content-Digest, Signature-Input and Signature to ``headers``.

    The digest is computed from ``body`` by the library, or given precomputed as ``digest`` (``body`` None) for a
    body that is streamed from a file.
    """
    components = list(BASE_COMPONENTS)
    if digest is not None:
        if body is not None:
            raise ValueError("give the body or its digest, not both")
        headers["Content-Digest"] = digest
        components.append("content-digest")
    lowered = {k.lower() for k in headers}
    for name in extra_components:
        if name.lower() in lowered:
            components.append(name.lower())
    view = RequestView(method.upper(), url, HeaderLines(headers.items(), writable=headers))
    signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=_OneKey(private=key))
    signer.sign(
        view,
        key_id=keyid,
        created=now,
        nonce=new_nonce(),
        label=LABEL,
        tag=TAG,
        covered_component_ids=components,
        body=body,
        use_existing_digest=digest is not None,
    )


# ------------------------------------------------------------------ verification, on the relay


@dataclass(frozen=True, slots=True)
class VerifiedRequest:
    keyid: str
    nonce: str
    created: datetime
    covered: Mapping[str, str]


def claimed_keyid(headers: HeaderLines) -> str:
    """The key id a request claims, read before verification to look the key up. Not yet trusted."""
    raw = headers.get("signature-input")
    if not raw:
        raise AuthenticationFailed("unsigned request: every request to the relay must be signed (RFC 9421)")
    try:
        parsed = http_sf.parse(raw.encode("ascii"), tltype="dictionary")
    except (ValueError, UnicodeEncodeError) as exc:
        raise AuthenticationFailed("malformed Signature-Input") from exc
    if not isinstance(parsed, dict) or list(parsed) != [LABEL]:
        raise AuthenticationFailed(f"expected exactly one signature labelled {LABEL!r}")
    member = parsed[LABEL]
    params: Any = member[1] if isinstance(member, tuple) and len(member) == 2 else None
    keyid = params.get("keyid") if isinstance(params, dict) else None
    if not isinstance(keyid, str) or not keyid or len(keyid) > 80:
        raise AuthenticationFailed("signature without a usable keyid")
    return keyid


class _ClockedVerifier(HTTPMessageVerifier):
    """The library's verifier, reading time from our clock instead of the system's."""

    def __init__(self, now: datetime, max_age: timedelta, skew: timedelta, key: VerifyKey) -> None:
        super().__init__(signature_algorithm=algorithms.ED25519, key_resolver=_OneKey(public=key))
        self._now = now
        self._max_age = max_age
        self.max_clock_skew = skew

    def validate_created_and_expires(self, sig_input: Any, max_age: Any = None) -> None:
        created_param = sig_input.params.get("created")
        if type(created_param) is not int:
            raise InvalidSignature('signature needs an integer "created" parameter')
        created = datetime.fromtimestamp(created_param, tz=UTC)
        if created > self._now + self.max_clock_skew:
            raise InvalidSignature("signature created in the future")
        if created + self._max_age < self._now - self.max_clock_skew:
            raise InvalidSignature("signature older than the replay window")
        expires = sig_input.params.get("expires")
        if expires is not None and (
            type(expires) is not int or datetime.fromtimestamp(expires, tz=UTC) < self._now - self.max_clock_skew
        ):
            raise InvalidSignature("signature expired")


def verify_request(
    view: RequestView,
    key: VerifyKey,
    *,
    now: datetime,
    window: timedelta,
    skew: timedelta,
    require_components: Sequence[str],
) -> VerifiedRequest:
    """Verify the request's one ``labrelay`` signature with ``key``; raise ``AuthenticationFailed`` otherwise.

    The body is not read here: when ``content-digest`` is required, the caller checks the body against the
    (now authenticated) Content-Digest header, with ``DigestCheck``.
    """
    verifier = _ClockedVerifier(now, window, skew, key)
    try:
        results = verifier.verify(
            view,
            max_age=window,
            expect_tag=TAG,
            expect_label=LABEL,
            require_components=list(BASE_COMPONENTS) + list(require_components),
        )
    except (InvalidSignature, HTTPMessageSignaturesException) as exc:
        detail = str(exc) or "the signature does not match the request or the signer's key"
        raise AuthenticationFailed(f"request signature refused: {detail}") from exc
    except Exception as exc:
        raise AuthenticationFailed(f"request signature refused: {type(exc).__name__}") from exc
    if len(results) != 1:
        raise AuthenticationFailed("expected exactly one verified signature")
    result = results[0]
    if result.parameters.get("alg") not in (None, "ed25519"):
        raise AuthenticationFailed("signature algorithm must be ed25519")
    nonce = result.nonce
    if not isinstance(nonce, str) or len(nonce) < MIN_NONCE_LEN or len(nonce) > 128:
        raise AuthenticationFailed("signature without a nonce of at least 128 bits")
    created = datetime.fromtimestamp(int(result.parameters["created"]), tz=UTC)
    return VerifiedRequest(
        keyid=str(result.parameters["keyid"]), nonce=nonce, created=created, covered=result.covered_components
    )
