"""The S3 payload store's ledger in SQL (``labrelay.storage.s3.ObjectLedger``): what the store wrote for each
transfer, so that an upload's chain and a payload's index are read from the database, not listed from the bucket."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError as SqlIntegrityError

from labrelay.storage import schema
from labrelay.storage.ledger import LedgerRow
from labrelay.storage.sql.engine import Database


class SqlObjectLedger:
    def __init__(self, db: Database) -> None:
        self._db = db

    def rows(self, transfer_id: str) -> list[LedgerRow]:
        t = schema.payload_objects
        with self._db.connect() as conn:
            found = conn.execute(select(t).where(t.c.transfer_id == transfer_id).order_by(t.c.name)).all()
        return [
            LedgerRow(r.name, r.state, r.start, r.end, r.stored, r.etag, r.version, int(r.attempts), r.body)
            for r in found
        ]

    def create(self, transfer_id: str, name: str, body: str, end: int | None = None) -> bool:
        """Insert a row that exists only here (the header, the publication); False if it exists already."""
        values = {"transfer_id": transfer_id, "name": name, "state": "stored", "end": end, "attempts": 1, "body": body}
        try:
            with self._db.begin() as conn:
                conn.execute(insert(schema.payload_objects).values(**values))
        except SqlIntegrityError:
            return False
        return True

    def pending(self, transfer_id: str, name: str, start: int, end: int) -> None:
        """A chunk object is about to be PUT: recorded first, so that whatever lands is known. A key PUT before
        counts one more attempt (an earlier version may exist)."""
        t = schema.payload_objects
        with self._db.begin() as conn:
            where = (t.c.transfer_id == transfer_id, t.c.name == name)
            done = conn.execute(update(t).where(*where).values(state="pending", attempts=t.c.attempts + 1))
            if not done.rowcount:
                conn.execute(
                    insert(t).values(
                        transfer_id=transfer_id, name=name, state="pending", start=start, end=end, attempts=1
                    )
                )

    def stored(self, transfer_id: str, name: str, stored: int, etag: str, version: str | None, retried: bool) -> None:
        t = schema.payload_objects
        values: dict[str, object] = {"state": "stored", "stored": stored, "etag": etag, "version": version}
        if retried:  # the client sent it more than once: a versioned bucket may hold a version not named here
            values["attempts"] = t.c.attempts + 1
        with self._db.begin() as conn:
            conn.execute(update(t).where(t.c.transfer_id == transfer_id, t.c.name == name).values(**values))

    def mark(self, transfer_id: str, names: Sequence[str], state: str) -> None:
        t = schema.payload_objects
        with self._db.begin() as conn:
            conn.execute(update(t).where(t.c.transfer_id == transfer_id, t.c.name.in_(names)).values(state=state))

    def remove(self, transfer_id: str, names: Sequence[str] | None = None) -> None:
        t = schema.payload_objects
        query = delete(t).where(t.c.transfer_id == transfer_id)
        if names is not None:
            query = query.where(t.c.name.in_(names))
        with self._db.begin() as conn:
            conn.execute(query)

    def ids(self) -> list[str]:
        t = schema.payload_objects
        with self._db.connect() as conn:
            return [r[0] for r in conn.execute(select(t.c.transfer_id).distinct().order_by(t.c.transfer_id))]
