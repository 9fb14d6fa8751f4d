"""``labrelay.ports.ControlStore`` in SQL: the kill switch's party locks, relay flags and signed commands."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select
from sqlalchemy.exc import IntegrityError as SqlIntegrityError

from labrelay.domain.timeutil import from_epoch, to_epoch
from labrelay.domain.transfers import QuarantineReason
from labrelay.storage import schema
from labrelay.storage.sql.engine import Database, retrying
from labrelay.storage.sql.rows import OPEN_STATES, dumps, insert_new
from labrelay.storage.sql.transfers import SqlTransfers

SET_LOCK_ATTEMPTS = 3
"""Runs of ``set_lock`` when another process sets the same party's lock at the same moment: each retry decides
again on what is stored, which the other process has just written, so the second run settles it; the third is
margin. (It used to retry without a bound.)"""


class SqlControl:
    """Locks and revocations by party name, flags by name, commands by id. Quarantine is the transfers' own
    statement (``SqlTransfers.quarantine``); the kill switch reaches it through this store."""

    def __init__(self, db: Database, transfers: SqlTransfers) -> None:
        self._db = db
        self._transfers = transfers

    def set_lock(self, name: str, kind: str, reason: str, at: datetime, by: str) -> bool:
        """Lock (or revoke) ``name``; a revocation overrides a lock, never the reverse. True if it changed."""
        return retrying(
            lambda: self._set_lock(name, kind, reason, at, by), on=SqlIntegrityError, attempts=SET_LOCK_ATTEMPTS
        )

    def _set_lock(self, name: str, kind: str, reason: str, at: datetime, by: str) -> bool:
        t = schema.locks
        with self._db.begin() as conn:
            row = conn.execute(select(t.c.kind).where(t.c.name == name)).first()
            if row is not None and row.kind in (kind, "revoke"):
                return False
            conn.execute(t.delete().where(t.c.name == name))
            conn.execute(insert(t).values(name=name, kind=kind, reason=reason, at=to_epoch(at), by=by))
        return True

    def clear_lock(self, name: str) -> bool:
        with self._db.begin() as conn:
            return bool(conn.execute(schema.locks.delete().where(schema.locks.c.name == name)).rowcount)

    def lock_of(self, name: str) -> tuple[str, str] | None:
        """(kind, reason) if ``name`` is locked or revoked on this relay."""
        t = schema.locks
        query = select(t.c.kind, t.c.reason).where(t.c.name == name)

        def load(conn: Connection) -> tuple[str, str] | None:
            row = conn.execute(query).first()
            return (str(row.kind), str(row.reason)) if row else None

        return self._db.standing(("lock", name), load)

    def locks(self) -> list[dict[str, Any]]:
        t = schema.locks
        with self._db.connect() as conn:
            return [
                {"name": r.name, "kind": r.kind, "reason": r.reason, "at": from_epoch(r.at), "by": r.by}
                for r in conn.execute(select(t).order_by(t.c.at, t.c.name))
            ]

    def set_flag(self, name: str, on: bool, at: datetime, by: str) -> bool:
        t = schema.relay_flags
        try:
            with self._db.begin() as conn:
                present = conn.execute(select(t.c.name).where(t.c.name == name)).first() is not None
                if present == on:
                    return False
                if on:
                    conn.execute(insert(t).values(name=name, at=to_epoch(at), by=by))
                else:
                    conn.execute(t.delete().where(t.c.name == name))
        except SqlIntegrityError:
            return False  # another process set it at the same moment
        return True

    def flag(self, name: str) -> bool:
        t = schema.relay_flags
        query = select(t.c.name).where(t.c.name == name)
        return self._db.standing(("flag", name), lambda conn: conn.execute(query).first() is not None)

    def quarantine(
        self, transfer_ids: Sequence[str], at: datetime, reason: QuarantineReason = QuarantineReason.ADMIN
    ) -> list[str]:
        return self._transfers.quarantine(transfer_ids, at, reason)

    def pending_of(self, name: str) -> list[str]:
        """Open transfers ``name`` sent or is to receive."""
        t = schema.transfers
        q = select(t.c.id).where(t.c.state.in_(OPEN_STATES), (t.c.sender == name) | (t.c.recipient == name))
        with self._db.connect() as conn:
            return [str(r.id) for r in conn.execute(q.order_by(t.c.created_at, t.c.id))]

    def record_command(
        self, command_id: str, at: datetime, signer: str, action: str, target: str | None, envelope: Mapping[str, Any]
    ) -> bool:
        """Keep a signed admin command; False if its id was already used (a replayed command)."""
        row = {"id": command_id, "at": to_epoch(at), "signer": signer, "action": action, "target": target}
        return insert_new(self._db, schema.admin_commands, {**row, "envelope": dumps(envelope)})

    def quarantined_count(self) -> int:
        t = schema.transfers
        with self._db.connect() as conn:
            return int(conn.execute(select(func.count()).where(t.c.quarantined_at.is_not(None))).scalar_one())
