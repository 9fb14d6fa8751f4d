"""``labrelay.ports.AuditLog`` in SQL: the hash-chained audit links and their signed head and anchor."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, text, update

from labrelay.domain.audit import (
    GENESIS,
    AuditEntry,
    AuditEvent,
    AuditLink,
    Checkpoint,
    MalformedLink,
    Outcome,
    chain_hash,
)
from labrelay.domain.timeutil import from_epoch, to_epoch
from labrelay.errors import AuditTampered
from labrelay.ports import Sealer
from labrelay.storage import schema
from labrelay.storage.sql.engine import Database, lock_key
from labrelay.storage.sql.group import GroupCommit
from labrelay.storage.sql.rows import dumps

AUDIT_LOCK = lock_key("labrelay:audit-append")
READ_BATCH = 1000  # links read per query while walking the log


class SqlAuditLog:
    """The chain, appended by one transaction at a time: by one thread of this process (a thread lock), and, on
    PostgreSQL, by one process of all that share the database (a transaction-scoped advisory lock).

    Group commit: appends that arrive while a transaction is being written wait for it, then go in the next one
    together, each with its own link and signed head, the last head stored. Each append returns only once its
    transaction is committed, as before; the tamper check of the stored head runs at the start of every
    transaction (within it nobody else can append); a transaction that fails fails every append in it, none
    written. Under load this writes one transaction (one fsync on SQLite) for many appends instead of one each."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._group: GroupCommit[tuple[AuditEntry, str, Sealer], tuple[AuditLink, Checkpoint]] = GroupCommit(
            self._write
        )
        self._lock = self._group.lock  # one writing transaction at a time (appends, pruning)

    def _serialise(self, conn: Connection) -> None:
        """Other processes append to the same chain: on PostgreSQL, one appender at a time, until commit. (SQLite's
        BEGIN IMMEDIATE already holds the database's single write lock.)"""
        if self._db.postgres:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": AUDIT_LOCK})

    def append(self, entry: AuditEntry, seal: Sealer) -> tuple[AuditLink, Checkpoint]:
        """Append after the signed head and replace the head, in one transaction: a link deleted, edited or
        added behind the relay's back no longer matches the signed head."""
        details = dumps(entry.details)  # an entry that cannot be stored fails alone, before it joins a batch
        return self._group.submit((entry, details, seal))

    def _write(self, items: list[tuple[AuditEntry, str, Sealer]]) -> list[tuple[AuditLink, Checkpoint]]:
        t = schema.audit_events
        out: list[tuple[AuditLink, Checkpoint]] = []
        with self._db.begin() as conn:
            self._serialise(conn)
            seq, prev = _head(conn)
            rows = []
            for entry, details, seal in items:
                seq += 1
                digest = chain_hash(entry, seq, prev)
                rows.append(
                    {
                        "seq": seq,
                        "at": to_epoch(entry.at),
                        "event": entry.event.value,
                        "outcome": entry.outcome.value,
                        "actor": entry.actor,
                        "transfer_id": entry.transfer_id,
                        "reason": entry.reason,
                        "details": details,
                        "prev_hash": prev,
                        "hash": digest,
                    }
                )
                checkpoint = seal(seq, digest, entry.at)
                out.append((AuditLink(seq=seq, entry=entry, prev_hash=prev, hash=digest), checkpoint))
                prev = digest
            conn.execute(insert(t), rows)
            _put_checkpoint(conn, "head", out[-1][1])
        return out

    def checkpoint(self, kind: str) -> Checkpoint | None:
        """The signed ``head`` or the ``anchor`` (the last link pruned), as stored."""
        c = schema.audit_checkpoints
        with self._db.connect() as conn:
            row = conn.execute(select(c).where(c.c.kind == kind)).first()
        if row is None:
            return None
        return Checkpoint(
            relay_key=row.relay_key, seq=row.seq, hash=row.hash, at=from_epoch(row.at), signature=row.signature
        )

    def hash_at(self, seq: int) -> str | None:
        t = schema.audit_events
        with self._db.connect() as conn:
            row = conn.execute(select(t.c.hash).where(t.c.seq == seq)).first()
        return str(row.hash) if row else None

    def prune_before(self, before: datetime, seal: Sealer) -> int:
        """Delete the links older than ``before`` (never the head) and sign the last one deleted as the anchor
        the chain now starts from. Returns how many were deleted."""
        t = schema.audit_events
        with self._lock, self._db.begin() as conn:
            self._serialise(conn)
            head_seq, _ = _head(conn)
            last = conn.execute(
                select(t.c.seq, t.c.hash, t.c.at)
                .where(t.c.at < to_epoch(before), t.c.seq < head_seq)
                .order_by(t.c.seq.desc())
                .limit(1)
            ).first()
            if last is None:
                return 0
            result = conn.execute(t.delete().where(t.c.seq <= last.seq))
            _put_checkpoint(conn, "anchor", seal(int(last.seq), str(last.hash), from_epoch(last.at)))
        return int(result.rowcount or 0)

    def links(self, after_seq: int = 0, event: AuditEvent | None = None) -> Iterator[AuditLink]:
        """Links after ``after_seq`` in order; only ``event``'s when given (the filter runs in the database)."""
        t = schema.audit_events
        last = after_seq
        while True:
            query = select(t).where(t.c.seq > last)
            if event is not None:
                query = query.where(t.c.event == event.value)
            with self._db.connect() as conn:
                rows = conn.execute(query.order_by(t.c.seq).limit(READ_BATCH)).all()
            for r in rows:
                yield _link(r)
                last = r.seq
            if len(rows) < READ_BATCH:
                return

    def links_since(self, since: datetime, event: AuditEvent | None = None) -> Iterator[AuditLink]:
        """Links at or after ``since``, only ``event``'s when given (the detector's volume history at start-up:
        reading every link of the last days would slow the start of a busy relay)."""
        t = schema.audit_events
        with self._db.connect() as conn:
            first = conn.execute(select(func.min(t.c.seq)).where(t.c.at >= to_epoch(since))).scalar()
        if first is None:
            return iter(())
        return self.links(int(first) - 1, event)

    def count_events(self) -> dict[str, int]:
        """Links held, by event (the operator's audit summary)."""
        t = schema.audit_events
        with self._db.connect() as conn:
            return {r.event: r.n for r in conn.execute(select(t.c.event, func.count().label("n")).group_by(t.c.event))}

    def activity(self) -> int:
        """Parties and transfers held: a relay with either has served requests, so its log cannot be empty."""
        with self._db.connect() as conn:
            parties = conn.execute(select(func.count()).select_from(schema.parties)).scalar_one()
            transfers = conn.execute(select(func.count()).select_from(schema.transfers)).scalar_one()
        return int(parties) + int(transfers)


def _link(r: Any) -> AuditLink:
    """A stored row as a link; ``MalformedLink`` (naming its seq) if it cannot be read as one."""
    try:
        details = json.loads(r.details)
        if not isinstance(details, dict):
            raise TypeError("details is not an object")
        entry = AuditEntry(
            at=from_epoch(r.at),
            event=AuditEvent(r.event),
            outcome=Outcome(r.outcome),
            actor=r.actor,
            transfer_id=r.transfer_id,
            reason=r.reason,
            details=details,
        )
    except (ValueError, TypeError, OverflowError, OSError) as exc:
        raise MalformedLink(int(r.seq), type(exc).__name__) from None
    return AuditLink(seq=r.seq, entry=entry, prev_hash=r.prev_hash, hash=r.hash)


def _head(conn: Connection) -> tuple[int, str]:
    """(seq, hash) of the last link, as the relay last signed it.

    Without a signed head, only two states are legitimate: an empty log, or a log from before signed heads
    (migration 0003 marked its last link as ``adopted``). Anything else — links but no head, or a head
    whose link is gone or changed — means the log was altered behind the relay's back: appending to it
    would bury the evidence, so the relay refuses (fail closed; ``labrelay audit verify`` says what changed).
    """
    c, t = schema.audit_checkpoints, schema.audit_events
    marks = {r.kind: (int(r.seq), str(r.hash)) for r in conn.execute(select(c.c.kind, c.c.seq, c.c.hash))}
    head = marks.get("head") or marks.get("adopted")
    if head is None:
        if conn.execute(select(t.c.seq).limit(1)).first() is not None:
            raise AuditTampered("the audit log has records but no signed head; run labrelay audit verify")
        return 0, GENESIS
    if head[0] == 0:
        return head
    row = conn.execute(select(t.c.hash).where(t.c.seq == head[0])).first()
    after = conn.execute(select(t.c.seq).where(t.c.seq > head[0]).limit(1)).first()
    if row is None or row.hash != head[1] or after is not None:
        raise AuditTampered(
            f"the audit log no longer ends at its signed head (record {head[0]}); run labrelay audit verify"
        )
    return head


def _put_checkpoint(conn: Connection, kind: str, cp: Checkpoint) -> None:
    c = schema.audit_checkpoints
    values = {
        "seq": cp.seq,
        "hash": cp.hash,
        "at": to_epoch(cp.at),
        "relay_key": cp.relay_key,
        "signature": cp.signature,
    }
    if conn.execute(update(c).where(c.c.kind == kind).values(**values)).rowcount == 0:
        conn.execute(insert(c).values(kind=kind, **values))
