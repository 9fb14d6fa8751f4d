"""``labrelay.ports.NonceStore`` in SQL: request nonces seen within the replay window."""

from __future__ import annotations

from datetime import datetime

from labrelay.domain.timeutil import to_epoch
from labrelay.storage import schema
from labrelay.storage.sql.engine import Database
from labrelay.storage.sql.rows import insert_new


class SqlNonces:
    """One row per (signer, nonce): the primary key refuses a replay, on every replica at once."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def remember(self, keyid: str, nonce: str, created: datetime) -> bool:
        return insert_new(self._db, schema.nonces, {"keyid": keyid, "nonce": nonce, "created": to_epoch(created)})

    def prune(self, before: datetime) -> int:
        with self._db.begin() as conn:
            result = conn.execute(schema.nonces.delete().where(schema.nonces.c.created < to_epoch(before)))
        return int(result.rowcount or 0)
