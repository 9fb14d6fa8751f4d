"""SQL implementations of the relay's metadata ports (SQLAlchemy Core): SQLite (WAL) by default, PostgreSQL at scale.

The same statements run on both. Where several processes share one PostgreSQL database (relay replicas and the
worker), what one process serialised with a thread lock is serialised across processes too: the audit chain's
appends under a transaction-scoped advisory lock, transfer uploads under session advisory locks
(``SqlTransferLocks``), and the worker's leadership under a session advisory lock held for its life
(``SqlLeader``). Every database failure reaches callers as ``Unavailable`` (retry later) or ``StorageFull``, never
as a driver exception: the HTTP edge maps those to 503 and 507, which clients retry.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError, InterfaceError
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.exc import OperationalError as SqlOperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from labrelay.domain.audit import (
    GENESIS,
    AuditEntry,
    AuditEvent,
    AuditRecord,
    Checkpoint,
    MalformedRecord,
    Outcome,
    chain_hash,
)
from labrelay.domain.parties import PartyEntry, Revocation, Role
from labrelay.domain.policy import PolicyWithdrawal
from labrelay.domain.timeutil import from_epoch, to_epoch
from labrelay.domain.transfers import Manifest, QuarantineReason, TransferRecord, TransferState
from labrelay.errors import AuditTampered, Conflict, StorageFull, Unavailable
from labrelay.ports import Sealer
from labrelay.storage import schema


def _dumps(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _quarantine_reason(value: str | None) -> QuarantineReason | None:
    """The stored reason of a hold; one this version does not know reads as an administrator's."""
    if value is None:
        return None
    try:
        return QuarantineReason(value)
    except ValueError:
        return QuarantineReason.ADMIN


def sqlite_engine(path: Path) -> Engine:
    """A SQLite engine in WAL mode, fully synchronous, where every transaction takes the write lock up front.

    ``BEGIN IMMEDIATE`` serialises writers at the start of a transaction instead of failing with "database is
    locked" when a reader tries to upgrade; with WAL, readers in other processes are never blocked.
    """
    engine = create_engine(f"sqlite+pysqlite:///{path}", connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA secure_delete=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def postgres_engine(url: str, max_connections: int, pool_timeout: float = 30) -> Engine:
    """A PostgreSQL engine whose pool checks a connection before using it, so that after a database restart the
    next request reconnects instead of failing; at most ``max_connections`` from this process, a caller waiting at
    most ``pool_timeout`` seconds for one to be free."""
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=min(10, max_connections),
        max_overflow=max(0, max_connections - 10),
        pool_timeout=pool_timeout,
        connect_args={"connect_timeout": 5},
    )


def _translate(exc: DBAPIError) -> Exception:
    message = str(exc.orig).lower() if exc.orig is not None else str(exc).lower()
    if ("disk" in message and "full" in message) or "no space left" in message:
        return StorageFull("the relay's database disk is full; retry later")
    return Unavailable("the relay's database is unavailable; retry later")


def _busy() -> Unavailable:
    return Unavailable("the relay's database connections are all in use; retry later")


_F = TypeVar("_F", bound=Callable[..., Any])
_DB_ERRORS = (SqlOperationalError, InterfaceError)


def _is_outage(exc: DBAPIError) -> bool:
    return isinstance(exc, _DB_ERRORS) or exc.connection_invalidated


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """Driver failures (a restarted or unreachable database, a full disk, every connection in use) become
    ``Unavailable``/``StorageFull``; anything else (a constraint, a programming error) passes through."""
    try:
        yield
    except PoolTimeout as exc:
        raise _busy() from exc
    except DBAPIError as exc:
        if not _is_outage(exc):
            raise
        raise _translate(exc) from exc


def _guarded(fn: _F) -> _F:
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen(*args: Any, **kwargs: Any) -> Any:
            with _translated():
                yield from fn(*args, **kwargs)

        return gen  # type: ignore[return-value]

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with _translated():
            return fn(*args, **kwargs)

    return call  # type: ignore[return-value]


def _guard_public(cls: type) -> type:
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.isfunction(member):
            setattr(cls, name, _guarded(member))
    return cls


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``name``."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


AUDIT_LOCK = lock_key("labrelay:audit-append")
LEADER_LOCK = lock_key("labrelay:worker-leader")


@_guard_public
class SqlStore:
    """Directory, nonces, transfers and the audit chain, in one database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"
        self._audit_lock = threading.Lock()

    def _serialise_audit(self, conn: Connection) -> None:
        """Other processes append to the same chain: on PostgreSQL, one appender at a time, until commit. (SQLite's
        BEGIN IMMEDIATE already holds the database's single write lock.)"""
        if self.postgres:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": AUDIT_LOCK})

    # ------------------------------------------------------------ directory

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
            "envelope": _dumps(envelope),
            "registered_at": to_epoch(at),
        }
        try:
            with self.engine.begin() as conn:
                if conn.execute(select(schema.parties.c.serial).where(schema.parties.c.serial == entry.serial)).first():
                    return False
                conn.execute(insert(schema.parties).values(**row))
        except SqlIntegrityError:
            return False  # another replica stored it between our check and our insert
        return True

    def add_revocation(self, revocation: Revocation, envelope: Mapping[str, Any], at: datetime) -> bool:
        row = {
            "serial": revocation.serial,
            "name": revocation.name,
            "revoked_at": to_epoch(revocation.revoked_at),
            "reason": revocation.reason,
            "envelope": _dumps(envelope),
            "registered_at": to_epoch(at),
        }
        t = schema.revocations
        try:
            with self.engine.begin() as conn:
                if conn.execute(select(t.c.serial).where(t.c.serial == revocation.serial)).first():
                    return False
                conn.execute(insert(t).values(**row))
        except SqlIntegrityError:
            return False
        return True

    @staticmethod
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

    def entries(self, name: str | None = None) -> list[PartyEntry]:
        q = select(schema.parties)
        if name is not None:
            q = q.where(schema.parties.c.name == name)
        with self.engine.connect() as conn:
            return [self._entry(r) for r in conn.execute(q.order_by(schema.parties.c.issued_at))]

    def revocations(self, name: str | None = None) -> list[Revocation]:
        t = schema.revocations
        q = select(t)
        if name is not None:
            q = q.where(t.c.name == name)
        with self.engine.connect() as conn:
            return [
                Revocation(name=r.name, revoked_at=from_epoch(r.revoked_at), reason=r.reason, serial=r.serial)
                for r in conn.execute(q.order_by(t.c.revoked_at))
            ]

    def envelopes(self) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
        with self.engine.connect() as conn:
            ents = [
                json.loads(r.envelope)
                for r in conn.execute(select(schema.parties.c.envelope).order_by(schema.parties.c.issued_at))
            ]
            revs = [
                json.loads(r.envelope)
                for r in conn.execute(select(schema.revocations.c.envelope).order_by(schema.revocations.c.revoked_at))
            ]
        return ents, revs

    # ------------------------------------------------------------ policies

    def add_policy(
        self, version: str, envelope: Mapping[str, Any], at: datetime, *, issue: int, not_after: datetime
    ) -> bool:
        t = schema.policies
        values = {"envelope": _dumps(envelope), "registered_at": to_epoch(at), "issue": issue}
        values["not_after"] = to_epoch(not_after)
        try:
            with self.engine.begin() as conn:
                if conn.execute(select(t.c.version).where(t.c.version == version)).first() is None:
                    conn.execute(insert(t).values(version=version, **values))
                    return True
                # A later issue of a version held replaces it (a renewal); never an earlier one, even in a race.
                replaced = conn.execute(
                    update(t)
                    .where(t.c.version == version, (t.c.issue.is_(None)) | (t.c.issue < issue))
                    .values(**values)
                )
                return replaced.rowcount == 1
        except SqlIntegrityError:
            held = self.policy(version)
            if held is not None and dict(held) == dict(envelope):
                return False  # stored concurrently
            raise Conflict(f"routing policy issue {issue} is already registered for another policy") from None

    def policy(self, version: str | None = None) -> Mapping[str, Any] | None:
        """The envelope of ``version``, or, without one, of the policy with the highest issue number (a policy
        signed before issue numbers has none, and is never the policy in force)."""
        t = schema.policies
        q = select(t.c.envelope)
        q = q.where(t.c.version == version) if version is not None else q.where(t.c.issue.is_not(None))
        with self.engine.connect() as conn:
            row = conn.execute(q.order_by(t.c.issue.desc()).limit(1)).first()
        return json.loads(row.envelope) if row else None

    def add_policy_withdrawal(self, withdrawal: PolicyWithdrawal, envelope: Mapping[str, Any], at: datetime) -> bool:
        t = schema.policy_withdrawals
        row = {
            "serial": withdrawal.serial,
            "version": withdrawal.version,
            "withdrawn_at": to_epoch(withdrawal.withdrawn_at),
            "reason": withdrawal.reason,
            "envelope": _dumps(envelope),
            "registered_at": to_epoch(at),
        }
        try:
            with self.engine.begin() as conn:
                if conn.execute(select(t.c.serial).where(t.c.serial == withdrawal.serial)).first():
                    return False
                conn.execute(insert(t).values(**row))
        except SqlIntegrityError:
            return False
        return True

    def policy_withdrawals(self) -> list[tuple[PolicyWithdrawal, Mapping[str, Any]]]:
        t = schema.policy_withdrawals
        with self.engine.connect() as conn:
            rows = conn.execute(select(t).order_by(t.c.withdrawn_at, t.c.serial)).all()
        return [
            (
                PolicyWithdrawal(
                    version=r.version, withdrawn_at=from_epoch(r.withdrawn_at), reason=r.reason, serial=r.serial
                ),
                json.loads(r.envelope),
            )
            for r in rows
        ]

    # ------------------------------------------------------------ nonces

    def remember(self, keyid: str, nonce: str, created: datetime) -> bool:
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(schema.nonces).values(keyid=keyid, nonce=nonce, created=to_epoch(created)))
        except SqlIntegrityError:
            return False
        return True

    def prune(self, before: datetime) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(schema.nonces.delete().where(schema.nonces.c.created < to_epoch(before)))
        return int(result.rowcount or 0)

    # ------------------------------------------------------------ transfers

    @staticmethod
    def _record(row: Any) -> TransferRecord:
        envelope = json.loads(row.manifest)
        return TransferRecord(
            manifest=Manifest.from_payload(envelope["payload"]),
            manifest_envelope=envelope,
            state=TransferState(row.state),
            uploaded=row.uploaded,
            created_at=from_epoch(row.created_at),
            updated_at=from_epoch(row.updated_at),
            receipt_envelope=json.loads(row.receipt) if row.receipt else None,
            quarantined_at=from_epoch(row.quarantined_at) if row.quarantined_at is not None else None,
            refusal_envelope=json.loads(row.refusal_envelope) if row.refusal_envelope else None,
            quarantine_reason=_quarantine_reason(row.quarantine_reason),
        )

    def create(self, record: TransferRecord) -> None:
        m = record.manifest
        row = {
            "id": m.transfer_id,
            "batch_id": m.batch_id,
            "sender": m.sender,
            "recipient": m.recipient,
            "state": record.state.value,
            "size": m.size,
            "uploaded": record.uploaded,
            "sha256": m.sha256,
            "deadline": to_epoch(m.deadline),
            "created_at": to_epoch(record.created_at),
            "updated_at": to_epoch(record.updated_at),
            "manifest": _dumps(record.manifest_envelope),
            "receipt": None,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(schema.transfers).values(**row))
        except SqlIntegrityError:
            raise Conflict(f"transfer {m.transfer_id} already exists") from None

    def get(self, transfer_id: str) -> TransferRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(schema.transfers).where(schema.transfers.c.id == transfer_id)).first()
        return self._record(row) if row else None

    def set_uploaded(self, transfer_id: str, uploaded: int, at: datetime) -> None:
        t = schema.transfers
        with self.engine.begin() as conn:
            conn.execute(update(t).where(t.c.id == transfer_id).values(uploaded=uploaded, updated_at=to_epoch(at)))

    def transition(
        self,
        transfer_id: str,
        from_states: Sequence[TransferState],
        to_state: TransferState,
        at: datetime,
        receipt_envelope: Mapping[str, Any] | None = None,
        *,
        unless_quarantined: bool = False,
    ) -> bool:
        t = schema.transfers
        values: dict[str, Any] = {"state": to_state.value, "updated_at": to_epoch(at)}
        if receipt_envelope is not None:
            values["receipt"] = _dumps(receipt_envelope)
        where = [t.c.id == transfer_id, t.c.state.in_([s.value for s in from_states])]
        if unless_quarantined:
            where.append(t.c.quarantined_at.is_(None))
        with self.engine.begin() as conn:
            result = conn.execute(update(t).where(*where).values(**values))
        return bool(result.rowcount)

    def refuse(self, transfer_id: str, refusal_envelope: Mapping[str, Any], at: datetime) -> bool:
        """Keep the recipient's signed refusal and quarantine the transfer, in one statement, if it is available and
        not refused yet (an earlier quarantine keeps its time); False otherwise."""
        t = schema.transfers
        with self.engine.begin() as conn:
            result = conn.execute(
                update(t)
                .where(
                    t.c.id == transfer_id,
                    t.c.state == TransferState.AVAILABLE.value,
                    t.c.refusal_envelope.is_(None),
                )
                .values(
                    refusal_envelope=_dumps(refusal_envelope),
                    quarantined_at=func.coalesce(t.c.quarantined_at, to_epoch(at)),
                    quarantine_reason=func.coalesce(t.c.quarantine_reason, QuarantineReason.REFUSED.value),
                    updated_at=to_epoch(at),
                )
            )
        return bool(result.rowcount)

    def for_recipient(self, recipient: str, states: Sequence[TransferState]) -> list[TransferRecord]:
        t = schema.transfers
        q = select(t).where(t.c.recipient == recipient, t.c.state.in_([s.value for s in states]))
        with self.engine.connect() as conn:
            return [self._record(r) for r in conn.execute(q.order_by(t.c.created_at, t.c.id))]

    def for_sender(self, sender: str) -> list[TransferRecord]:
        t = schema.transfers
        with self.engine.connect() as conn:
            rows = conn.execute(select(t).where(t.c.sender == sender).order_by(t.c.created_at, t.c.id))
            return [self._record(r) for r in rows]

    def recent(self, limit: int) -> list[TransferRecord]:
        t = schema.transfers
        with self.engine.connect() as conn:
            rows = conn.execute(select(t).order_by(t.c.created_at.desc(), t.c.id).limit(limit))
            return [self._record(r) for r in rows]

    _OPEN = (TransferState.UPLOADING.value, TransferState.AVAILABLE.value)

    def open_past(self, now: datetime) -> list[TransferRecord]:
        t = schema.transfers
        q = select(t).where(t.c.state.in_(self._OPEN), t.c.deadline <= to_epoch(now)).order_by(t.c.deadline, t.c.id)
        with self.engine.connect() as conn:
            return [self._record(r) for r in conn.execute(q)]

    def open_transfers(self) -> list[TransferRecord]:
        t = schema.transfers
        with self.engine.connect() as conn:
            rows = conn.execute(select(t).where(t.c.state.in_(self._OPEN)).order_by(t.c.deadline, t.c.id))
            return [self._record(r) for r in rows]

    def for_key(self, recipient: str, age_recipient: str) -> list[TransferRecord]:
        t = schema.transfers
        q = select(t).where(t.c.recipient == recipient, t.c.state.in_(self._OPEN))
        with self.engine.connect() as conn:
            records = [self._record(r) for r in conn.execute(q.order_by(t.c.deadline, t.c.id))]
        return [r for r in records if r.manifest.recipient_key == age_recipient]

    # ------------------------------------------------------------ audit

    def append(self, entry: AuditEntry, seal: Sealer) -> tuple[AuditRecord, Checkpoint]:
        """Append after the signed head and replace the head, in one transaction: a record deleted, edited or
        added behind the relay's back no longer matches the signed head."""
        t = schema.audit_events
        with self._audit_lock, self.engine.begin() as conn:
            self._serialise_audit(conn)
            seq, prev = self._head(conn)
            seq += 1
            digest = chain_hash(entry, seq, prev)
            conn.execute(
                insert(t).values(
                    seq=seq,
                    at=to_epoch(entry.at),
                    event=entry.event.value,
                    outcome=entry.outcome.value,
                    actor=entry.actor,
                    transfer_id=entry.transfer_id,
                    reason=entry.reason,
                    details=_dumps(entry.details),
                    prev_hash=prev,
                    hash=digest,
                )
            )
            checkpoint = seal(seq, digest, entry.at)
            self._put_checkpoint(conn, "head", checkpoint)
        return AuditRecord(seq=seq, entry=entry, prev_hash=prev, hash=digest), checkpoint

    @staticmethod
    def _head(conn: Connection) -> tuple[int, str]:
        """(seq, hash) of the last record, as the relay last signed it.

        Without a signed head, only two states are legitimate: an empty log, or a log from before signed heads
        (migration 0003 marked its last record as ``adopted``). Anything else — records but no head, or a head
        whose record is gone or changed — means the log was altered behind the relay's back: appending to it
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

    @staticmethod
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

    def checkpoint(self, kind: str) -> Checkpoint | None:
        """The signed ``head`` or the ``anchor`` (the last record pruned), as stored."""
        c = schema.audit_checkpoints
        with self.engine.connect() as conn:
            row = conn.execute(select(c).where(c.c.kind == kind)).first()
        if row is None:
            return None
        return Checkpoint(
            relay_key=row.relay_key, seq=row.seq, hash=row.hash, at=from_epoch(row.at), signature=row.signature
        )

    def hash_at(self, seq: int) -> str | None:
        t = schema.audit_events
        with self.engine.connect() as conn:
            row = conn.execute(select(t.c.hash).where(t.c.seq == seq)).first()
        return str(row.hash) if row else None

    def prune_before(self, before: datetime, seal: Sealer) -> int:
        """Delete the records older than ``before`` (never the head) and sign the last one deleted as the anchor
        the chain now starts from. Returns how many were deleted."""
        t = schema.audit_events
        with self._audit_lock, self.engine.begin() as conn:
            self._serialise_audit(conn)
            head_seq, _ = self._head(conn)
            last = conn.execute(
                select(t.c.seq, t.c.hash, t.c.at)
                .where(t.c.at < to_epoch(before), t.c.seq < head_seq)
                .order_by(t.c.seq.desc())
                .limit(1)
            ).first()
            if last is None:
                return 0
            result = conn.execute(t.delete().where(t.c.seq <= last.seq))
            self._put_checkpoint(conn, "anchor", seal(int(last.seq), str(last.hash), from_epoch(last.at)))
        return int(result.rowcount or 0)

    def records(self, after_seq: int = 0, event: AuditEvent | None = None) -> Iterator[AuditRecord]:
        """Records after ``after_seq`` in order; only ``event``'s when given (the filter runs in the database)."""
        t = schema.audit_events
        batch = 1000
        last = after_seq
        while True:
            query = select(t).where(t.c.seq > last)
            if event is not None:
                query = query.where(t.c.event == event.value)
            with self.engine.connect() as conn:
                rows = conn.execute(query.order_by(t.c.seq).limit(batch)).all()
            for r in rows:
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
                    raise MalformedRecord(int(r.seq), type(exc).__name__) from None
                yield AuditRecord(seq=r.seq, entry=entry, prev_hash=r.prev_hash, hash=r.hash)
                last = r.seq
            if len(rows) < batch:
                return

    def records_since(self, since: datetime, event: AuditEvent | None = None) -> Iterator[AuditRecord]:
        """Records at or after ``since``, only ``event``'s when given (the detector's volume history at start-up:
        reading every record of the last days would slow the start of a busy relay)."""
        t = schema.audit_events
        with self.engine.connect() as conn:
            first = conn.execute(select(func.min(t.c.seq)).where(t.c.at >= to_epoch(since))).scalar()
        if first is None:
            return iter(())
        return self.records(int(first) - 1, event)

    def count_events(self) -> dict[str, int]:
        t = schema.audit_events
        with self.engine.connect() as conn:
            return {r.event: r.n for r in conn.execute(select(t.c.event, func.count().label("n")).group_by(t.c.event))}

    # ------------------------------------------------------------ control: locks, freeze, quarantine

    def set_lock(self, name: str, kind: str, reason: str, at: datetime, by: str) -> bool:
        """Lock (or revoke) ``name``; a revocation overrides a lock, never the reverse. True if it changed."""
        t = schema.locks
        try:
            with self.engine.begin() as conn:
                row = conn.execute(select(t.c.kind).where(t.c.name == name)).first()
                if row is not None and row.kind in (kind, "revoke"):
                    return False
                conn.execute(t.delete().where(t.c.name == name))
                conn.execute(insert(t).values(name=name, kind=kind, reason=reason, at=to_epoch(at), by=by))
        except SqlIntegrityError:
            return self.set_lock(name, kind, reason, at, by)  # set concurrently: decide again on what is stored
        return True

    def clear_lock(self, name: str) -> bool:
        with self.engine.begin() as conn:
            return bool(conn.execute(schema.locks.delete().where(schema.locks.c.name == name)).rowcount)

    def lock_of(self, name: str) -> tuple[str, str] | None:
        """(kind, reason) if ``name`` is locked or revoked on this relay."""
        t = schema.locks
        with self.engine.connect() as conn:
            row = conn.execute(select(t.c.kind, t.c.reason).where(t.c.name == name)).first()
        return (str(row.kind), str(row.reason)) if row else None

    def locks(self) -> list[dict[str, Any]]:
        t = schema.locks
        with self.engine.connect() as conn:
            return [
                {"name": r.name, "kind": r.kind, "reason": r.reason, "at": from_epoch(r.at), "by": r.by}
                for r in conn.execute(select(t).order_by(t.c.at, t.c.name))
            ]

    def set_flag(self, name: str, on: bool, at: datetime, by: str) -> bool:
        t = schema.relay_flags
        try:
            with self.engine.begin() as conn:
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
        with self.engine.connect() as conn:
            return conn.execute(select(t.c.name).where(t.c.name == name)).first() is not None

    def quarantine(
        self, transfer_ids: Sequence[str], at: datetime, reason: QuarantineReason = QuarantineReason.ADMIN
    ) -> list[str]:
        """Hold these transfers (those not already held and still open) for ``reason``; returns the ids newly held.
        One statement per transfer: when two replicas hold the same transfer at once, one of them holds it."""
        t = schema.transfers
        held: list[str] = []
        with self.engine.begin() as conn:
            for tid in transfer_ids:
                result = conn.execute(
                    update(t)
                    .where(t.c.id == tid, t.c.quarantined_at.is_(None), t.c.state.in_(self._OPEN))
                    .values(quarantined_at=to_epoch(at), quarantine_reason=reason.value)
                )
                if result.rowcount:
                    held.append(tid)
        return held

    def pending_of(self, name: str) -> list[str]:
        """Open transfers ``name`` sent or is to receive."""
        t = schema.transfers
        q = select(t.c.id).where(t.c.state.in_(self._OPEN), (t.c.sender == name) | (t.c.recipient == name))
        with self.engine.connect() as conn:
            return [str(r.id) for r in conn.execute(q.order_by(t.c.created_at, t.c.id))]

    # ------------------------------------------------------------ console

    def add_passkey(
        self, credential_id: str, party: str, signing_key: str, public_key: str, sign_count: int, at: datetime
    ) -> bool:
        row = {
            "credential_id": credential_id,
            "party": party,
            "signing_key": signing_key,
            "public_key": public_key,
            "sign_count": sign_count,
            "created_at": to_epoch(at),
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(schema.passkeys).values(**row))
        except SqlIntegrityError:
            return False
        return True

    def passkey(self, credential_id: str) -> tuple[str, str, str, int] | None:
        t = schema.passkeys
        with self.engine.connect() as conn:
            row = conn.execute(
                select(t.c.party, t.c.signing_key, t.c.public_key, t.c.sign_count).where(
                    t.c.credential_id == credential_id
                )
            ).first()
        return (str(row.party), str(row.signing_key), str(row.public_key), int(row.sign_count)) if row else None

    def passkeys_of(self, party: str) -> list[str]:
        t = schema.passkeys
        with self.engine.connect() as conn:
            q = select(t.c.credential_id).where(t.c.party == party).order_by(t.c.created_at)
            return [str(r.credential_id) for r in conn.execute(q)]

    def use_passkey(self, credential_id: str, sign_count: int, at: datetime) -> None:
        t = schema.passkeys
        with self.engine.begin() as conn:
            # Never lower a counter: of two concurrent sign-ins, the later count stays.
            conn.execute(
                update(t)
                .where(t.c.credential_id == credential_id, t.c.sign_count <= sign_count)
                .values(sign_count=sign_count, used_at=to_epoch(at))
            )

    def remove_passkeys(self, party: str) -> int:
        with self.engine.begin() as conn:
            return int(conn.execute(schema.passkeys.delete().where(schema.passkeys.c.party == party)).rowcount)

    def add_challenge(
        self, challenge: str, purpose: str, party: str | None, payload: str | None, expires: datetime
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(schema.console_challenges).values(
                    challenge=challenge, purpose=purpose, party=party, payload=payload, expires_at=to_epoch(expires)
                )
            )

    def take_challenge(self, challenge: str, purpose: str, now: datetime) -> tuple[str | None, str | None] | None:
        t = schema.console_challenges
        with self.engine.begin() as conn:
            row = conn.execute(
                select(t.c.party, t.c.payload, t.c.expires_at).where(t.c.challenge == challenge, t.c.purpose == purpose)
            ).first()
            if row is None:
                return None
            # Deleting is what makes it one-use: of two concurrent takers, one deletes the row, the other none.
            gone = conn.execute(t.delete().where(t.c.challenge == challenge, t.c.purpose == purpose)).rowcount
            if gone != 1 or row.expires_at <= to_epoch(now):
                return None
            return (row.party, row.payload)

    def spend_challenge(self, challenge: str, purpose: str, expires: datetime) -> bool:
        # The primary key makes it once only, across replicas: of two concurrent spenders, one inserts.
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(schema.console_challenges).values(
                        challenge=challenge, purpose=purpose, party=None, payload=None, expires_at=to_epoch(expires)
                    )
                )
        except SqlIntegrityError:
            return False
        return True

    def add_session(self, token_hash: str, party: str, credential_id: str, at: datetime, expires: datetime) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(schema.console_sessions).values(
                    token_hash=token_hash,
                    party=party,
                    credential_id=credential_id,
                    created_at=to_epoch(at),
                    expires_at=to_epoch(expires),
                )
            )

    def session(self, token_hash: str, now: datetime) -> tuple[str, str] | None:
        t = schema.console_sessions
        with self.engine.connect() as conn:
            row = conn.execute(
                select(t.c.party, t.c.credential_id).where(t.c.token_hash == token_hash, t.c.expires_at > to_epoch(now))
            ).first()
        return (str(row.party), str(row.credential_id)) if row else None

    def end_session(self, token_hash: str) -> bool:
        t = schema.console_sessions
        with self.engine.begin() as conn:
            return bool(conn.execute(t.delete().where(t.c.token_hash == token_hash)).rowcount)

    def end_sessions_of(self, party: str) -> int:
        t = schema.console_sessions
        with self.engine.begin() as conn:
            return int(conn.execute(t.delete().where(t.c.party == party)).rowcount)

    def prune_console(self, now: datetime) -> int:
        cutoff = to_epoch(now)
        with self.engine.begin() as conn:
            sessions = conn.execute(
                schema.console_sessions.delete().where(schema.console_sessions.c.expires_at <= cutoff)
            ).rowcount
            challenges = conn.execute(
                schema.console_challenges.delete().where(schema.console_challenges.c.expires_at <= cutoff)
            ).rowcount
        return int(sessions) + int(challenges)

    def record_command(
        self, command_id: str, at: datetime, signer: str, action: str, target: str | None, envelope: Mapping[str, Any]
    ) -> bool:
        """Keep a signed admin command; False if its id was already used (a replayed command)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(schema.admin_commands).values(
                        id=command_id,
                        at=to_epoch(at),
                        signer=signer,
                        action=action,
                        target=target,
                        envelope=_dumps(envelope),
                    )
                )
        except SqlIntegrityError:
            return False
        return True

    def quarantined_count(self) -> int:
        t = schema.transfers
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).where(t.c.quarantined_at.is_not(None))).scalar_one())

    def activity(self) -> int:
        """Parties and transfers held: a relay with either has served requests, so its log cannot be empty."""
        with self.engine.connect() as conn:
            parties = conn.execute(select(func.count()).select_from(schema.parties)).scalar_one()
            transfers = conn.execute(select(func.count()).select_from(schema.transfers)).scalar_one()
        return int(parties) + int(transfers)


class ThreadLocks:
    """``labrelay.ports.TransferLocks`` for one process (the embedded default: one relay process per database)."""

    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    @contextlib.contextmanager
    def hold(self, name: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            yield

    def forget(self, name: str) -> None:
        with self._guard:
            self._locks.pop(name, None)


class SqlTransferLocks:
    """``labrelay.ports.TransferLocks`` across processes: a PostgreSQL session advisory lock per transfer, held on
    its own connection while an upload chunk is written, a transfer created or repaired. A process killed while
    holding one loses its session, and with it the lock. Threads of one process queue on a thread lock first, so
    they do not each hold a connection while waiting."""

    def __init__(self, engine: Engine, wait_seconds: int = 30) -> None:
        self.engine = engine
        self._local = ThreadLocks()
        self._wait = wait_seconds

    @contextlib.contextmanager
    def hold(self, name: str) -> Iterator[None]:
        key = lock_key(f"labrelay:transfer:{name}")
        with self._local.hold(name):
            with _translated():
                conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            try:
                try:
                    conn.execute(text(f"SET lock_timeout = '{int(self._wait)}s'"))
                    conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
                except DBAPIError as exc:
                    if "lock timeout" in str(exc.orig).lower():
                        raise Unavailable(f"transfer {name} is busy in another relay process; retry later") from exc
                    raise _translate(exc) from exc
                yield
            finally:
                try:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                except DBAPIError:
                    conn.invalidate()  # the session is gone, and its locks with it
                finally:
                    conn.close()

    def forget(self, name: str) -> None:
        self._local.forget(name)


class SqlLeader:
    """One leader among the workers sharing a PostgreSQL database: a session advisory lock, held on a dedicated
    connection for as long as the worker leads. If that connection dies (the database restarted, the network
    dropped), leadership is lost with it, and ``still_leader`` says so: the worker stops its jobs and campaigns
    again, so two leaders never run at once for longer than one tick."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._conn: Connection | None = None

    def try_acquire(self) -> bool:
        if self._conn is not None:
            return self.still_leader()
        try:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            won = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LEADER_LOCK}).scalar())
        except DBAPIError:
            return False
        if not won:
            conn.close()
            return False
        self._conn = conn
        return True

    def still_leader(self) -> bool:
        if self._conn is None:
            return False
        try:
            held = self._conn.execute(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted")
            ).scalar()
        except DBAPIError:
            self._drop()
            return False
        if not held:
            self._drop()
            return False
        return True

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(DBAPIError):
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LEADER_LOCK})
            self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.invalidate()
                self._conn.close()
            self._conn = None
