"""Offline enrolment in three steps, three places (docs/enrolment.md).

1. The party, on its own machine: ``request`` writes REQUEST.json, its public keys, name, role, region, identifier
   and the authority key it pinned, signed with its own signing key (proof that it holds that key).
2. The authority, offline: ``read_request`` verifies that self-signature and every field, and ``issue`` signs the
   entry, with, for a lab, the pseudonym key sealed to the lab's age key and signed: ENTRY.json.
3. Anyone, online: ENTRY.json's entry goes to the relay (which stores only what the authority signed); the party
   installs it with ``install``, after checking that the entry is its own and the sealed key opens.

REQUEST.json is an envelope (``labrelay.crypto.envelopes``) of type ``enrolment-request`` signed by the party.
ENTRY.json::

    {"kind": "labrelay-enrolment", "v": 1,
     "entry": {authority-signed party-entry envelope},
     "pseudonym_key": {authority-signed pseudonym-key-grant envelope: the key, age-sealed to the entry's recipient}}

``pseudonym_key`` is there for labs only. A bare entry envelope (a line of the authority's ``issued.jsonl``) is
read as an ENTRY.json without a key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from labrelay.client.keystore import Authority, Party
from labrelay.crypto.envelopes import envelope_payload, envelope_signer, sign_envelope, verify_envelope
from labrelay.crypto.keys import VerifyKey
from labrelay.domain.fields import instant, optional, require
from labrelay.domain.identifiers import Identifier, check_for_role, optional_identifier
from labrelay.domain.names import check_party_name, check_region, new_id
from labrelay.domain.parties import PartyEntry, Role
from labrelay.domain.parties import reissue_refusal as reissue_refusal_of
from labrelay.domain.timeutil import to_rfc3339
from labrelay.errors import IntegrityError, LabrelayError, UntrustedEntry, UsageError
from labrelay.jsonfile import read_json

REQUEST_TYPE = "enrolment-request"
FILE_KIND = "labrelay-enrolment"


@dataclass(frozen=True, slots=True)
class EnrolmentRequest:
    """A verified request: what the party asks the authority to sign."""

    name: str
    role: Role
    region: str | None
    age_recipient: str
    signing_key: str
    authority: str  # the authority key the party pinned (base64url): the entry must verify under it
    created: datetime
    identifier: Identifier | None

    def entry(self, now: datetime, valid_for: timedelta) -> PartyEntry:
        """The entry for this request, valid from ``now`` (checks the keys' formats and the role's identifier)."""
        return PartyEntry(
            name=self.name,
            role=self.role,
            region=self.region,
            age_recipient=self.age_recipient,
            signing_key=self.signing_key,
            not_before=now,
            not_after=now + valid_for,
            issued_at=now,
            serial=new_id(),
            identifier=self.identifier,
        )


def request(party: Party, identifier: Identifier | None, now: datetime) -> dict[str, Any]:
    """The party's enrolment request, signed with its own signing key."""
    check_for_role(identifier, party.role.value)
    payload: dict[str, Any] = {
        "type": REQUEST_TYPE,
        "v": 1,
        "name": party.name,
        "role": party.role.value,
        "region": party.region,
        "age_recipient": party.age_recipient,
        "signing_key": party.signing_public,
        "authority": party.authority.b64,
        "created": to_rfc3339(now),
    }
    if identifier is not None:
        payload["identifier"] = identifier.to_payload()
    return sign_envelope(payload, party.signing_key, party.name)


def read_request(doc: object) -> EnrolmentRequest:
    """The request ``doc`` carries, if it is signed by the signing key it names (``IntegrityError`` otherwise:
    tampered, or signed by someone who does not hold that key) and every field is well-formed (``UntrustedEntry``
    otherwise: the authority signs nothing it could not check)."""
    try:
        claimed = require(envelope_payload(doc), "signing_key", str, IntegrityError)
        payload = verify_envelope(doc, REQUEST_TYPE, VerifyKey.from_b64(claimed))
    except IntegrityError as exc:
        raise IntegrityError(f"enrolment request refused: {exc.message}") from exc
    try:
        parsed = _parse_request(payload)
    except (UsageError, UntrustedEntry) as exc:
        raise UntrustedEntry(f"enrolment request refused: {exc.message}", hint=exc.hint) from exc
    if envelope_signer(doc) != parsed.name:
        raise UntrustedEntry(f"enrolment request refused: signed as {envelope_signer(doc)[:64]!r}, not as its name")
    return parsed


def _parse_request(payload: Mapping[str, Any]) -> EnrolmentRequest:
    if payload.get("v") != 1:
        raise UntrustedEntry("not a version-1 enrolment request")
    region = optional(payload, "region", str)
    req = EnrolmentRequest(
        name=check_party_name(require(payload, "name", str)),
        role=Role.parse(require(payload, "role", str)),
        region=check_region(region) if region is not None else None,
        age_recipient=require(payload, "age_recipient", str),
        signing_key=require(payload, "signing_key", str),
        authority=require(payload, "authority", str),
        created=instant(payload, "created"),
        identifier=optional_identifier(payload),
    )
    check_for_role(req.identifier, req.role.value)
    return req


def prepare(authority: Authority, req: EnrolmentRequest, now: datetime, valid_for: timedelta) -> PartyEntry:
    """The entry ``authority`` would sign for a verified request (nothing signed nor written yet); ``UntrustedEntry``
    when the party pinned another authority key, or a key or the validity is malformed."""
    if req.authority != authority.public.b64:
        raise UntrustedEntry(
            f"enrolment request refused: {req.name} pinned another authority key than {authority.path}",
            hint="the party was created with another authority.pub; sign with that authority, or recreate it",
        )
    try:
        return req.entry(now, valid_for)
    except LabrelayError as exc:  # keys that are not an age recipient or an Ed25519 key, an empty validity
        raise UntrustedEntry(f"enrolment request refused: {exc.message}") from exc


def reissue_refusal(authority: Authority, req: EnrolmentRequest) -> str | None:
    """Why ``authority`` must not sign this request, given what it signed for the name before (``issued.jsonl``):
    keys of a revoked or replaced entry, or a request older than its newest entry or revocation; ``None`` if
    nothing stands against it."""
    entries, revocations = authority.issued_history(req.name)
    return reissue_refusal_of(req.name, (req.signing_key, req.age_recipient), req.created, entries, revocations)


def seal(authority: Authority, entry: PartyEntry, now: datetime) -> dict[str, Any]:
    """ENTRY.json for a prepared entry: the signed entry and, for a lab, its sealed pseudonym key (both logged)."""
    doc: dict[str, Any] = {"kind": FILE_KIND, "v": 1, "entry": authority.issue(entry)}
    if entry.role is Role.LAB:
        doc["pseudonym_key"] = authority.grant_pseudonym_key(entry, now)
    return doc


@dataclass(frozen=True)
class EntryFile:
    """ENTRY.json as read (nothing verified yet: the relay and ``install`` verify)."""

    entry: Mapping[str, Any]
    grant: Mapping[str, Any] | None


def read_entry_file(path: Path) -> EntryFile:
    try:
        doc = read_json(path)
    except FileNotFoundError:
        raise UsageError(f"{path} not found") from None
    except ValueError as exc:
        raise UsageError(f"{path} is not JSON: {exc}") from exc
    if "payload" in doc:  # a bare entry envelope
        return EntryFile(doc, None)
    if doc.get("kind") != FILE_KIND or doc.get("v") != 1 or not isinstance(doc.get("entry"), Mapping):
        raise UsageError(f"{path} is not an ENTRY.json written by `labrelay authority sign`")
    grant = doc.get("pseudonym_key")
    if grant is not None and not isinstance(grant, Mapping):
        raise UntrustedEntry(f"{path}: malformed pseudonym key grant")
    return EntryFile(doc["entry"], grant)


@dataclass(frozen=True)
class Installable:
    entry: PartyEntry
    envelope: Mapping[str, Any]
    pseudonym_key: str | None


def check_for_party(party: Party, entry_file: EntryFile) -> Installable:
    """Before anything is sent or written: the entry is the party's own, signed by the authority it pinned, and a
    lab's sealed pseudonym key is granted with this entry, opens with the party's age identity, and is the key the
    lab already holds, if it holds one."""
    entry = party.check_own_entry(entry_file.entry)
    if entry.role is not Role.LAB:
        if entry_file.grant is not None:
            raise UntrustedEntry("ENTRY.json carries a pseudonym key for a party that is not a lab")
        return Installable(entry, entry_file.entry, None)
    if entry_file.grant is None:
        if party.pseudonym_key() is not None:  # re-enrolled: the key it holds stays
            return Installable(entry, entry_file.entry, None)
        raise UntrustedEntry(
            "ENTRY.json has no pseudonym key for this lab, which holds none",
            hint="use the ENTRY.json that `labrelay authority sign` wrote",
        )
    key = party.open_pseudonym_grant(entry_file.grant, entry)
    party.check_pseudonym_key(key)  # a lab that holds another key: refused now, not once registered and installed
    return Installable(entry, entry_file.entry, key)


def install(party: Party, checked: Installable) -> None:
    """Install what ``check_for_party`` checked: the pseudonym key first, then the entry (which marks the party
    enrolled), so that a failure in between leaves a party that registers again."""
    if checked.pseudonym_key is not None:
        party.save_pseudonym_key(checked.pseudonym_key)
    party.save_entry(checked.envelope)
