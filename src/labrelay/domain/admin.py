"""Kill-switch commands: what an administrator signs to freeze the relay, lock, revoke or quarantine.

A command is a signed object (``labrelay.crypto.envelopes``) of type ``admin-command``, signed by an ``admin``
party's key. The relay executes it once: its ``id`` is kept, and a command older than the replay window is refused,
so that a captured command cannot be played again. The same command works through the API and, when the API is
down, on the relay's data directory (``labrelay admin … --data DATA_DIR``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from labrelay.domain.names import check_party_name, check_transfer_id, new_id
from labrelay.domain.timeutil import from_rfc3339, to_rfc3339
from labrelay.errors import UsageError

ADMIN_COMMAND_TYPE = "admin-command"
MAX_REASON = 40


class AdminAction(StrEnum):
    FREEZE = "freeze"  # no upload, no download: only audit reads and admin commands
    UNFREEZE = "unfreeze"
    LOCK = "lock"  # refuse a party's requests until unlocked
    UNLOCK = "unlock"  # lift a lock or an admin revocation
    REVOKE = "revoke"  # refuse a party's requests and quarantine its pending transfers
    QUARANTINE = "quarantine"  # hold one transfer: never served again, deleted at its deadline

    @property
    def target_kind(self) -> str | None:
        if self in (AdminAction.LOCK, AdminAction.UNLOCK, AdminAction.REVOKE):
            return "party"
        if self is AdminAction.QUARANTINE:
            return "transfer"
        return None


def _reason(value: object) -> str:
    text = "" if value is None else str(value)
    if len(text) > MAX_REASON or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in text):
        raise UsageError(f"a reason is a short code of at most {MAX_REASON} ASCII letters, digits, - _ .")
    return text or "admin"


@dataclass(frozen=True, slots=True)
class AdminCommand:
    action: AdminAction
    target: str | None
    reason: str
    issued_at: datetime
    command_id: str
    relay: str  # the relay's audit key (base64url): a command signed for one relay is refused by any other

    @classmethod
    def new(
        cls, action: AdminAction, target: str | None, reason: str | None, now: datetime, relay: str
    ) -> AdminCommand:
        return cls.from_payload(
            {
                "type": ADMIN_COMMAND_TYPE,
                "id": new_id(),
                "action": action.value,
                "target": target,
                "reason": reason,
                "issued_at": to_rfc3339(now),
                "relay": relay,
            }
        )

    def payload(self) -> dict[str, Any]:
        return {
            "type": ADMIN_COMMAND_TYPE,
            "id": self.command_id,
            "action": self.action.value,
            "target": self.target,
            "reason": self.reason,
            "issued_at": to_rfc3339(self.issued_at),
            "relay": self.relay,
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> AdminCommand:
        try:
            action = AdminAction(str(payload.get("action")))
        except ValueError:
            raise UsageError("unknown admin action", hint="one of " + ", ".join(a.value for a in AdminAction)) from None
        target = payload.get("target")
        kind = action.target_kind
        if kind is None:
            if target is not None:
                raise UsageError(f"{action.value} takes no target")
        elif kind == "party":
            target = check_party_name(target)
        else:
            target = check_transfer_id(target)
        try:
            issued = from_rfc3339(str(payload.get("issued_at")))
        except ValueError:
            raise UsageError("admin command without a valid issued_at") from None
        relay = payload.get("relay")
        if not isinstance(relay, str) or not 20 <= len(relay) <= 64:
            raise UsageError("admin command without the key of the relay it is for")
        return cls(
            relay=relay,
            action=action,
            target=target,
            reason=_reason(payload.get("reason")),
            issued_at=issued,
            command_id=check_transfer_id(payload.get("id")),  # same shape: a random UUID
        )
