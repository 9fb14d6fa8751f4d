"""``labrelay.ports.PolicyRepository`` in SQL: routing policies and their withdrawals, as the authority signed them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError as SqlIntegrityError

from labrelay.domain.policy import PolicyWithdrawal
from labrelay.domain.timeutil import from_epoch, to_epoch
from labrelay.errors import Conflict
from labrelay.storage import schema
from labrelay.storage.sql.engine import Database
from labrelay.storage.sql.rows import dumps, insert_new


class SqlPolicies:
    """Policy issues by version (a later issue of a version replaces it) and withdrawals by serial."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add_policy(
        self, version: str, envelope: Mapping[str, Any], at: datetime, *, issue: int, not_after: datetime
    ) -> bool:
        t = schema.policies
        values = {"envelope": dumps(envelope), "registered_at": to_epoch(at), "issue": issue}
        values["not_after"] = to_epoch(not_after)
        try:
            with self._db.begin() as conn:
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
        with self._db.connect() as conn:
            row = conn.execute(q.order_by(t.c.issue.desc()).limit(1)).first()
        return json.loads(row.envelope) if row else None

    def add_policy_withdrawal(self, withdrawal: PolicyWithdrawal, envelope: Mapping[str, Any], at: datetime) -> bool:
        t = schema.policy_withdrawals
        row = {
            "serial": withdrawal.serial,
            "version": withdrawal.version,
            "withdrawn_at": to_epoch(withdrawal.withdrawn_at),
            "reason": withdrawal.reason,
            "envelope": dumps(envelope),
            "registered_at": to_epoch(at),
        }
        return insert_new(self._db, t, row, look_first=t.c.serial)

    def policy_withdrawals(self) -> list[tuple[PolicyWithdrawal, Mapping[str, Any]]]:
        t = schema.policy_withdrawals
        with self._db.connect() as conn:
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
