"""The rules every SQL store follows: a driver failure reaches the caller as ``Unavailable`` (which the HTTP edge
answers with 503, and clients retry), a constraint does not; a write that lost a race is decided again, a bounded
number of times."""

from __future__ import annotations

import threading
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


def test_a_thread_waits_its_turn_at_sqlite_a_bounded_time_then_is_told_to_retry(tmp_path: Path) -> None:
    """The threads of a relay process queue for SQLite's one writer on the process's own lock (woken as soon as
    it is free, unlike SQLite's busy handler), never longer than the database's wait: then ``Unavailable``."""
    db = Database(sqlite_engine(tmp_path / "relay.db"), wait=0.2)
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with db.begin() as conn:
            conn.execute(text("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
            holding.set()
            done.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    outcome: list[BaseException | str] = []

    def contend() -> None:
        try:
            with db.connect() as conn:
                conn.execute(text("SELECT 1"))
            outcome.append("entered")
        except Unavailable as exc:
            outcome.append(exc)

    try:
        assert holding.wait(10)
        contender = threading.Thread(target=contend)
        contender.start()
        contender.join(10)  # SQLite's own busy timeout is 30 s: without the turn, still waiting here
        assert not contender.is_alive()
        assert len(outcome) == 1
        assert isinstance(outcome[0], Unavailable), outcome
        assert "retry later" in str(outcome[0])
    finally:
        done.set()
        holder.join(10)
        db.dispose()


def test_threads_taking_turns_lose_no_write(tmp_path: Path) -> None:
    """Many threads reading then writing the same row, each in its turn: every increment is kept, none refused."""
    db = Database(sqlite_engine(tmp_path / "relay.db"))
    with db.begin() as conn:
        conn.execute(text("CREATE TABLE c (n INTEGER NOT NULL)"))
        conn.execute(text("INSERT INTO c VALUES (0)"))
    failures: list[BaseException] = []

    def bump() -> None:
        try:
            for _ in range(25):
                with db.begin() as conn:
                    n = conn.execute(text("SELECT n FROM c")).scalar_one()
                    conn.execute(text("UPDATE c SET n = :n"), {"n": n + 1})
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not failures
        with db.connect() as conn:
            assert conn.execute(text("SELECT n FROM c")).scalar_one() == 200
    finally:
        db.dispose()
