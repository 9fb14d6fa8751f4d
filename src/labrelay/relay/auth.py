"""Request authentication: who signed this request, and may they still?

There are no passwords and no bearer tokens. A request is accepted only if its RFC 9421 signature verifies with
the Ed25519 key of a party whose directory entry is in force now (or the authority's pinned key), within the
replay window, with a nonce this signer has not used before. Every refusal is an audit event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from labrelay.crypto.httpsig import RequestView, claimed_keyid, verify_request
from labrelay.crypto.keys import VerifyKey
from labrelay.domain.audit import AuditEvent, Outcome
from labrelay.domain.names import AUTHORITY_KEYID
from labrelay.domain.parties import EntryStatus, PartyEntry, Role
from labrelay.errors import AuthenticationFailed, LabrelayError, PartyRevoked, ReplayDetected
from labrelay.ports import Clock, NonceStore
from labrelay.relay.auditor import Auditor
from labrelay.relay.directory import DirectoryService


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated signer: a party in force, or the directory authority."""

    name: str
    entry: PartyEntry | None

    @property
    def is_authority(self) -> bool:
        return self.entry is None

    @property
    def role(self) -> Role | None:
        return self.entry.role if self.entry else None


class Authenticator:
    def __init__(
        self,
        directory: DirectoryService,
        nonces: NonceStore,
        auditor: Auditor,
        clock: Clock,
        authority: VerifyKey,
        window: timedelta,
        skew: timedelta,
    ) -> None:
        self._directory = directory
        self._nonces = nonces
        self._audit = auditor
        self._clock = clock
        self._authority = authority
        self._window = window
        self._skew = skew

    def authenticate(
        self,
        view: RequestView,
        *,
        has_body: bool,
        extra_components: Sequence[str] = (),
        enrolling: PartyEntry | None = None,
        remote: str | None = None,
    ) -> Caller:
        """The verified caller, or an audited ``SecurityError``.

        ``enrolling`` is the (authority-signed, already verified) entry a party presents to register itself: its
        own key then proves possession of the private key the entry names.
        """
        claimed: str | None = None
        try:
            claimed = claimed_keyid(view.headers)
            caller, key = self._key_for(claimed, enrolling)
            # A protocol header that is present must be signed; one that is absent cannot be altered.
            required = [c for c in extra_components if c in view.headers]
            if has_body:
                required.append("content-digest")
            verified = verify_request(
                view,
                key,
                now=self._clock.now(),
                window=self._window,
                skew=self._skew,
                require_components=required,
            )
            if not self._nonces.remember(verified.keyid, verified.nonce, verified.created):
                raise ReplayDetected("replayed request: this signature's nonce was already used")
        except LabrelayError as exc:
            event = AuditEvent.AUTH_REPLAY if isinstance(exc, ReplayDetected) else AuditEvent.AUTH_FAILURE
            self._audit.record(
                event,
                outcome=Outcome.REFUSED,
                actor=claimed,
                reason=exc.code,
                method=view.method,
                remote=remote,
            )
            raise
        self._audit.record(AuditEvent.AUTH_SUCCESS, actor=caller.name, method=view.method, remote=remote)
        return caller

    def _key_for(self, keyid: str, enrolling: PartyEntry | None) -> tuple[Caller, VerifyKey]:
        if keyid == AUTHORITY_KEYID:
            return Caller(AUTHORITY_KEYID, None), self._authority
        if enrolling is not None and keyid == enrolling.name:
            return Caller(enrolling.name, enrolling), VerifyKey.from_b64(enrolling.signing_key)
        resolution = self._directory.resolve(keyid)
        if resolution.status is EntryStatus.ACTIVE and resolution.entry is not None:
            return Caller(keyid, resolution.entry), VerifyKey.from_b64(resolution.entry.signing_key)
        if resolution.status is EntryStatus.REVOKED:
            raise PartyRevoked(f"signer {keyid!r} is revoked")
        if resolution.status is EntryStatus.UNKNOWN:
            raise AuthenticationFailed(f"unknown signer {keyid[:64]!r}: no directory entry")
        raise AuthenticationFailed(f"signer {keyid!r} has no directory entry in force ({resolution.status.value})")

    def prune_nonces(self) -> int:
        """Forget nonces that fell out of the replay window (they would be refused as stale anyway)."""
        return self._nonces.prune(self._clock.now() - self._window - 2 * self._skew)
