"""The relay's copy of the signed directory.

The relay pins the authority's public key at ``server init`` and stores only entries and revocations that the
authority signed. It is not trusted for this: clients verify every entry again against their own pinned key, so
a relay that substitutes a key is caught before anything is encrypted to it (docs/threat-model.md, T3).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from labrelay.crypto.envelopes import signed_parts, verify_envelope
from labrelay.crypto.keys import VerifyKey
from labrelay.domain.audit import AuditEvent
from labrelay.domain.parties import (
    ENTRY_TYPE,
    RECEIVING_ROLES,
    REVOCATION_TYPE,
    EntryStatus,
    PartyEntry,
    Resolution,
    Revocation,
    resolve,
)
from labrelay.errors import ClassicKeyRefused, PartyRevoked, UntrustedEntry
from labrelay.ports import Clock, DirectoryRepository
from labrelay.relay.auditor import Auditor


@dataclass(frozen=True)
class Enrolment:
    """An entry as the authority signed it (``DirectoryService.enrolment`` verified it), with its envelope."""

    envelope: Mapping[str, Any]
    entry: PartyEntry


class KeyRule(Protocol):
    def classic_refusal(self, party: str, age_recipient: str) -> str | None: ...


class DirectoryService:
    def __init__(
        self, repo: DirectoryRepository, authority: VerifyKey, clock: Clock, auditor: Auditor, keys: KeyRule
    ) -> None:
        self._repo = repo
        self._authority = authority
        self._clock = clock
        self._audit = auditor
        self._keys = keys  # the routing policy's rule on age keys (require_pq): relay/policies.py

    def enrolment(self, envelope: Mapping[str, Any]) -> Enrolment:
        """The entry ``envelope`` carries, if the pinned authority signed it; ``UntrustedEntry`` otherwise."""
        payload = verify_envelope(envelope, ENTRY_TYPE, self._authority, error=UntrustedEntry)
        return Enrolment(envelope, PartyEntry.from_payload(payload))

    def register(self, envelope: Mapping[str, Any], actor: str) -> tuple[PartyEntry, bool]:
        """Store an authority-signed entry that is in force now. Returns (entry, newly stored)."""
        return self.enrol(self.enrolment(envelope), actor)

    def enrol(self, enrolment: Enrolment, actor: str) -> tuple[PartyEntry, bool]:
        """Store a verified entry (``enrolment``) if it is in force now. Returns (entry, newly stored)."""
        envelope, entry = enrolment.envelope, enrolment.entry
        now = self._clock.now()
        if now >= entry.not_after:
            raise UntrustedEntry(f"the directory entry for {entry.name} expired at {entry.not_after:%Y-%m-%d}")
        if any(r.voids(entry) for r in self._repo.revocations(entry.name)):
            raise PartyRevoked(f"{entry.name} is revoked; this entry predates its revocation")
        # Only a recipient's key seals what the relay stores (a lab's seals its pseudonym key in ENTRY.json, a DPO's
        # the ledger on the lab's machine): those may renew as they are, shown as classic by `labrelay directory`.
        refusal = self._keys.classic_refusal(entry.name, entry.age_recipient) if entry.role in RECEIVING_ROLES else None
        if refusal is not None:
            raise ClassicKeyRefused(
                refusal, hint="labrelay party new makes hybrid keys; an enrolled party runs labrelay party rotate --pq"
            )
        added = self._repo.add_entry(entry, signed_parts(envelope), now)
        self._audit.record(
            AuditEvent.DIRECTORY_REGISTER,
            actor=actor,
            subject=entry.name,
            role=entry.role.value,
            serial=entry.serial,
            new=added,
        )
        return entry, added

    def revoke(self, envelope: Mapping[str, Any], actor: str) -> tuple[Revocation, bool]:
        payload = verify_envelope(envelope, REVOCATION_TYPE, self._authority, error=UntrustedEntry)
        revocation = Revocation.from_payload(payload)
        added = self._repo.add_revocation(revocation, signed_parts(envelope), self._clock.now())
        self._audit.record(
            AuditEvent.DIRECTORY_REVOKE,
            actor=actor,
            subject=revocation.name,
            serial=revocation.serial,
            new=added,
        )
        return revocation, added

    def resolve(self, name: str) -> Resolution:
        return resolve(name, self._repo.entries(name), self._repo.revocations(name), self._clock.now())

    def standing(self, entry: PartyEntry, skew: timedelta = timedelta(0)) -> EntryStatus:
        """What the stored revocations and the relay's clock make of a presented entry (an enrolment's): REVOKED,
        EXPIRED, NOT_YET_VALID or ACTIVE. An entry the authority issued up to ``skew`` ahead of the relay's clock
        is in force (the authority's clock set its start)."""
        now = self._clock.now()
        status = resolve(entry.name, [entry], self._repo.revocations(entry.name), now).status
        if status is EntryStatus.NOT_YET_VALID and entry.valid_at(now + skew):
            return EntryStatus.ACTIVE
        return status

    def active(self, name: str) -> PartyEntry | None:
        res = self.resolve(name)
        return res.entry if res.status is EntryStatus.ACTIVE else None

    def export(self) -> dict[str, list[Mapping[str, Any]]]:
        entries, revocations = self._repo.envelopes()
        return {"entries": entries, "revocations": revocations}
