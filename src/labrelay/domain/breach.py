"""Breach scope, as rules: which transfers an incident exposed, and how (ciphertext only, or readable data).

Inputs are what the DPO holds without the relay's cooperation: the senders' ledgers (which transfer went to whom,
with which fields, until when) and the relay's audit export (when each payload was stored, served, deleted).
Outputs name transfers and categories of data; persons are named only by ``labrelay.breach`` with the DPO's key.

The rule that matters: the relay never holds a key that opens a payload. A copy of its storage, database or
backups exposes ciphertext only, which GDPR art. 34(3)(a) recognises ("unintelligible to any person who is not
authorised to access it"). Data is readable only where a recipient's private key was compromised while a payload
sealed to it was still obtainable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from labrelay.domain.timeutil import from_rfc3339

# Categories of personal data, as a notification names them, from the fields a transfer carried.
CATEGORY_OF_FIELD: Mapping[str, str] = {
    "nir": "nir",
    "nom": "identity",
    "prenom": "identity",
    "date_naissance": "identity",
    "sexe": "demographic",
    "age": "demographic",
    "pseudonyme": "pseudonym",
    "adresse": "contact",
    "telephone": "contact",
    "email": "contact",
    "code_postal": "place",
    "code_commune_insee": "place",
    "commune": "place",
    "prescripteur_rpps": "professional",
    "prescripteur_nom": "professional",
    "prescripteur_telephone": "professional",
    "laboratoire_finess": "health",
    "date_prelevement": "health",
    "date_validation": "health",
    "code_loinc": "health",
    "resultat": "health",
}
CATEGORY_LABELS_FR: Mapping[str, str] = {
    "identity": "nom, prénom et date de naissance",
    "demographic": "âge et sexe",
    "nir": "numéro de sécurité sociale (NIR)",
    "contact": "coordonnées (adresse, téléphone, courriel)",
    "place": "commune de résidence",
    "health": "données de santé (test de dépistage, date et résultat)",
    "professional": "identité et coordonnées professionnelles du prescripteur (RPPS, nom, téléphone)",
    "pseudonym": "pseudonyme (non réversible sans la clé du laboratoire)",
}


def categories_of(fields: Iterable[str]) -> list[str]:
    return sorted({CATEGORY_OF_FIELD[f] for f in fields if f in CATEGORY_OF_FIELD})


class Exposure(StrEnum):
    NONE = "none"  # not touched by the incident
    CIPHERTEXT = "ciphertext"  # exposed, but only as age ciphertext for a key the attacker does not hold
    READABLE = "readable"  # exposed with a key that opens it
    RECIPIENT_SIDE = "recipient-side"  # delivered before the compromise: on the recipient's systems, not the relay's


@dataclass(frozen=True, slots=True)
class Incident:
    """What happened. Any combination; every instant is aware UTC.

    - ``storage_copied_at``: a copy of the relay's storage, database or backups as of that instant;
    - ``window``: the relay (or its storage) was accessed between these instants;
    - ``transfers``: these transfers were exposed at the relay;
    - ``compromised``: party name → since when its private keys are in other hands.
    """

    storage_copied_at: datetime | None = None
    window: tuple[datetime, datetime] | None = None
    transfers: frozenset[str] = frozenset()
    compromised: Mapping[str, datetime] = field(default_factory=dict)

    def describe(self) -> list[str]:
        out = []
        if self.storage_copied_at:
            out.append(f"copie du stockage du relais au {self.storage_copied_at:%d/%m/%Y %H:%M} UTC")
        if self.window:
            out.append(
                f"accès au relais entre le {self.window[0]:%d/%m/%Y %H:%M} et le {self.window[1]:%d/%m/%Y %H:%M} UTC"
            )
        if self.transfers:
            out.append(f"{len(self.transfers)} transfert(s) désigné(s)")
        for name, since in sorted(self.compromised.items()):
            out.append(f"clé privée de {name} compromise depuis le {since:%d/%m/%Y %H:%M} UTC")
        return out


@dataclass
class Lifecycle:
    """One transfer as the relay's audit export tells it."""

    transfer_id: str
    created: datetime | None = None
    available: datetime | None = None
    deleted: datetime | None = None
    delivered: datetime | None = None  # the recipient's receipt
    recipient: str | None = None
    sender: str | None = None
    downloads: list[tuple[datetime, str]] = field(default_factory=list)

    def stored_at(self, instant: datetime) -> bool:
        """Were its bytes (whole or partial) on the relay at ``instant``?"""
        return self.created is not None and self.created <= instant and (self.deleted is None or self.deleted > instant)

    def stored_during(self, start: datetime, end: datetime) -> bool:
        return self.created is not None and self.created <= end and (self.deleted is None or self.deleted > start)


def lifecycles(audit: Iterable[Mapping[str, Any]]) -> dict[str, Lifecycle]:
    """Per transfer id, from NDJSON audit documents (``labrelay audit export``). Raises ``ValueError`` on a
    document without a valid instant."""
    out: dict[str, Lifecycle] = {}
    for doc in audit:
        tid = doc.get("transfer_id")
        if not tid or doc.get("outcome") != "ok":
            continue
        life = out.setdefault(str(tid), Lifecycle(str(tid)))
        at = from_rfc3339(str(doc.get("at")))
        event = doc.get("event")
        details = doc.get("details") or {}
        if event == "transfer:create" and life.created is None:
            life.created = at
            life.sender = str(doc.get("actor") or "") or None
            life.recipient = str(details.get("recipient") or "") or None
        elif event == "upload:complete":
            life.available = at
        elif event == "receipt:accept" and life.delivered is None:
            life.delivered = at
        elif event == "payload:delete" and life.deleted is None and details.get("verified", True) is not False:
            life.deleted = at
        elif event == "download:serve":
            life.downloads.append((at, str(doc.get("actor"))))
    return out


@dataclass(frozen=True, slots=True)
class TransferFacts:
    """What the sender's ledger says of one transfer."""

    transfer_id: str
    sender: str
    recipient: str
    records: int
    deadline: datetime
    categories: tuple[str, ...]
    created: datetime | None = None  # the sender's clock, when the audit no longer has the relay's


@dataclass(frozen=True, slots=True)
class Finding:
    transfer_id: str
    exposure: Exposure
    why: str


def assess(facts: TransferFacts, life: Lifecycle | None, incident: Incident) -> Finding:
    """How ``incident`` exposed one transfer. Readable beats ciphertext; anything beats none.

    Without the relay's record of its creation (a log pruned or exported in part), the transfer is assumed stored
    from the sender's creation time until its deadline, unless a deletion is recorded: over-reporting is the safe
    side of a breach notification."""
    tid = facts.transfer_id
    note = ""
    if life is None or life.created is None:
        if facts.created is None:
            return Finding(tid, Exposure.NONE, "jamais stocké sur le relais (absent du journal d'audit)")
        deleted = life.deleted if life else None
        downloads = life.downloads if life else []
        delivered = life.delivered if life else None
        life = Lifecycle(tid, created=facts.created, deleted=deleted or facts.deadline, delivered=delivered)
        life.downloads = downloads
        note = " (journal d'audit incomplet : stockage supposé de l'envoi à l'échéance)"
    # The relay serves nothing past the deadline: a stolen key obtains a payload only before min(deleted, deadline).
    gone = min(life.deleted, facts.deadline) if life.deleted else facts.deadline
    in_copy = incident.storage_copied_at is not None and life.stored_at(incident.storage_copied_at)
    in_window = incident.window is not None and life.stored_during(*incident.window)
    named = tid in incident.transfers
    at_relay = in_copy or in_window or named
    since = incident.compromised.get(facts.recipient)
    if since is not None:
        # The recipient's keys open its payloads: whatever could still be obtained after ``since`` is readable —
        # from the relay itself (its signing key lets the thief download), or from a copy exposed at the relay.
        if since < gone or at_relay:
            why = "compromise pendant le stockage" if since < gone else "compromise, et copie exposée au relais"
            return Finding(tid, Exposure.READABLE, f"clé de {facts.recipient} {why}{note}")
        got_it = life.delivered is not None or any(who == facts.recipient for _, who in life.downloads)
        if got_it:
            return Finding(
                tid,
                Exposure.RECIPIENT_SIDE,
                f"remis à {facts.recipient} avant la compromission : à vérifier chez lui{note}",
            )
        return Finding(tid, Exposure.NONE, f"supprimé sans avoir été remis, avant la compromission{note}")
    if at_relay:
        how = "copie du stockage" if in_copy else ("accès pendant la fenêtre" if in_window else "transfert désigné")
        return Finding(tid, Exposure.CIPHERTEXT, f"{how} : chiffré (age) pour une clé que le relais n'a pas{note}")
    return Finding(tid, Exposure.NONE, "non concerné")
