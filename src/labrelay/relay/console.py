"""The console's service: passkeys bound to directory parties, sign-in sessions, approved commands, and the
metadata the console shows.

Who may sign in is decided by the directory, never by the console: a passkey is registered by a request signed
with the party's own key (RFC 9421, like every /v1 request), for a party in force whose role is admin, dpo or
auditor. Sign-in then needs only the passkey. Anyone may start a sign-in, so the relay keeps nothing for it: the
challenge goes to the browser sealed under a key of the relay (``passkeys.seal_challenge``, a cookie), comes back
with the answer, and is recorded only once an answer verified (so that it is used once); sign-in requests are
limited per address (``throttle``). Every session is checked again on each request against the
directory and the relay's locks, so a revoked or locked party is out at once. A session cookie lets its holder
*read* metadata; it cannot act: freeze, unfreeze and revoke need a fresh passkey assertion over the command itself
(``labrelay.crypto.passkeys.command_challenge``), kept like a signed admin command.

Nothing here touches payloads; everything shown is what the relay's database already holds in clear (names,
ids, sizes, states, deadlines, audit heads).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from labrelay.crypto import passkeys
from labrelay.crypto.passkeys import Relying
from labrelay.domain.admin import AdminAction, AdminCommand
from labrelay.domain.audit import AuditEvent, Outcome
from labrelay.domain.names import visible
from labrelay.domain.parties import CONSOLE_ROLES, PartyEntry, Role
from labrelay.domain.timeutil import from_epoch, to_epoch, to_rfc3339
from labrelay.domain.transfers import Transfer, TransferState
from labrelay.errors import (
    AuthenticationFailed,
    LabrelayError,
    PermissionDenied,
    ReplayDetected,
    TooManyRequests,
    UsageError,
)
from labrelay.ports import AuditLog, Clock, ConsoleStore, TransferRepository
from labrelay.relay.audit_check import AuditCheck
from labrelay.relay.auditor import Auditor
from labrelay.relay.control import CommandResult, ControlService
from labrelay.relay.directory import DirectoryService
from labrelay.relay.retention import RetentionCheck
from labrelay.relay.throttle import AddressLimiter, LimitReport, Throttled

CHALLENGE_TTL = timedelta(minutes=5)
SIGNIN_LIMIT = 30  # sign-in requests (starts and answers) per address and minute: console_signin_limit
SIGNIN_KEY_LABEL = b"console-signin-challenges"  # the relay key's derived secret that seals sign-in challenges
SESSION_TTL = timedelta(minutes=30)
TRANSFERS_SHOWN = 200
BATCHES_SHOWN = 50
ALERTS_SINCE = timedelta(days=8)
CONSOLE_ACTIONS = (AdminAction.FREEZE, AdminAction.UNFREEZE, AdminAction.REVOKE, AdminAction.UNLOCK)


@dataclass(frozen=True, slots=True)
class ConsoleUser:
    party: str
    role: Role
    credential_id: str

    @property
    def may_command(self) -> bool:
        return self.role is Role.ADMIN


@dataclass(frozen=True, slots=True)
class SigninStart:
    options: str  # for navigator.credentials.get (JSON)
    sealed: str  # the challenge, sealed: the sign-in cookie's value, returned with the answer
    max_age: int  # seconds the sealed challenge is good for


@dataclass(frozen=True, slots=True)
class NewSession:
    token: str
    user: ConsoleUser
    expires: datetime


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", errors="replace")).hexdigest()


def _claimed_challenge(credential: Mapping[str, Any]) -> str:
    """The challenge a WebAuthn response says it answers (read to find the stored challenge; verified after)."""
    response = credential.get("response")
    raw = response.get("clientDataJSON") if isinstance(response, Mapping) else None
    if not isinstance(raw, str) or len(raw) > 4096:
        raise AuthenticationFailed("passkey response without client data")
    try:
        client = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: absurdly nested arrays
        raise AuthenticationFailed("malformed passkey client data") from None
    challenge = client.get("challenge") if isinstance(client, dict) else None
    if not isinstance(challenge, str) or not 40 <= len(challenge) <= 64:
        raise AuthenticationFailed("passkey client data without a challenge")
    return challenge


class ConsoleService:
    """The console's use cases: passkeys, sign-in and sessions, passkey-approved commands, and what it shows (the
    relay's metadata, the retention check and the audit verification, run on request)."""

    def __init__(
        self,
        *,
        store: ConsoleStore,
        transfers: TransferRepository,
        audit_log: AuditLog,
        directory: DirectoryService,
        control: ControlService,
        auditor: Auditor,
        clock: Clock,
        retention: RetentionCheck,
        audit_check: AuditCheck,
        signin_key: bytes,
        signin_limit: int = SIGNIN_LIMIT,
        session_ttl: timedelta = SESSION_TTL,
    ) -> None:
        self._store = store
        self._transfers = transfers
        self._log = audit_log
        self._directory = directory
        self._control = control
        self._audit = auditor
        self._clock = clock
        self._retention = retention
        self._audit_check = audit_check
        self.session_ttl = session_ttl
        self._signin_key = signin_key
        self.signin_limiter = AddressLimiter(signin_limit)

    # ------------------------------------------------------------ who may use the console

    def _console_entry(self, party: str) -> PartyEntry:
        """The party's entry in force, if its role may use the console and the relay has not locked it."""
        entry = self._directory.active(party)
        if entry is None or entry.role not in CONSOLE_ROLES:
            raise PermissionDenied(f"{party} is not an administrator, DPO or auditor in force in the directory")
        refusal = self._control.refusal(party)
        if refusal is not None:
            raise refusal
        return entry

    def _bound_entry(self, party: str, signing_key: str) -> PartyEntry:
        """The party's console entry, if the passkey was bound by the key now in force: a passkey bound with a key
        the authority has since replaced (revoked and reissued) is void, like everything that key signed."""
        entry = self._console_entry(party)
        if entry.signing_key != signing_key:
            raise AuthenticationFailed(
                f"this passkey was bound with a key of {party} that is no longer in force; register a new one"
            )
        return entry

    def refuse(self, exc: LabrelayError, actor: str | None, op: str, remote: str | None) -> None:
        """Record a refused console request (``console:refuse``, with its error code)."""
        self._audit.record(
            AuditEvent.CONSOLE_REFUSE, outcome=Outcome.REFUSED, actor=actor, reason=exc.code, op=op, remote=remote
        )

    def _challenge(
        self, purpose: str, party: str | None, payload: str | None = None, raw: bytes | None = None
    ) -> bytes:
        """A challenge for a signed-in or signed party (a registration, a command), kept until it is taken."""
        challenge = raw if raw is not None else secrets.token_bytes(passkeys.CHALLENGE_BYTES)
        now = self._clock.now()
        self._store.prune_console(now)
        self._store.add_challenge(passkeys.b64url(challenge), purpose, party, payload, now + CHALLENGE_TTL)
        return challenge

    def _take(self, credential: Mapping[str, Any], purpose: str) -> tuple[bytes, str | None, str | None]:
        claimed = _claimed_challenge(credential)
        taken = self._store.take_challenge(claimed, purpose, self._clock.now())
        if taken is None:
            raise AuthenticationFailed("passkey challenge unknown, used or expired; start again")
        return passkeys.unb64url(claimed), taken[0], taken[1]

    # ------------------------------------------------------------ registration (the party's own key signs)

    def registration_options(self, party: str, rp: Relying, remote: str | None = None) -> str:
        try:
            self._console_entry(party)
        except LabrelayError as exc:
            self.refuse(exc, party, "passkey", remote)
            raise
        challenge = self._challenge("register", party)
        user_id = hashlib.sha256(b"labrelay-console-user\n" + party.encode()).digest()[:16]
        return passkeys.registration_options(rp, party, user_id, challenge, self._store.passkeys_of(party))

    def register(self, party: str, credential: dict[str, Any], rp: Relying, remote: str | None) -> str:
        """Bind a new passkey to ``party`` (the authenticated signer of the request). Returns its credential id."""
        try:
            entry = self._console_entry(party)
            challenge, owner, _ = self._take(credential, "register")
            if owner != party:
                raise AuthenticationFailed("this passkey challenge was issued to another party")
            new = passkeys.verify_registration(rp, credential, challenge)
            if not self._store.add_passkey(
                new.credential_id,
                party,
                entry.signing_key,
                passkeys.b64url(new.public_key),
                new.sign_count,
                self._clock.now(),
            ):
                raise UsageError("this passkey is already registered")
        except LabrelayError as exc:
            self.refuse(exc, party, "passkey", remote)
            raise
        self._audit.record(AuditEvent.CONSOLE_PASSKEY, actor=party, credential=new.credential_id[:16], remote=remote)
        return new.credential_id

    def passkeys(self, party: str) -> list[str]:
        return self._store.passkeys_of(party)

    def remove_passkeys(self, party: str, *, via: str) -> list[str]:
        """Unbind every passkey of ``party`` and end its sessions (a lost or stolen authenticator). The party
        registers a new passkey with its signing key; to keep it out, revoke or lock the party as well."""
        held = self._store.passkeys_of(party)
        self._store.remove_passkeys(party)
        ended = self._store.end_sessions_of(party)
        self._audit.record(AuditEvent.CONSOLE_PASSKEY_REMOVE, target=party, removed=len(held), sessions=ended, via=via)
        return held

    # ------------------------------------------------------------ sign-in, sessions

    def throttle(self, remote: str | None) -> Throttled | None:
        """Count one sign-in request (a start or an answer) against its address's limit: None if it may go on.
        In memory, no I/O: refusing a flood costs a dictionary look-up."""
        return self.signin_limiter.hit(remote, self._clock.now())

    def report_limit(self, report: LimitReport, op: str) -> None:
        """An address over its sign-in limit, as the throttle reports it (once per address and minute, a few per
        minute in all): ``limit:hit``, which the detector's ``limits`` rule raises as an alert."""
        self._audit.record(
            AuditEvent.LIMIT_HIT,
            outcome=Outcome.REFUSED,
            reason=TooManyRequests.code,
            limit="console-signin",
            remote=report.subject,
            op=op,
            refused=report.refused,
            per_minute=self.signin_limiter.per_minute,
            others=report.suppressed,
        )

    def signin_options(self, rp: Relying) -> SigninStart:
        """Anyone may ask (sign-in starts without a name), so the relay keeps nothing: the challenge goes back
        sealed, for the browser to keep (a cookie) and return with its answer. No I/O."""
        challenge = secrets.token_bytes(passkeys.CHALLENGE_BYTES)
        ttl = int(CHALLENGE_TTL.total_seconds())
        sealed = passkeys.seal_challenge(self._signin_key, rp, challenge, to_epoch(self._clock.now()) + ttl)
        return SigninStart(passkeys.authentication_options(rp, challenge, []), sealed, ttl)

    def _assert(self, credential: dict[str, Any], challenge: bytes, rp: Relying) -> tuple[str, str, PartyEntry]:
        """Verify an assertion; (party, credential id, the party's entry in force, which bound this passkey)."""
        credential_id = passkeys.credential_id_of(credential)
        held = self._store.passkey(credential_id)
        if held is None:
            raise AuthenticationFailed("unknown passkey")
        party, signing_key, public_key, count = held
        new_count = passkeys.verify_assertion(rp, credential, challenge, passkeys.unb64url(public_key), count)
        entry = self._bound_entry(party, signing_key)
        self._store.use_passkey(credential_id, new_count, self._clock.now())
        return party, credential_id, entry

    def signin(self, credential: dict[str, Any], sealed: str | None, rp: Relying, remote: str | None) -> NewSession:
        """Open a session for an answer to the challenge ``sealed`` (the sign-in cookie of the browser that sent the
        answer). The challenge is recorded as used only now that the answer verified: what the relay stores for
        sign-ins grows with successful sign-ins, never with anonymous requests."""
        party: str | None = None
        try:
            now = self._clock.now()
            challenge, until = passkeys.open_challenge(self._signin_key, rp, sealed, to_epoch(now))
            claimed = _claimed_challenge(credential)
            if claimed != passkeys.b64url(challenge):
                raise AuthenticationFailed("this passkey answer is not for this browser's sign-in; start again")
            party, credential_id, entry = self._assert(credential, challenge, rp)
            self._store.prune_console(now)
            if not self._store.spend_challenge(claimed, "signin", from_epoch(until)):
                raise ReplayDetected("this passkey sign-in was used already; start again")
        except LabrelayError as exc:
            self.refuse(exc, party, "signin", remote)
            raise
        token = secrets.token_urlsafe(32)
        expires = now + self.session_ttl
        self._store.add_session(token_hash(token), party, credential_id, now, expires)
        self._audit.record(AuditEvent.CONSOLE_SIGNIN, actor=party, role=entry.role.value, remote=remote)
        return NewSession(token, ConsoleUser(party, entry.role, credential_id), expires)

    def user(self, token: str | None, remote: str | None = None) -> ConsoleUser:
        """The signed-in user of a session token, checked again against the directory, the locks and the passkey
        that opened it (a removed passkey, or one bound by a key since replaced, ends the session)."""
        if not token or len(token) > 100:
            raise AuthenticationFailed("sign in with your passkey")
        held = self._store.session(token_hash(token), self._clock.now())
        if held is None:
            exc = AuthenticationFailed("your console session has ended; sign in again")
            self.refuse(exc, None, "session", remote)
            raise exc
        party, credential_id = held
        try:
            key = self._store.passkey(credential_id)
            if key is None or key[0] != party:
                raise AuthenticationFailed("the passkey of this session was removed; sign in again")
            entry = self._bound_entry(party, key[1])
        except LabrelayError as exc:
            self._store.end_session(token_hash(token))
            self.refuse(exc, party, "session", remote)
            raise
        return ConsoleUser(party, entry.role, credential_id)

    def signout(self, token: str | None) -> None:
        held = self._store.session(token_hash(token), self._clock.now()) if token else None
        if token and self._store.end_session(token_hash(token)):
            self._audit.record(AuditEvent.CONSOLE_SIGNOUT, actor=held[0] if held else None)

    # ------------------------------------------------------------ commands: one passkey assertion each

    def command_options(
        self,
        user: ConsoleUser,
        action: str,
        target: str | None,
        reason: str | None,
        rp: Relying,
        remote: str | None = None,
    ) -> str:
        try:
            if not user.may_command:
                raise PermissionDenied("only an administrator may freeze, unfreeze or revoke")
            try:
                act = AdminAction(action)
            except ValueError:
                raise UsageError(f"unknown console action {action[:40]!r}") from None
            if act not in CONSOLE_ACTIONS:
                raise UsageError(f"{action} is not available in the console; use labrelay admin")
            now = self._clock.now()
            command = AdminCommand.new(act, target, reason or "console", now, self._audit.relay_public.b64)
        except LabrelayError as exc:
            self.refuse(exc, user.party, "command", remote)
            raise
        payload = command.payload()
        challenge = passkeys.command_challenge(payload)
        self._challenge("command", user.party, json.dumps(payload, sort_keys=True), raw=challenge)
        return passkeys.authentication_options(rp, challenge, [user.credential_id])

    def command(self, user: ConsoleUser, credential: dict[str, Any], rp: Relying, remote: str | None) -> CommandResult:
        try:
            if not user.may_command:
                raise PermissionDenied("only an administrator may freeze, unfreeze or revoke")
            challenge, owner, payload_text = self._take(credential, "command")
            if owner != user.party or payload_text is None:
                raise AuthenticationFailed("this command was prepared for another session")
            payload = json.loads(payload_text)  # stored under its own hash: the assertion below covers it
            signer, credential_id, _ = self._assert(credential, challenge, rp)
            if signer != user.party:
                raise AuthenticationFailed("a command is approved by the signed-in administrator's own passkey")
            command = AdminCommand.from_payload(payload)
        except LabrelayError as exc:
            self.refuse(exc, user.party, "command", remote)
            raise
        proof = {"passkey": credential_id, "assertion": credential, "command": payload}
        result = self._control.execute_approved(command, user.party, proof, via="console")
        if command.action is AdminAction.REVOKE and command.target:
            self._store.end_sessions_of(command.target)
        return result

    # ------------------------------------------------------------ what the console shows (metadata only)

    def overview(self) -> dict[str, Any]:
        now = self._clock.now()
        transfers = self._transfers.recent(TRANSFERS_SHOWN)
        status = self._control.status()
        head = self._log.checkpoint("head")
        alerts = [
            {
                "seq": rec.seq,
                "at": to_rfc3339(rec.entry.at),
                "rule": rec.entry.reason,
                "subject": rec.entry.details.get("subject"),
                "count": rec.entry.details.get("count"),
                "threshold": rec.entry.details.get("threshold"),
                "locked": bool(rec.entry.details.get("locked")),
            }
            for rec in self._log.links_since(now - ALERTS_SINCE, AuditEvent.ALERT_RAISE)
        ]
        open_ = [r for r in transfers if r.state in (TransferState.UPLOADING, TransferState.AVAILABLE)]
        doc = {
            "now": to_rfc3339(now),
            "frozen": status["frozen"],
            "locks": status["locks"],
            "quarantined": status["quarantined"],
            "transfers": [_transfer_doc(r, now) for r in transfers],
            # per batch (the manifests' batch_id, which the relay holds in clear): n of m delivered, and the rest
            "batches": [b.as_dict() for b in self._transfers.batches(BATCHES_SHOWN)],
            "alerts": list(reversed(alerts))[:50],
            "retention": {
                "open": len(open_),
                "overdue": sum(1 for r in open_ if r.deadline <= now),
                "next_deadline": to_rfc3339(min(r.deadline for r in open_)) if open_ else None,
            },
            "audit_head": {"seq": head.seq, "hash": head.hash, "at": to_rfc3339(head.at)} if head else None,
        }
        return shown(doc)

    def retention_check(self) -> Mapping[str, Any]:
        return shown(self._retention.run().as_dict())

    def audit_verification(self) -> Mapping[str, Any]:
        return shown(self._audit_check.run().as_dict())


def _transfer_doc(rec: Transfer, now: datetime) -> dict[str, Any]:
    receipt = rec.receipt_envelope.get("payload") if rec.receipt_envelope else None
    return {
        "id": rec.transfer_id,
        "sender": rec.sender,
        "recipient": rec.recipient,
        "state": rec.state.value,
        "size": rec.manifest.size,
        "records": rec.manifest.record_count,
        "created": to_rfc3339(rec.created_at),
        "deadline": to_rfc3339(rec.deadline),
        "overdue": rec.state in (TransferState.UPLOADING, TransferState.AVAILABLE) and rec.deadline <= now,
        "receipt": (
            {"status": receipt.get("status"), "received_at": receipt.get("received_at")}
            if isinstance(receipt, Mapping)
            else None
        ),
        "quarantined": rec.quarantined_at is not None,
        "held": rec.held_because.value if rec.held_because is not None else None,  # admin, revoked, refused, corrupt
        "refused": _refusal_code(rec),
    }


def _refusal_code(rec: Transfer) -> str | None:
    """The reason code of the recipient's refusal (never its detail: the console shows metadata only)."""
    payload = rec.refusal_envelope.get("payload") if rec.refusal_envelope else None
    code = payload.get("reason") if isinstance(payload, Mapping) else None
    return code if isinstance(code, str) else None


T = TypeVar("T")


def shown(doc: T) -> T:
    """What the console's pages render, every string in it ``visible``: a right-to-left override or a zero-width
    character in anything the relay holds (a subject, a reason, a finding) is shown as its escape, never obeyed."""
    if isinstance(doc, str):
        return cast(T, visible(doc))
    if isinstance(doc, Mapping):
        return cast(T, {shown(key): shown(value) for key, value in doc.items()})
    if isinstance(doc, list | tuple):
        return cast(T, [shown(item) for item in doc])
    return doc
