"""The kill switch: freeze the relay, lock or revoke a party, quarantine a transfer.

State lives in the database (``ControlStore``) and is read on every request, so a command takes effect on the
very next request, on every replica. Commands are signed by an ``admin`` party (or the directory authority), run
once (their id is kept; a command older than the replay window is refused) and are audit events. Detection rules
lock parties through ``lock_by_rule``, which needs no signature: the rule is the relay's own decision, audited.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from labrelay.crypto.envelopes import envelope_signer, signed_parts, verify_envelope
from labrelay.crypto.keys import VerifyKey
from labrelay.domain.admin import ADMIN_COMMAND_TYPE, AdminAction, AdminCommand
from labrelay.domain.audit import AuditEvent, Outcome
from labrelay.domain.names import AUTHORITY_KEYID
from labrelay.domain.parties import Role
from labrelay.domain.timeutil import to_rfc3339
from labrelay.domain.transfers import QuarantineReason
from labrelay.errors import (
    LabrelayError,
    PartyLocked,
    PartyRevoked,
    PermissionDenied,
    RelayFrozen,
    ReplayDetected,
    SecurityError,
    UsageError,
)
from labrelay.ports import Clock, ControlStore
from labrelay.relay.auditor import Auditor
from labrelay.relay.directory import DirectoryService

FROZEN = "frozen"
LOCK = "lock"
REVOKE = "revoke"


@dataclass(frozen=True, slots=True)
class CommandResult:
    action: str
    target: str | None
    changed: bool
    quarantined: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "target": self.target, "changed": self.changed, "quarantined": self.quarantined}


class ControlService:
    def __init__(
        self,
        store: ControlStore,
        directory: DirectoryService,
        auditor: Auditor,
        clock: Clock,
        authority: VerifyKey,
        window: timedelta,
    ) -> None:
        self._store = store
        self._directory = directory
        self._audit = auditor
        self._clock = clock
        self._authority = authority
        self._window = window

    # ------------------------------------------------------------ checks, on every request

    def refusal(self, name: str) -> SecurityError | None:
        """Why ``name`` may not act on this relay now (a lock or an admin revocation), or None."""
        held = self._store.lock_of(name)
        if held is None:
            return None
        kind, reason = held
        if kind == REVOKE:
            return PartyRevoked(f"{name} is revoked on this relay ({reason})")
        return PartyLocked(
            f"{name} is locked on this relay ({reason})", hint="an administrator lifts it with: labrelay admin unlock"
        )

    def frozen(self) -> bool:
        return self._store.flag(FROZEN)

    def check_open(self, actor: str, operation: str) -> None:
        """Refuse (and audit) any upload, download or transfer operation while the relay is frozen."""
        if self._store.flag(FROZEN):
            self._audit.record(
                AuditEvent.RELAY_REFUSE, outcome=Outcome.REFUSED, actor=actor, reason=RelayFrozen.code, op=operation
            )
            raise RelayFrozen("the relay is frozen by its administrator: no upload, no download until unfrozen")

    def status(self) -> dict[str, Any]:
        return {
            "frozen": self._store.flag(FROZEN),
            "locks": [{**lock, "at": to_rfc3339(lock["at"])} for lock in self._store.locks()],
            "quarantined": self._store.quarantined_count(),
        }

    # ------------------------------------------------------------ detection

    def lock_by_rule(self, name: str, rule: str) -> bool:
        """A detection rule locks ``name`` at once. True if it was not locked already."""
        if not self._store.set_lock(name, LOCK, rule, self._clock.now(), "detector"):
            return False
        self._audit.record(AuditEvent.PARTY_LOCK, actor="detector", target=name, rule=rule)
        return True

    # ------------------------------------------------------------ signed commands

    def _signer_key(self, signer: str) -> VerifyKey:
        if signer == AUTHORITY_KEYID:
            return self._authority
        entry = self._directory.active(signer)
        if entry is None or entry.role is not Role.ADMIN:
            raise PermissionDenied(f"{signer} is not an administrator in force in the directory")
        if self._store.lock_of(signer) is not None:
            raise PermissionDenied(f"{signer} is locked or revoked on this relay")
        return VerifyKey.from_b64(entry.signing_key)

    def execute(self, envelope: Mapping[str, Any], *, caller: str | None, via: str) -> CommandResult:
        """Verify and run one signed admin command. ``caller``: the authenticated requester (API), who must be the
        signer; None when an operator runs it on the data directory."""
        signer: str | None = None
        try:
            signer = envelope_signer(envelope)
            if caller is not None and caller != signer:
                raise PermissionDenied("an admin command is sent by the administrator who signed it")
            payload = verify_envelope(envelope, ADMIN_COMMAND_TYPE, self._signer_key(signer))
            command = AdminCommand.from_payload(payload)
            return self._admit(command, signer, signed_parts(envelope), via)
        except LabrelayError as exc:
            self._audit.record(
                AuditEvent.ADMIN_REFUSE,
                outcome=Outcome.REFUSED,
                actor=caller or (signer if signer and len(signer) <= 80 else None),
                reason=exc.code,
                via=via,
            )
            raise

    def execute_approved(
        self, command: AdminCommand, signer: str, proof: Mapping[str, Any], *, via: str
    ) -> CommandResult:
        """Run a command approved by other means than an envelope: in the console, ``signer``'s passkey signed the
        command's hash (``proof``: the WebAuthn assertion, kept like an envelope). The same checks as ``execute``:
        the signer is an administrator in force and not locked, the command is for this relay, fresh, and new."""
        try:
            self._signer_key(signer)
            return self._admit(command, signer, proof, via)
        except LabrelayError as exc:
            self._audit.record(AuditEvent.ADMIN_REFUSE, outcome=Outcome.REFUSED, actor=signer, reason=exc.code, via=via)
            raise

    def _admit(self, command: AdminCommand, signer: str, proof: Mapping[str, Any], via: str) -> CommandResult:
        """The checks every command passes however it was approved, then the command: it is for this relay, within
        the replay window, and new (its id and proof are kept, which makes it run once)."""
        now = self._clock.now()
        if command.relay != self._audit.relay_public.b64:
            raise PermissionDenied("this admin command was made for another relay")
        if abs(now - command.issued_at) > self._window:
            raise ReplayDetected("admin command outside the replay window; make a fresh one")
        if not self._store.record_command(command.command_id, now, signer, command.action.value, command.target, proof):
            raise ReplayDetected("admin command already executed (replayed)")
        return self._run(command, signer, via)

    def _run(self, command: AdminCommand, signer: str, via: str) -> CommandResult:
        now = self._clock.now()
        action, target = command.action, command.target
        common: dict[str, Any] = {"actor": signer, "command": command.command_id, "via": via, "why": command.reason}
        if action in (AdminAction.FREEZE, AdminAction.UNFREEZE):
            on = action is AdminAction.FREEZE
            changed = self._store.set_flag(FROZEN, on, now, signer)
            self._audit.record(AuditEvent.RELAY_FREEZE if on else AuditEvent.RELAY_UNFREEZE, changed=changed, **common)
            return CommandResult(action.value, None, changed)
        if target is None:  # pragma: no cover - AdminCommand.from_payload guarantees a target
            raise UsageError(f"{action.value} needs a target")
        if action is AdminAction.QUARANTINE:
            held = self._store.quarantine([target], now)
            self._audit.record(AuditEvent.TRANSFER_QUARANTINE, transfer_id=target, changed=bool(held), **common)
            return CommandResult(action.value, target, bool(held), held)
        if action is AdminAction.UNLOCK:
            changed = self._store.clear_lock(target)
            self._audit.record(AuditEvent.PARTY_UNLOCK, target=target, changed=changed, **common)
            return CommandResult(action.value, target, changed)
        kind = REVOKE if action is AdminAction.REVOKE else LOCK
        changed = self._store.set_lock(target, kind, command.reason, now, signer)
        event = AuditEvent.PARTY_REVOKE if kind == REVOKE else AuditEvent.PARTY_LOCK
        self._audit.record(event, target=target, changed=changed, **common)
        held = []
        if kind == REVOKE:
            held = self._store.quarantine(self._store.pending_of(target), now, QuarantineReason.REVOKED)
            for tid in held:
                self._audit.record(AuditEvent.TRANSFER_QUARANTINE, transfer_id=tid, cause="revoke", **common)
        return CommandResult(action.value, target, changed, held)
