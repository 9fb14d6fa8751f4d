"""``labrelay.ports.DirectoryRepository`` in SQL: signed party entries and revocations, kept verbatim."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, select

from labrelay.domain.parties import PartyEntry, Revocation, Role
from labrelay.domain.timeutil import from_epoch, to_epoch
from labrelay.storage import schema
from labrelay.storage.sql.engine import Database
from labrelay.storage.sql.rows import dumps, insert_new


class SqlDirectory:
    """Party entries and revocations, each next to the envelope the authority signed."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add_entry(self, entry: PartyEntry, envelope: Mapping[str, Any], at: datetime) -> bool:
        row = {
            "serial": entry.serial,
            "name": entry.name,
            "role": entry.role.value,
            "region": entry.region,
            "age_recipient": entry.age_recipient,
            "signing_key": entry.signing_key,
            "not_before": to_epoch(entry.not_before),
            "not_after": to_epoch(entry.not_after),
            "issued_at": to_epoch(entry.issued_at),
            "envelope": dumps(envelope),
            "registered_at": to_epoch(at),
        }
        return insert_new(self._db, schema.parties, row, look_first=schema.parties.c.serial)

    def add_revocation(self, revocation: Revocation, envelope: Mapping[str, Any], at: datetime) -> bool:
        row = {
            "serial": revocation.serial,
            "name": revocation.name,
            "revoked_at": to_epoch(revocation.revoked_at),
            "reason": revocation.reason,
            "envelope": dumps(envelope),
            "registered_at": to_epoch(at),
        }
        return insert_new(self._db, schema.revocations, row, look_first=schema.revocations.c.serial)

    def entries(self, name: str | None = None) -> list[PartyEntry]:
        """Every entry (of ``name``), oldest issue first; one party's are kept between requests while the directory
        is unchanged (``Database.standing``)."""
        t = schema.parties
        q = select(t)
        if name is None:
            with self._db.connect() as conn:
                return [_entry(r) for r in conn.execute(q.order_by(t.c.issued_at))]
        named = q.where(t.c.name == name).order_by(t.c.issued_at)
        return list(self._db.standing(("entries", name), lambda conn: tuple(_entry(r) for r in conn.execute(named))))

    def revocations(self, name: str | None = None) -> list[Revocation]:
        """Every revocation (of ``name``), oldest first; one party's kept like its entries."""
        t = schema.revocations
        q = select(t)
        if name is None:
            with self._db.connect() as conn:
                return list(_revocations(conn, q.order_by(t.c.revoked_at)))
        named = q.where(t.c.name == name).order_by(t.c.revoked_at)
        return list(self._db.standing(("revocations", name), lambda conn: _revocations(conn, named)))

    def envelopes(self) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
        with self._db.connect() as conn:
            ents = [
                json.loads(r.envelope)
                for r in conn.execute(select(schema.parties.c.envelope).order_by(schema.parties.c.issued_at))
            ]
            revs = [
                json.loads(r.envelope)
                for r in conn.execute(select(schema.revocations.c.envelope).order_by(schema.revocations.c.revoked_at))
            ]
        return ents, revs


def _revocations(conn: Connection, query: Select[Any]) -> tuple[Revocation, ...]:
    return tuple(
        Revocation(name=r.name, revoked_at=from_epoch(r.revoked_at), reason=r.reason, serial=r.serial)
        for r in conn.execute(query)
    )


def _entry(row: Any) -> PartyEntry:
    return PartyEntry(
        name=row.name,
        role=Role(row.role),
        region=row.region,
        age_recipient=row.age_recipient,
        signing_key=row.signing_key,
        not_before=from_epoch(row.not_before),
        not_after=from_epoch(row.not_after),
        issued_at=from_epoch(row.issued_at),
        serial=row.serial,
    )
