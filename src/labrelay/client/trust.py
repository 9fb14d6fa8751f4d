"""The directory as a client sees it: only what verifies under the authority key it pinned.

The relay serves the directory but is not trusted for it. An entry or revocation that does not verify under
the pinned key is not silently skipped: any use of that name is refused, because a relay that serves a forged
entry for a recipient is trying to get payloads encrypted to a key it holds (docs/threat-model.md, T3).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from labrelay.crypto.envelopes import envelope_payload, verify_envelope
from labrelay.crypto.keys import VerifyKey
from labrelay.domain.parties import (
    ENTRY_TYPE,
    REVOCATION_TYPE,
    EntryStatus,
    PartyEntry,
    Revocation,
    Role,
    resolve,
)
from labrelay.errors import IntegrityError, NotFound, PartyRevoked, PermissionDenied, UntrustedEntry


def _claimed_name(envelope: Any) -> str:
    try:
        name = envelope_payload(envelope).get("name")
    except IntegrityError:
        return "?"
    return name if isinstance(name, str) else "?"


class TrustedDirectory:
    def __init__(self, authority: VerifyKey, document: Mapping[str, Any], now: datetime) -> None:
        self.now = now
        self.entries: list[PartyEntry] = []
        self.revocations: list[Revocation] = []
        self.untrusted: dict[str, str] = {}
        for envelope in document.get("entries") or []:
            try:
                payload = verify_envelope(envelope, ENTRY_TYPE, authority, error=UntrustedEntry)
                self.entries.append(PartyEntry.from_payload(payload))
            except UntrustedEntry as exc:
                self.untrusted[_claimed_name(envelope)] = exc.message
        for envelope in document.get("revocations") or []:
            try:
                payload = verify_envelope(envelope, REVOCATION_TYPE, authority, error=UntrustedEntry)
                self.revocations.append(Revocation.from_payload(payload))
            except UntrustedEntry as exc:
                self.untrusted[_claimed_name(envelope)] = exc.message

    def require(self, name: str, roles: Collection[Role]) -> PartyEntry:
        """The entry in force for ``name``, verified, with one of ``roles``; a ``SecurityError`` otherwise."""
        if name in self.untrusted:
            raise UntrustedEntry(
                f"the relay served a directory record for {name} that the pinned authority did not sign "
                f"({self.untrusted[name]}); refusing to use {name}"
            )
        resolution = resolve(name, self.entries, self.revocations, self.now)
        if resolution.status is EntryStatus.UNKNOWN:
            raise NotFound(f"no party {name} in the directory")
        if resolution.status is EntryStatus.REVOKED:
            raise PartyRevoked(f"{name} is revoked in the directory")
        if resolution.status is not EntryStatus.ACTIVE or resolution.entry is None:
            raise UntrustedEntry(f"the directory entry for {name} is not valid now ({resolution.status.value})")
        if resolution.entry.role not in roles:
            raise PermissionDenied(
                f"{name} is a {resolution.entry.role.value}, not a " + " or ".join(sorted(r.value for r in roles))
            )
        return resolution.entry

    def in_force(self) -> list[PartyEntry]:
        names = sorted({e.name for e in self.entries})
        out = []
        for name in names:
            res = resolve(name, self.entries, self.revocations, self.now)
            if res.status is EntryStatus.ACTIVE and res.entry is not None and name not in self.untrusted:
                out.append(res.entry)
        return out
