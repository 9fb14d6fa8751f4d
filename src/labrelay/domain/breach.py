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
    "sexe": "identity",
    "age": "identity",
    "pseudonyme": "pseudonym",
    "adresse": "contact",
    "code_postal": "contact",
    "code_commune_insee": "contact",
    "commune": "contact",
    "telephone": "contact",
    "email": "contact",
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
    "identity": "état civil (nom, prénom, date de naissance, sexe)",
    "nir": "numéro de sécurité sociale (NIR)",
    "contact": "coordonnées (adresse, téléphone, courriel)",
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
    downloads: list[tuple[datetime, str]] = field(default_factory=list)

    def stored_at(self, instant: datetime) -> bool:
        """Were its bytes (whole or partial) on the relay at ``instant``?"""
        return self.created is not None and self.created <= instant and (self.deleted is None or self.deleted > instant)

    def stored_during(self, start: datetime, end: datetime) -> bool:
        return self.created is not None and self.created <= end and (self.deleted is None or self.deleted > start)


def lifecycles(audit: Iterable[Mapping[str, Any]]) -> dict[str, Lifecycle]:
    """Per transfer id, from NDJSON audit documents (``labrelay audit export``)."""
    out: dict[str, Lifecycle] = {}
    for doc in audit:
        tid = doc.get("transfer_id")
        if not tid or doc.get("outcome") != "ok":
            continue
        life = out.setdefault(tid, Lifecycle(tid))
        at = from_rfc3339(str(doc["at"]))
        event = doc.get("event")
        if event == "transfer:create" and life.created is None:
            life.created = at
        elif event == "upload:complete":
            life.available = at
        elif event == "payload:delete" and life.deleted is None:
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


@dataclass(frozen=True, slots=True)
class Finding:
    transfer_id: str
    exposure: Exposure
    why: str


def assess(facts: TransferFacts, life: Lifecycle | None, incident: Incident) -> Finding:
    """How ``incident`` exposed one transfer. Readable beats ciphertext; anything beats none."""
    tid = facts.transfer_id
    if life is None or life.created is None:
        return Finding(tid, Exposure.NONE, "jamais stocké sur le relais (absent du journal d'audit)")
    in_copy = incident.storage_copied_at is not None and life.stored_at(incident.storage_copied_at)
    in_window = incident.window is not None and life.stored_during(*incident.window)
    named = tid in incident.transfers
    at_relay = in_copy or in_window or named
    since = incident.compromised.get(facts.recipient)
    if since is not None:
        # The recipient's keys open its payloads: whatever could still be obtained after ``since`` is readable —
        # from the relay itself (its signing key lets the thief download), or from a copy exposed at the relay.
        if life.deleted is None or life.deleted > since:
            return Finding(tid, Exposure.READABLE, f"clé de {facts.recipient} compromise pendant le stockage")
        if at_relay:
            return Finding(tid, Exposure.READABLE, f"copie exposée, et clé de {facts.recipient} compromise")
        return Finding(
            tid, Exposure.RECIPIENT_SIDE, f"remis à {facts.recipient} avant la compromission: à vérifier chez lui"
        )
    if at_relay:
        how = "copie du stockage" if in_copy else ("accès pendant la fenêtre" if in_window else "transfert désigné")
        return Finding(tid, Exposure.CIPHERTEXT, f"{how}: chiffré (age) pour une clé que le relais n'a pas")
    return Finding(tid, Exposure.NONE, "non concerné")
