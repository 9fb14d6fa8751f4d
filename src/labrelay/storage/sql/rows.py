"""What the SQL stores share about rows: signed envelopes kept as canonical JSON, the transfer states that count as
open, and the insert that a unique key makes happen once."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Column, Table, insert, select
from sqlalchemy.exc import IntegrityError as SqlIntegrityError

from labrelay.domain.transfers import TransferState
from labrelay.storage.sql.engine import Database

OPEN_STATES = (TransferState.UPLOADING.value, TransferState.AVAILABLE.value)
"""Transfers not over yet, as stored."""


def dumps(doc: Mapping[str, Any]) -> str:
    """A document as stored: JSON with sorted keys, no spaces, ASCII only."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def insert_new(db: Database, table: Table, row: Mapping[str, Any], *, look_first: Column[Any] | None = None) -> bool:
    """Insert ``row``; False if its key is taken (stored before, or by another replica at the same moment: the
    unique key decides). With ``look_first``, the key column is read before inserting, so that the usual repeat
    (a party registering its entry again) costs no failed statement."""
    try:
        with db.begin() as conn:
            if (
                look_first is not None
                and conn.execute(select(look_first).where(look_first == row[look_first.name])).first()
            ):
                return False
            conn.execute(insert(table).values(**row))
    except SqlIntegrityError:
        return False
    return True
