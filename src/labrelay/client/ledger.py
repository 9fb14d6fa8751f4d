"""The sender's ledger: what the breach response needs, kept on the lab's machine, readable only by its DPO.

``DIR/NAME/ledger/`` (0700), per batch::

    <batch>.json          transfer ids, recipients, record counts, deadlines, categories of data, the DPO it is
                          sealed to, and until when it is kept: no personal data
    <batch>.persons.age   the persons index (``labrelay.batch.persons``), gzip'd CSV, age-encrypted to the DPO

A ledger is kept ``retention`` (default 365 days, like the audit log) and purged by the next send after that.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from labrelay.batch.persons import PersonsIndexSink
from labrelay.client.files import SafeDir, private_dir
from labrelay.client.spool import SealedSpool
from labrelay.client.trust import TrustedDirectory
from labrelay.domain.breach import categories_of
from labrelay.domain.parties import PartyEntry, Role
from labrelay.domain.timeutil import from_rfc3339, to_rfc3339
from labrelay.errors import UsageError
from labrelay.jsonfile import read_json, write_json_atomic

LEDGER_DIR = "ledger"
LEDGER_TYPE = "labrelay.ledger.v1"
DEFAULT_RETENTION = timedelta(days=365)


def ledger_dir(party_path: Path) -> Path:
    return private_dir(party_path / LEDGER_DIR)


def choose_dpo(directory: TrustedDirectory, name: str | None) -> PartyEntry:
    """The DPO the ledger is sealed to: the one named, or the only one in force. Fails closed: no ledger, no send."""
    if name is not None:
        return directory.require(name, {Role.DPO})
    dpos = [e for e in directory.in_force() if e.role is Role.DPO]
    if len(dpos) == 1:
        return dpos[0]
    if not dpos:
        raise UsageError(
            "no DPO in the directory: the breach ledger of every send is sealed to the DPO's key",
            hint="enrol one: labrelay party new dpo --role dpo …; labrelay party enroll …",
        )
    raise UsageError(f"several DPOs in the directory ({', '.join(e.name for e in dpos)})", hint="choose with --dpo")


@dataclass
class LedgerWriter:
    """The persons index of one batch, being written; ``finish`` adds the metadata beside it."""

    batch_id: str
    path: Path
    persons: Path
    dpo: PartyEntry
    folder: SafeDir
    spool: SealedSpool  # the persons index, unnamed until finished: a killed send leaves nothing behind
    sink: PersonsIndexSink

    @classmethod
    def open(
        cls, party_path: Path, batch_id: str, dpo: PartyEntry, transfer_ids: dict[str, str], key: str | None
    ) -> LedgerWriter:
        with contextlib.ExitStack() as opening:  # a failure here closes what was opened; else finish or discard do
            folder = opening.enter_context(SafeDir.open(ledger_dir(party_path), create=False))
            spool = opening.enter_context(SealedSpool(folder, dpo.age_recipient))
            sink = PersonsIndexSink(spool.stream(gzip=True), transfer_ids, key)
            opening.pop_all()
        path, persons = folder.path / f"{batch_id}.json", folder.path / f"{batch_id}.persons.age"
        return cls(batch_id, path, persons, dpo, folder, spool, sink)

    def finish(
        self, sender: str, created: datetime, policy: str, transfers: list[dict[str, Any]], keep: timedelta
    ) -> None:
        self.spool.seal()
        self.spool.publish(self.persons.name)
        self.folder.close()
        write_json_atomic(
            self.path,
            {
                "type": LEDGER_TYPE,
                "batch_id": self.batch_id,
                "sender": sender,
                "created": to_rfc3339(created),
                "policy_version": policy,
                "dpo": {"name": self.dpo.name, "age_recipient": self.dpo.age_recipient},
                "persons_file": self.persons.name,
                "patients": self.sink.patients,
                "professionals": self.sink.professionals,
                "keep_until": to_rfc3339(created + keep),
                "transfers": transfers,
            },
        )

    def discard(self) -> None:
        self.spool.discard()
        self.folder.close()
        if self.path.exists():  # finished, then the send failed: nothing of it is kept
            self.persons.unlink(missing_ok=True)
            self.path.unlink(missing_ok=True)


def transfer_fact(
    transfer_id: str, recipient: str, recipient_key: str, records: int, deadline: datetime, fields: tuple[str, ...]
) -> dict[str, Any]:
    return {
        "transfer_id": transfer_id,
        "recipient": recipient,
        "recipient_key": recipient_key,  # the age key it was sealed to: which key's compromise reads it
        "records": records,
        "deadline": to_rfc3339(deadline),
        "fields": list(fields),
        "categories": categories_of(fields),
    }


def purge(party_path: Path, now: datetime) -> list[str]:
    """Delete the ledgers kept past their time; returns their batch ids."""
    folder = party_path / LEDGER_DIR
    gone = []
    for meta in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            doc = read_json(meta)
            keep_until = from_rfc3339(str(doc["keep_until"]))
            persons = Path(str(doc["persons_file"]))
        except (OSError, KeyError, ValueError):
            continue  # not a ledger of ours: never deleted, never in the way of a send
        if keep_until <= now:
            if persons.name == str(persons) and persons.name.endswith(".persons.age"):
                (folder / persons.name).unlink(missing_ok=True)
            meta.unlink()
            gone.append(str(doc.get("batch_id")))
    return gone
