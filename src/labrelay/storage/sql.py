"""SQL implementations of the relay's metadata ports (SQLAlchemy Core; SQLite WAL by default)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, func, insert, select, update
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.exc import OperationalError as SqlOperationalError

from labrelay.domain.audit import GENESIS, AuditEntry, AuditEvent, AuditRecord, Outcome, chain_hash
from labrelay.domain.parties import PartyEntry, Revocation, Role
from labrelay.domain.timeutil import from_epoch, to_epoch
from labrelay.domain.transfers import Manifest, TransferRecord, TransferState
from labrelay.errors import Conflict, StorageFull, Unavailable
from labrelay.storage import schema


def _dumps(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


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


def _translate(exc: SqlOperationalError) -> Exception:
    text = str(exc.orig).lower() if exc.orig is not None else str(exc).lower()
    if "disk" in text and "full" in text:
        return StorageFull("the relay's database disk is full")
    return Unavailable("the relay's database is unavailable; retry later")


class SqlStore:
    """Directory, nonces, transfers and the audit chain, in one database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._audit_lock = threading.Lock()

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
        except SqlOperationalError as exc:
            raise _translate(exc) from exc
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
        with self.engine.begin() as conn:
            t = schema.revocations
            if conn.execute(select(t.c.serial).where(t.c.serial == revocation.serial)).first():
                return False
            conn.execute(insert(t).values(**row))
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

    def add_policy(self, version: str, envelope: Mapping[str, Any], at: datetime) -> bool:
        t = schema.policies
        with self.engine.begin() as conn:
            existing = conn.execute(select(t.c.envelope).where(t.c.version == version)).first()
            if existing is not None:
                if json.loads(existing.envelope) != dict(envelope):
                    raise Conflict(f"policy version {version} is already registered with other content")
                return False
            conn.execute(insert(t).values(version=version, envelope=_dumps(envelope), registered_at=to_epoch(at)))
        return True

    def policy(self, version: str | None = None) -> Mapping[str, Any] | None:
        """The envelope of ``version``, or of the latest registered policy."""
        t = schema.policies
        q = select(t.c.envelope)
        q = (
            q.where(t.c.version == version)
            if version is not None
            else q.order_by(t.c.registered_at.desc(), t.c.version.desc())
        )
        with self.engine.connect() as conn:
            row = conn.execute(q.limit(1)).first()
        return json.loads(row.envelope) if row else None

    # ------------------------------------------------------------ nonces

    def remember(self, keyid: str, nonce: str, created: datetime) -> bool:
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(schema.nonces).values(keyid=keyid, nonce=nonce, created=to_epoch(created)))
        except SqlIntegrityError:
            return False
        except SqlOperationalError as exc:
            raise _translate(exc) from exc
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
        except SqlOperationalError as exc:
            raise _translate(exc) from exc

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
    ) -> bool:
        t = schema.transfers
        values: dict[str, Any] = {"state": to_state.value, "updated_at": to_epoch(at)}
        if receipt_envelope is not None:
            values["receipt"] = _dumps(receipt_envelope)
        with self.engine.begin() as conn:
            result = conn.execute(
                update(t).where(t.c.id == transfer_id, t.c.state.in_([s.value for s in from_states])).values(**values)
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

    def append(self, entry: AuditEntry) -> AuditRecord:
        t = schema.audit_events
        with self._audit_lock, self.engine.begin() as conn:
            head = conn.execute(select(t.c.seq, t.c.hash).order_by(t.c.seq.desc()).limit(1)).first()
            seq, prev = (head.seq + 1, head.hash) if head else (1, GENESIS)
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
        return AuditRecord(seq=seq, entry=entry, prev_hash=prev, hash=digest)

    def records(self, after_seq: int = 0) -> Iterator[AuditRecord]:
        t = schema.audit_events
        batch = 1000
        last = after_seq
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(select(t).where(t.c.seq > last).order_by(t.c.seq).limit(batch)).all()
            for r in rows:
                entry = AuditEntry(
                    at=from_epoch(r.at),
                    event=AuditEvent(r.event),
                    outcome=Outcome(r.outcome),
                    actor=r.actor,
                    transfer_id=r.transfer_id,
                    reason=r.reason,
                    details=json.loads(r.details),
                )
                yield AuditRecord(seq=r.seq, entry=entry, prev_hash=r.prev_hash, hash=r.hash)
                last = r.seq
            if len(rows) < batch:
                return

    def count_events(self) -> dict[str, int]:
        t = schema.audit_events
        with self.engine.connect() as conn:
            return {r.event: r.n for r in conn.execute(select(t.c.event, func.count().label("n")).group_by(t.c.event))}
