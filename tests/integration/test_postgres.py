"""The metadata store on a real PostgreSQL: the same schema as SQLite, one audit chain written by many processes,
cross-process transfer locks, one worker leader, and a restart that the relay rides out by itself."""

from __future__ import annotations

import multiprocessing
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from labrelay.clock import ManualClock
from labrelay.crypto.keys import SigningKey
from labrelay.domain.audit import AuditEvent, verify_chain
from labrelay.errors import Unavailable
from labrelay.relay.auditor import Auditor
from labrelay.storage import migrate
from labrelay.storage.schema import SQLITE_ONLY, metadata
from labrelay.storage.sql.audit import SqlAuditLog
from labrelay.storage.sql.engine import Database, postgres_engine
from labrelay.storage.sql.leader import SqlLeader
from labrelay.storage.sql.locks import SqlTransferLocks
from labrelay.storage.sql.nonces import SqlNonces
from tests.support.pgserver import PostgresServer

T0 = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    url = postgres.create_database()
    engine = create_engine(url)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    return url


def test_migrations_reach_the_same_head_and_schema(pg_url: str) -> None:
    engine = create_engine(pg_url)
    try:
        assert migrate.current_revision(engine) == migrate.head_revision()
        migrate.require_head(engine)
        with engine.connect() as conn:
            tables = {r[0] for r in conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname='public'"))}
    finally:
        engine.dispose()
    assert set(metadata.tables) - SQLITE_ONLY <= tables


def _append_many(url: str, key_path: Path, n: int, who: str) -> None:
    engine = postgres_engine(url, 4)
    auditor = Auditor(SqlAuditLog(Database(engine)), ManualClock(T0), SigningKey.load(key_path))
    for i in range(n):
        auditor.record(AuditEvent.TRANSFER_LIST, actor=who, box="inbox", count=i)
    engine.dispose()


@pytest.mark.threat("T21")
def test_one_chain_from_many_processes_and_threads(pg_url: str, tmp_path: Path) -> None:
    """Four processes with three threads each append at once: the chain has every record, in one line."""
    key = tmp_path / "relay-signing.key"
    SigningKey.generate().save(key)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_threads, args=(pg_url, key, f"p{i}")) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    engine = create_engine(pg_url)
    try:
        audit = SqlAuditLog(Database(engine))
        links = list(audit.links())
        report = verify_chain(links)
        head = audit.checkpoint("head")
    finally:
        engine.dispose()
    assert len(links) == 4 * 3 * 25
    assert report.ok, report.problem
    assert head is not None
    assert head.seq == len(links)
    assert head.hash == links[-1].hash


def _threads(url: str, key_path: Path, who: str) -> None:
    threads = [threading.Thread(target=_append_many, args=(url, key_path, 25, f"{who}-t{i}")) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_transfer_lock_excludes_other_processes_engines(pg_url: str) -> None:
    """Two engines (as two replicas): while one holds a transfer's lock, the other waits, then gets it."""
    a, b = postgres_engine(pg_url, 4), postgres_engine(pg_url, 4)
    try:
        locks_a, locks_b = SqlTransferLocks(a), SqlTransferLocks(b, wait_seconds=1)
        order: list[str] = []
        with locks_a.hold("t-1"):
            with pytest.raises(Unavailable, match="busy"), locks_b.hold("t-1"):
                order.append("b-inside-while-a-held")  # must never happen
            with locks_b.hold("t-2"):  # another transfer is not blocked
                order.append("b-other")
        with locks_b.hold("t-1"):
            order.append("b-after")
    finally:
        a.dispose()
        b.dispose()
    assert order == ["b-other", "b-after"]


@pytest.mark.threat("T21")
def test_one_leader_and_takeover_when_its_session_dies(postgres: PostgresServer, pg_url: str) -> None:
    a, b = postgres_engine(pg_url, 2), postgres_engine(pg_url, 2)
    try:
        first, second = SqlLeader(a), SqlLeader(b)
        assert first.try_acquire()
        assert not second.try_acquire()
        assert first.still_leader()
        # The leader's session is killed (its process died, or the network cut it): leadership is gone with it.
        admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND pid <> pg_backend_pid()"
                )
            )
        admin.dispose()
        assert not first.still_leader()
        deadline = time.monotonic() + 10
        while not second.try_acquire():
            assert time.monotonic() < deadline, "no takeover"
            time.sleep(0.1)
        assert not first.try_acquire()
        second.release()
        assert first.try_acquire()
        first.release()
    finally:
        a.dispose()
        b.dispose()


def test_restart_gives_unavailable_then_service_resumes(postgres: PostgresServer, pg_url: str) -> None:
    engine = postgres_engine(pg_url, 4)
    db = Database(engine)
    nonces, audit = SqlNonces(db), SqlAuditLog(db)
    try:
        assert nonces.remember("k", "n1", T0)
        postgres.stop()
        try:
            with pytest.raises(Unavailable, match="retry later"):
                nonces.remember("k", "n2", T0)
            with pytest.raises(Unavailable):
                list(audit.links())
        finally:
            postgres.start()
        postgres.wait()
        # The pool's stale connections are noticed (pre-ping) and replaced: no manual step.
        assert nonces.remember("k", "n3", T0)
        assert not nonces.remember("k", "n1", T0)  # still remembered across the restart: replay still refused
        assert nonces.prune(T0 + timedelta(days=1)) == 2
    finally:
        engine.dispose()


def test_an_exhausted_pool_is_a_retryable_refusal(pg_url: str) -> None:
    """Every connection held (uploads in progress): the next caller gets Unavailable, never an internal error."""
    engine = postgres_engine(pg_url, 1, pool_timeout=0.5)  # do not wait 30 s in a test
    nonces, locks = SqlNonces(Database(engine)), SqlTransferLocks(engine)
    try:
        with locks.hold("t-busy"):
            with pytest.raises(Unavailable, match="retry later"):
                nonces.remember("k", "busy", T0)
            with pytest.raises(Unavailable, match="retry later"), locks.hold("t-other"):
                pass
        assert nonces.remember("k", "free", T0)
    finally:
        engine.dispose()
