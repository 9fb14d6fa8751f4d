"""``labrelay.ports.NonceStore`` in SQL: request nonces seen within the replay window."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.dialects import postgresql, sqlite

from labrelay.domain.timeutil import to_epoch
from labrelay.storage import schema
from labrelay.storage.sql.engine import Database
from labrelay.storage.sql.group import GroupCommit


class SqlNonces:
    """One row per (signer, nonce): the primary key refuses a replay, on every replica at once. Nonces that arrive
    together are remembered in one transaction (group commit, ``labrelay.storage.sql.group``): each insert is
    ``ON CONFLICT DO NOTHING RETURNING``, and the row handed back says that nonce was new (a duplicate within the
    same transaction included)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._group: GroupCommit[dict[str, object], bool] = GroupCommit(self._write)

    def remember(self, keyid: str, nonce: str, created: datetime) -> bool:
        return self._group.submit({"keyid": keyid, "nonce": nonce, "created": to_epoch(created)})

    def _write(self, rows: list[dict[str, object]]) -> list[bool]:
        insert = postgresql.insert if self._db.postgres else sqlite.insert
        t = schema.nonces
        with self._db.begin() as conn:
            # New only if the database hands the row back: an unknown row count (-1) must never read as "new".
            return [
                conn.execute(insert(t).values(**row).on_conflict_do_nothing().returning(t.c.nonce)).first() is not None
                for row in rows
            ]

    def prune(self, before: datetime) -> int:
        with self._db.begin() as conn:
            result = conn.execute(schema.nonces.delete().where(schema.nonces.c.created < to_epoch(before)))
        return int(result.rowcount or 0)
