"""``labrelay.ports.TransferRepository`` in SQL: manifests, states, upload offsets, receipts, refusals and holds."""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, insert, select, update
from sqlalchemy.exc import IntegrityError as SqlIntegrityError

from labrelay.domain.delivery import Backlog, BatchTally, delivery_outcome, tally
from labrelay.domain.timeutil import from_epoch, to_epoch
from labrelay.domain.transfers import Manifest, QuarantineReason, Transfer, TransferState
from labrelay.errors import Conflict
from labrelay.storage import schema
from labrelay.storage.sql.engine import Database
from labrelay.storage.sql.rows import OPEN_STATES, dumps


class SqlTransfers:
    """Transfer metadata, one row per transfer. Every change of state is one conditional statement, so that of two
    replicas changing the same transfer at once, one does."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def create(self, transfer: Transfer) -> None:
        m = transfer.manifest
        row = {
            "id": m.transfer_id,
            "batch_id": m.batch_id,
            "sender": m.sender,
            "recipient": m.recipient,
            "state": transfer.state.value,
            "size": m.size,
            "uploaded": transfer.uploaded,
            "sha256": m.sha256,
            "deadline": to_epoch(m.deadline),
            "created_at": to_epoch(transfer.created_at),
            "updated_at": to_epoch(transfer.updated_at),
            "manifest": dumps(transfer.manifest_envelope),
            "receipt": None,
        }
        try:
            with self._db.begin() as conn:
                conn.execute(insert(schema.transfers).values(**row))
        except SqlIntegrityError:
            raise Conflict(f"transfer {m.transfer_id} already exists") from None

    def get(self, transfer_id: str) -> Transfer | None:
        with self._db.connect() as conn:
            row = conn.execute(select(schema.transfers).where(schema.transfers.c.id == transfer_id)).first()
        return _transfer(row) if row else None

    def set_uploaded(self, transfer_id: str, uploaded: int, at: datetime) -> str:
        t = schema.transfers
        mark = secrets.token_hex(16)  # new on every write: equal marks mean nobody else moved the upload since
        values = {"uploaded": uploaded, "updated_at": to_epoch(at), "upload_mark": mark}
        with self._db.begin() as conn:
            conn.execute(update(t).where(t.c.id == transfer_id).values(**values))
        return mark

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
            values["receipt"] = dumps(receipt_envelope)
        where = [t.c.id == transfer_id, t.c.state.in_([s.value for s in from_states])]
        if unless_quarantined:
            where.append(t.c.quarantined_at.is_(None))
        with self._db.begin() as conn:
            result = conn.execute(update(t).where(*where).values(**values))
        return bool(result.rowcount)

    def refuse(self, transfer_id: str, refusal_envelope: Mapping[str, Any], at: datetime) -> bool:
        """Keep the recipient's signed refusal and quarantine the transfer, in one statement, if it is available and
        not refused yet (an earlier quarantine keeps its time); False otherwise."""
        t = schema.transfers
        with self._db.begin() as conn:
            result = conn.execute(
                update(t)
                .where(
                    t.c.id == transfer_id,
                    t.c.state == TransferState.AVAILABLE.value,
                    t.c.refusal_envelope.is_(None),
                )
                .values(
                    refusal_envelope=dumps(refusal_envelope),
                    quarantined_at=func.coalesce(t.c.quarantined_at, to_epoch(at)),
                    quarantine_reason=func.coalesce(t.c.quarantine_reason, QuarantineReason.REFUSED.value),
                    updated_at=to_epoch(at),
                )
            )
        return bool(result.rowcount)

    def quarantine(
        self, transfer_ids: Sequence[str], at: datetime, reason: QuarantineReason = QuarantineReason.ADMIN
    ) -> list[str]:
        """Hold these transfers (those not already held and still open) for ``reason``; returns the ids newly held.
        One statement per transfer: when two replicas hold the same transfer at once, one of them holds it."""
        t = schema.transfers
        held: list[str] = []
        with self._db.begin() as conn:
            for tid in transfer_ids:
                result = conn.execute(
                    update(t)
                    .where(t.c.id == tid, t.c.quarantined_at.is_(None), t.c.state.in_(OPEN_STATES))
                    .values(quarantined_at=to_epoch(at), quarantine_reason=reason.value)
                )
                if result.rowcount:
                    held.append(tid)
        return held

    def for_recipient(self, recipient: str, states: Sequence[TransferState]) -> list[Transfer]:
        t = schema.transfers
        q = select(t).where(t.c.recipient == recipient, t.c.state.in_([s.value for s in states]))
        with self._db.connect() as conn:
            return [_transfer(r) for r in conn.execute(q.order_by(t.c.created_at, t.c.id))]

    def for_sender(self, sender: str) -> list[Transfer]:
        t = schema.transfers
        with self._db.connect() as conn:
            rows = conn.execute(select(t).where(t.c.sender == sender).order_by(t.c.created_at, t.c.id))
            return [_transfer(r) for r in rows]

    def recent(self, limit: int) -> list[Transfer]:
        t = schema.transfers
        with self._db.connect() as conn:
            rows = conn.execute(select(t).order_by(t.c.created_at.desc(), t.c.id).limit(limit))
            return [_transfer(r) for r in rows]

    def backlog(self, now: datetime) -> list[Backlog]:
        t = schema.transfers
        q = (
            select(t.c.recipient, func.count(), func.sum(t.c.size), func.min(t.c.updated_at))
            .where(
                t.c.state == TransferState.AVAILABLE.value,
                t.c.quarantined_at.is_(None),
                t.c.deadline > to_epoch(now),
            )
            .group_by(t.c.recipient)
            .order_by(t.c.recipient)
        )
        with self._db.connect() as conn:
            rows = conn.execute(q).all()
        # updated_at of an available transfer that is not held: when it was published (its last change)
        return [Backlog(name, int(n), int(size or 0), from_epoch(int(since))) for name, n, size, since in rows]

    def stored_bytes(self) -> int:
        t = schema.transfers
        held = case((t.c.state == TransferState.AVAILABLE.value, t.c.size), else_=t.c.uploaded)
        with self._db.connect() as conn:
            total = conn.execute(select(func.sum(held)).where(t.c.state.in_(OPEN_STATES))).scalar()
        return int(total or 0)

    def batches(self, limit: int, sender: str | None = None) -> list[BatchTally]:
        t = schema.transfers
        recent = select(t.c.batch_id).group_by(t.c.batch_id).order_by(func.max(t.c.created_at).desc()).limit(limit)
        if sender is not None:
            recent = recent.where(t.c.sender == sender)
        refused = t.c.refusal_envelope.is_not(None)
        held = t.c.quarantined_at.is_not(None)
        q = (
            select(t.c.batch_id, t.c.sender, func.min(t.c.created_at), t.c.state, refused, held, func.count())
            .where(t.c.batch_id.in_(recent.scalar_subquery()))
            .group_by(t.c.batch_id, t.c.sender, t.c.state, refused, held)
        )
        with self._db.connect() as conn:
            rows = conn.execute(q).all()
        return tally(
            (batch, who, from_epoch(int(created)), delivery_outcome(state, refused=bool(r), held=bool(h)), int(n))
            for batch, who, created, state, r, h, n in rows
        )

    def open_past(self, now: datetime) -> list[Transfer]:
        t = schema.transfers
        q = select(t).where(t.c.state.in_(OPEN_STATES), t.c.deadline <= to_epoch(now)).order_by(t.c.deadline, t.c.id)
        with self._db.connect() as conn:
            return [_transfer(r) for r in conn.execute(q)]

    def open_transfers(self) -> list[Transfer]:
        t = schema.transfers
        with self._db.connect() as conn:
            rows = conn.execute(select(t).where(t.c.state.in_(OPEN_STATES)).order_by(t.c.deadline, t.c.id))
            return [_transfer(r) for r in rows]

    def for_key(self, recipient: str, age_recipient: str) -> list[Transfer]:
        t = schema.transfers
        q = select(t).where(t.c.recipient == recipient, t.c.state.in_(OPEN_STATES))
        with self._db.connect() as conn:
            transfers = [_transfer(r) for r in conn.execute(q.order_by(t.c.deadline, t.c.id))]
        return [r for r in transfers if r.manifest.recipient_key == age_recipient]


def _transfer(row: Any) -> Transfer:
    envelope = json.loads(row.manifest)
    return Transfer(
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
        upload_mark=row.upload_mark,
    )


def _quarantine_reason(value: str | None) -> QuarantineReason | None:
    """The stored reason of a hold; one this version does not know reads as an administrator's."""
    if value is None:
        return None
    try:
        return QuarantineReason(value)
    except ValueError:
        return QuarantineReason.ADMIN
