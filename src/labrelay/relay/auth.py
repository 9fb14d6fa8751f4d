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
from labrelay.domain.names import AUTHORITY_KEYID, check_party_name
from labrelay.domain.parties import EntryStatus, PartyEntry, Role
from labrelay.errors import AuthenticationFailed, LabrelayError, PartyRevoked, ReplayDetected, UsageError
from labrelay.ports import Clock, NonceStore
from labrelay.relay.auditor import Auditor
from labrelay.relay.control import ControlService
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


REFUSED = "request signature refused"
REFUSED_HINT = "check that this party is enrolled with this relay, that it signs with its own key, and the clock"


def _why(detail: str) -> str:
    """The audited reason for a signature that did not verify, from a fixed vocabulary (never request text)."""
    lowered = detail.lower()
    for needle, reason in (
        ("older", "stale"),
        ("future", "future"),
        ("nonce", "no-nonce"),
        ("required component", "coverage"),
        ("expired", "expired-signature"),
    ):
        if needle in lowered:
            return reason
    return "bad-signature"


def _printable_keyid(keyid: str | None) -> str | None:
    """The claimed key id, for the audit trail, only if it has the shape of a party name or the authority's id."""
    if keyid is None:
        return None
    if keyid == AUTHORITY_KEYID:
        return keyid
    try:
        return check_party_name(keyid)
    except UsageError:
        return "?"


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
        control: ControlService | None = None,
    ) -> None:
        self._control = control
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
        route: str | None = None,
    ) -> Caller:
        """The verified caller, or an audited ``SecurityError``.

        Until a caller has proved that it holds the key its request names, every refusal reads the same
        (``REFUSED``), so that probing teaches nothing about which parties exist or are revoked; the audit trail
        keeps the precise reason. ``enrolling`` is the authority-signed entry a party presents to register
        itself: its own key then proves possession of the private key the entry names.
        """
        claimed: str | None = None
        why = "unsigned"
        try:
            claimed = claimed_keyid(view.headers)
            caller, key, status = self._key_for(claimed, enrolling)
            if key is None:
                why = "unknown-signer"
                raise AuthenticationFailed(REFUSED, hint=REFUSED_HINT)
            # A protocol header that is present must be signed; one that is absent cannot be altered.
            required = [c for c in extra_components if c in view.headers]
            if has_body:
                required.append("content-digest")
            try:
                verified = verify_request(
                    view,
                    key,
                    now=self._clock.now(),
                    window=self._window,
                    skew=self._skew,
                    require_components=required,
                )
            except AuthenticationFailed as exc:
                why = _why(exc.message)
                raise AuthenticationFailed(REFUSED, hint=REFUSED_HINT) from exc
            # The signature verifies: its nonce is spent now, whatever is decided next, so that a copy of a request
            # refused while its signer was locked cannot be replayed once the lock is lifted.
            if not self._nonces.remember(verified.keyid, verified.nonce, verified.created):
                why = "replay"
                raise ReplayDetected("replayed request: this signature's nonce was already used")
            # The caller holds the key: it may learn its own entry's status.
            if status is EntryStatus.REVOKED:
                why = "revoked"
                raise PartyRevoked(f"{claimed} is revoked in the directory")
            if status is not EntryStatus.ACTIVE:
                why = status.value
                raise AuthenticationFailed(f"{claimed} has no directory entry in force ({status.value})")
            held = self._control.refusal(claimed) if self._control and not caller.is_authority else None
            if held is not None:
                why = "admin-revoked" if isinstance(held, PartyRevoked) else "locked"
                raise held
        except LabrelayError as exc:
            event = AuditEvent.AUTH_REPLAY if isinstance(exc, ReplayDetected) else AuditEvent.AUTH_FAILURE
            self._audit.record(
                event,
                outcome=Outcome.REFUSED,
                actor=_printable_keyid(claimed),
                reason=exc.code,
                why=why,
                method=view.method,
                route=route,
                remote=remote,
            )
            raise
        self._audit.record(AuditEvent.AUTH_SUCCESS, actor=caller.name, method=view.method, route=route, remote=remote)
        return caller

    def _key_for(self, keyid: str, enrolling: PartyEntry | None) -> tuple[Caller, VerifyKey | None, EntryStatus]:
        """The caller the key id names, the key to verify with (None: no such party), and its entry's status."""
        if keyid == AUTHORITY_KEYID:
            return Caller(AUTHORITY_KEYID, None), self._authority, EntryStatus.ACTIVE
        if enrolling is not None and keyid == enrolling.name:
            # The presented entry names the key, but the directory's own records decide whether it is in force: a
            # stored revocation, or the relay's clock, refuses it here as on every other route.
            status = self._directory.standing(enrolling, self._skew)
            return Caller(enrolling.name, enrolling), VerifyKey.from_b64(enrolling.signing_key), status
        resolution = self._directory.resolve(keyid)
        if resolution.entry is None:
            return Caller(keyid, None), None, resolution.status
        return Caller(keyid, resolution.entry), VerifyKey.from_b64(resolution.entry.signing_key), resolution.status

    def prune_nonces(self) -> int:
        """Forget nonces that fell out of the replay window (they would be refused as stale anyway)."""
        return self._nonces.prune(self._clock.now() - self._window - 2 * self._skew)
