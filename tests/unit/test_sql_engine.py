"""The rules every SQL store follows: a driver failure reaches the caller as ``Unavailable`` (which the HTTP edge
answers with 503, and clients retry), a constraint does not; a write that lost a race is decided again, a bounded
number of times."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError as SqlIntegrityError

from labrelay.errors import Unavailable
from labrelay.storage.sql.engine import Database, retrying, sqlite_engine


def test_a_database_that_cannot_be_opened_is_unavailable(tmp_path: Path) -> None:
    db = Database(sqlite_engine(tmp_path / "missing" / "relay.db"))
    try:
        with pytest.raises(Unavailable, match="retry later"), db.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        db.dispose()


def test_a_constraint_passes_through_untranslated(tmp_path: Path) -> None:
    db = Database(sqlite_engine(tmp_path / "relay.db"))
    try:
        with db.begin() as conn:
            conn.execute(text("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
            conn.execute(text("INSERT INTO t VALUES (1)"))
        with pytest.raises(SqlIntegrityError), db.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))
    finally:
        db.dispose()


def test_a_lost_race_is_decided_again_a_bounded_number_of_times() -> None:
    calls: list[int] = []

    def loses_twice() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise KeyError("another writer won")
        return "decided"

    assert retrying(loses_twice, on=KeyError, attempts=3) == "decided"
    assert len(calls) == 3

    def always_loses() -> str:
        calls.append(1)
        raise KeyError("another writer won")

    calls.clear()
    with pytest.raises(Unavailable, match="retry later"):
        retrying(always_loses, on=KeyError, attempts=3)
    assert len(calls) == 3
