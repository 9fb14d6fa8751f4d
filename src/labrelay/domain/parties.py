"""Parties and the signed directory that names them.

A party entry binds a name, a role and a region to two public keys (an age X25519 recipient for payloads, an
Ed25519 key for signatures) for a validity period. The directory authority signs entries and revocations
offline; the relay stores them and every client checks them against the authority key it pinned at enrolment.
This module holds the entries' shape and the rule that says which entry of a party is in force at an instant.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from labrelay.domain.fields import instant, optional, require
from labrelay.domain.identifiers import Identifier, check_for_role, optional_identifier
from labrelay.domain.names import check_party_name, check_region
from labrelay.domain.timeutil import to_rfc3339
from labrelay.errors import UntrustedEntry, UsageError

ENTRY_TYPE = "party-entry"
REVOCATION_TYPE = "party-revocation"

_CLASSIC_RECIPIENT = re.compile(r"age1[02-9ac-hj-np-z]{58}")
_PQ_RECIPIENT = re.compile(r"age1pq1[02-9ac-hj-np-z]{1952}")
"""An age recipient: classic X25519 (``age1`` + 32 bytes in Bech32) or hybrid ML-KEM-768 + X25519, post-quantum
(``age1pq1`` + 1,216 bytes). The shape only; crypto/age_format.py checks the checksum and the key."""


def is_age_recipient(text: str) -> bool:
    return bool(_CLASSIC_RECIPIENT.fullmatch(text) or _PQ_RECIPIENT.fullmatch(text))


def is_pq_recipient(text: str) -> bool:
    """True for a hybrid post-quantum recipient (``age1pq1…``), False for a classic one or anything else."""
    return bool(_PQ_RECIPIENT.fullmatch(text))


def short_key(recipient: str) -> str:
    """A recipient short enough for one line of output (a hybrid one has 1,959 characters): its start and end."""
    return recipient if len(recipient) <= 64 else f"{recipient[:20]}…{recipient[-12:]}"


def key_kind(text: str) -> str:
    """``post-quantum`` or ``classic``: what the directory and the console show for a party's age recipient."""
    return "post-quantum" if is_pq_recipient(text) else "classic"


_ED25519_B64 = re.compile(r"[A-Za-z0-9_-]{43}")
_SERIAL = re.compile(r"[0-9a-f-]{36}")


class Role(StrEnum):
    LAB = "lab"
    RECIPIENT = "recipient"
    ADMIN = "admin"
    DPO = "dpo"
    AUDITOR = "auditor"  # reads the console (metadata, alerts, the audit chain); commands nothing

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls(text)
        except ValueError:
            raise UsageError(f"invalid role {text!r}", hint="one of " + ", ".join(r.value for r in cls)) from None


SENDING_ROLES = frozenset({Role.LAB})
RECEIVING_ROLES = frozenset({Role.RECIPIENT})
CONSOLE_ROLES = frozenset({Role.ADMIN, Role.DPO, Role.AUDITOR})
"""Who may sign in to the console with a passkey. Only ``admin`` may freeze, unfreeze or revoke from it."""


class EntryStatus(StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"
    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class PartyEntry:
    """One signed directory entry (the ``payload`` of an authority envelope)."""

    name: str
    role: Role
    region: str | None
    age_recipient: str
    signing_key: str  # Ed25519 public key, raw 32 bytes, base64url without padding
    not_before: datetime
    not_after: datetime
    issued_at: datetime
    serial: str
    identifier: Identifier | None = None  # a lab's FINESS, another party's SIREN or SIRET; absent in older entries

    def __post_init__(self) -> None:
        check_party_name(self.name)
        if self.region is not None:
            check_region(self.region)
        check_for_role(self.identifier, self.role.value)
        if not is_age_recipient(self.age_recipient):
            raise UntrustedEntry(f"entry for {self.name}: not an age recipient (age1pq1… or age1…)")
        if not _ED25519_B64.fullmatch(self.signing_key):
            raise UntrustedEntry(f"entry for {self.name}: not an Ed25519 public key")
        if not self.not_before < self.not_after:
            raise UntrustedEntry(f"entry for {self.name}: empty validity period")
        if not _SERIAL.fullmatch(self.serial):
            raise UntrustedEntry(f"entry for {self.name}: malformed serial")

    def to_payload(self) -> dict[str, Any]:
        return {
            "type": ENTRY_TYPE,
            "v": 1,
            "name": self.name,
            "role": self.role.value,
            "region": self.region,
            "age_recipient": self.age_recipient,
            "signing_key": self.signing_key,
            "not_before": to_rfc3339(self.not_before),
            "not_after": to_rfc3339(self.not_after),
            "issued_at": to_rfc3339(self.issued_at),
            "serial": self.serial,
            # Only when there is one: an entry signed before identifiers existed has no such field, and its
            # signature covers exactly the fields it has.
            **({"identifier": self.identifier.to_payload()} if self.identifier else {}),
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> PartyEntry:
        if payload.get("type") != ENTRY_TYPE or payload.get("v") != 1:
            raise UntrustedEntry("not a version-1 party entry")
        region = optional(payload, "region", str)
        try:
            role = Role(require(payload, "role", str))
            return cls(
                name=require(payload, "name", str),
                role=role,
                region=region,
                age_recipient=require(payload, "age_recipient", str),
                signing_key=require(payload, "signing_key", str),
                not_before=instant(payload, "not_before"),
                not_after=instant(payload, "not_after"),
                issued_at=instant(payload, "issued_at"),
                serial=require(payload, "serial", str),
                identifier=optional_identifier(payload),
            )
        except (UsageError, ValueError) as exc:
            raise UntrustedEntry(f"malformed party entry: {exc}") from exc

    def valid_at(self, now: datetime) -> bool:
        return self.not_before <= now < self.not_after


@dataclass(frozen=True, slots=True)
class Revocation:
    """A signed revocation: every entry of ``name`` issued at or before ``revoked_at`` is void."""

    name: str
    revoked_at: datetime
    reason: str
    serial: str

    def __post_init__(self) -> None:
        check_party_name(self.name)
        if not (0 < len(self.reason) <= 200) or not self.reason.isprintable():
            raise UntrustedEntry("revocation reason must be 1-200 printable characters")
        if not _SERIAL.fullmatch(self.serial):
            raise UntrustedEntry("malformed revocation serial")

    def to_payload(self) -> dict[str, Any]:
        return {
            "type": REVOCATION_TYPE,
            "v": 1,
            "name": self.name,
            "revoked_at": to_rfc3339(self.revoked_at),
            "reason": self.reason,
            "serial": self.serial,
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Revocation:
        if payload.get("type") != REVOCATION_TYPE or payload.get("v") != 1:
            raise UntrustedEntry("not a version-1 revocation")
        try:
            return cls(
                name=require(payload, "name", str),
                revoked_at=instant(payload, "revoked_at"),
                reason=require(payload, "reason", str),
                serial=require(payload, "serial", str),
            )
        except UsageError as exc:
            raise UntrustedEntry(f"malformed revocation: {exc}") from exc

    def voids(self, entry: PartyEntry) -> bool:
        return entry.name == self.name and entry.issued_at <= self.revoked_at


@dataclass(frozen=True, slots=True)
class Resolution:
    """What the directory says about a name at an instant: the entry in force, or why there is none."""

    status: EntryStatus
    entry: PartyEntry | None


def resolve(name: str, entries: Iterable[PartyEntry], revocations: Iterable[Revocation], now: datetime) -> Resolution:
    """The entry of ``name`` in force at ``now``: the latest-issued one that is valid and not revoked.

    Fails closed: a name with no entry is UNKNOWN; with entries that are all revoked, REVOKED; otherwise, when
    none is valid at ``now``, EXPIRED or NOT_YET_VALID.
    """
    own = [e for e in entries if e.name == name]
    if not own:
        return Resolution(EntryStatus.UNKNOWN, None)
    revs = [r for r in revocations if r.name == name]
    alive = [e for e in own if not any(r.voids(e) for r in revs)]
    if not alive:
        return Resolution(EntryStatus.REVOKED, max(own, key=lambda e: e.issued_at))
    valid = [e for e in alive if e.valid_at(now)]
    if valid:
        return Resolution(EntryStatus.ACTIVE, max(valid, key=lambda e: e.issued_at))
    latest = max(alive, key=lambda e: e.issued_at)
    if all(e.not_before > now for e in alive):
        return Resolution(EntryStatus.NOT_YET_VALID, latest)
    return Resolution(EntryStatus.EXPIRED, latest)


def reissue_refusal(
    name: str,
    keys: tuple[str, str],
    requested_at: datetime,
    entries: Iterable[PartyEntry],
    revocations: Iterable[Revocation],
) -> str | None:
    """Why an authority must not sign a new entry of ``name`` for ``keys`` (signing key, age recipient), requested at
    ``requested_at``, given the entries and revocations it issued before; ``None`` when nothing stands against it.

    A revocation voids entries by name and issue time only, so a new entry with a revoked entry's key would bring
    that (perhaps compromised) key back into force; a key an older entry had and a newer one replaced is one the
    party left behind; and a request made before the newest entry or revocation for the name predates what the
    authority decided since (to the second, the precision of both: a request made in the same second is not shown to
    predate it; the key checks above do not depend on time).
    """
    own = sorted((e for e in entries if e.name == name), key=lambda e: e.issued_at)
    revs = [r for r in revocations if r.name == name]
    for entry in own:
        shared = _shared_keys(entry, keys)
        revoked = next((r for r in revs if r.voids(entry)), None)
        if shared and revoked is not None:
            return (
                f"its {shared} belonged to {name}'s entry {entry.serial}, revoked at {to_rfc3339(revoked.revoked_at)}"
                f" ({revoked.reason})"
            )
    if own:
        newest = own[-1]
        for entry in own[:-1]:
            left = _shared_keys(entry, keys, unless_in=newest)
            if left:
                return (
                    f"its {left} belonged to {name}'s entry {entry.serial}, replaced by entry {newest.serial} "
                    f"(issued {to_rfc3339(newest.issued_at)}) with another"
                )
    latest = max([e.issued_at for e in own] + [r.revoked_at for r in revs], default=None)
    if latest is not None and requested_at < latest:
        return (
            f"it was made at {to_rfc3339(requested_at)}, before this authority's newest entry or revocation for "
            f"{name} ({to_rfc3339(latest)})"
        )
    return None


def _shared_keys(entry: PartyEntry, keys: tuple[str, str], unless_in: PartyEntry | None = None) -> str:
    """Which of ``keys`` (signing key, age recipient) ``entry`` has (and ``unless_in`` has not): for messages."""
    signing, age = keys
    found = []
    if entry.signing_key == signing and (unless_in is None or unless_in.signing_key != signing):
        found.append("signing key")
    if entry.age_recipient == age and (unless_in is None or unless_in.age_recipient != age):
        found.append("age recipient")
    return " and ".join(found)
