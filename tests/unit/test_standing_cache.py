"""What a relay keeps of its callers' standing (decision 0027) is never staler than a read would be: a lock, a
revocation, a new entry or a freeze written by anyone (the relay's own stores, another process's, a statement typed
in sqlite3) is seen by the next read, and an answer is served from memory only while nothing changed.

Each test first shows that the relay's store does serve a repeated read from memory (else "seen at once" would
prove nothing), then changes the database from outside and reads again."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from labrelay.domain.names import new_id
from labrelay.domain.parties import PartyEntry, Revocation, Role
from labrelay.errors import Unavailable
from labrelay.storage import migrate
from labrelay.storage.sql.engine import sqlite_engine
from labrelay.storage.sql.standing import StandingCache
from labrelay.storage.sql.stores import SqlStores
from tests.support.relay_setup import party_entry

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def _entry(name: str) -> PartyEntry:
    return party_entry(name, Role.LAB, T0)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    db = tmp_path / "relay.db"
    engine = sqlite_engine(db)
    migrate.upgrade(engine)
    engine.dispose()
    return db


def _stores(path: Path) -> Iterator[SqlStores]:
    stores = SqlStores.on(sqlite_engine(path))
    try:
        yield stores
    finally:
        stores.db.dispose()


@pytest.fixture
def relay(path: Path) -> Iterator[SqlStores]:
    """The relay's stores."""
    yield from _stores(path)


@pytest.fixture
def admin(path: Path) -> Iterator[SqlStores]:
    """Another process's stores on the same database (an admin command), with a cache of their own."""
    yield from _stores(path)


def _cache(stores: SqlStores) -> StandingCache:
    cache = stores.db.standing_cache
    assert cache is not None
    return cache


def _served_from_memory(stores: SqlStores, read: object) -> None:
    """``read`` twice; the second is served from the cache."""
    assert callable(read)
    read()
    hits = _cache(stores).hits
    read()
    assert _cache(stores).hits == hits + 1


def test_a_lock_set_and_lifted_elsewhere_is_seen_at_once(relay: SqlStores, admin: SqlStores) -> None:
    _served_from_memory(relay, lambda: relay.control.lock_of("lab-a"))
    assert relay.control.lock_of("lab-a") is None
    assert admin.control.set_lock("lab-a", "lock", "burst", T0, "admin")
    assert relay.control.lock_of("lab-a") == ("lock", "burst")
    assert admin.control.set_lock("lab-a", "revoke", "stolen key", T0, "admin")  # an update of the row's kind
    assert relay.control.lock_of("lab-a") == ("revoke", "stolen key")
    assert admin.control.clear_lock("lab-a")
    assert relay.control.lock_of("lab-a") is None


def test_a_freeze_elsewhere_is_seen_at_once(relay: SqlStores, admin: SqlStores) -> None:
    _served_from_memory(relay, lambda: relay.control.flag("frozen"))
    assert not relay.control.flag("frozen")
    assert admin.control.set_flag("frozen", True, T0, "admin")
    assert relay.control.flag("frozen")
    assert admin.control.set_flag("frozen", False, T0, "admin")
    assert not relay.control.flag("frozen")


def test_a_revocation_and_a_new_entry_elsewhere_are_seen_at_once(relay: SqlStores, admin: SqlStores) -> None:
    first = _entry("lab-a")
    assert relay.directory.add_entry(first, {"payload": first.to_payload()}, T0)
    _served_from_memory(relay, lambda: relay.directory.entries("lab-a"))
    _served_from_memory(relay, lambda: relay.directory.revocations("lab-a"))
    assert relay.directory.revocations("lab-a") == []

    revocation = Revocation(name="lab-a", revoked_at=T0, reason="key lost", serial=new_id())
    assert admin.directory.add_revocation(revocation, {"payload": "r"}, T0)
    assert relay.directory.revocations("lab-a") == [revocation]

    renewed = _entry("lab-a")
    assert admin.directory.add_entry(renewed, {"payload": renewed.to_payload()}, T0 + timedelta(hours=1))
    assert {e.serial for e in relay.directory.entries("lab-a")} == {first.serial, renewed.serial}


def test_a_statement_typed_in_sqlite_is_seen_at_once(relay: SqlStores, path: Path) -> None:
    assert relay.control.set_lock("lab-a", "lock", "burst", T0, "admin")
    _served_from_memory(relay, lambda: relay.control.lock_of("lab-a"))
    with sqlite3.connect(path) as conn:  # an operator's hand, bypassing every store
        conn.execute("UPDATE locks SET reason = 'by hand' WHERE name = 'lab-a'")
    assert relay.control.lock_of("lab-a") == ("lock", "by hand")
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO relay_flags (name, at, by) VALUES ('frozen', 0, 'sqlite3')")
    assert relay.control.flag("frozen")
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM locks")
        conn.execute("DELETE FROM relay_flags")
    assert relay.control.lock_of("lab-a") is None
    assert not relay.control.flag("frozen")


def test_another_process_revoking_is_seen_by_the_next_read(relay: SqlStores, path: Path) -> None:
    _served_from_memory(relay, lambda: relay.control.lock_of("lab-b"))
    script = (
        "import sys; from datetime import UTC, datetime; from labrelay.storage.sql.engine import sqlite_engine;"
        "from labrelay.storage.sql.stores import SqlStores;"
        "s = SqlStores.on(sqlite_engine(sys.argv[1]));"
        "assert s.control.set_lock('lab-b', 'revoke', 'admin', datetime.now(UTC), 'admin')"
    )
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=60)
    assert relay.control.lock_of("lab-b") == ("revoke", "admin")


def test_only_a_change_to_the_four_tables_moves_the_generation(relay: SqlStores) -> None:
    cache = _cache(relay)
    before = cache.current()
    assert before is not None
    relay.nonces.remember("lab-a", "n1", T0)  # requests write nonces, audit links, transfers: no effect
    assert cache.current() == before
    relay.control.set_flag("frozen", True, T0, "admin")
    assert cache.current() == before + 1


def test_an_answer_read_before_a_change_is_not_kept_after_it(relay: SqlStores) -> None:
    cache = StandingCache(str(relay.db.engine.url.database))
    cache.keep("k", 5, "read at 5")
    assert cache.lookup("k", 5) == (True, "read at 5")
    cache.keep("k", 4, "a slow reader, read at 4")  # finished after the one that read at 5
    assert cache.lookup("k", 5) == (True, "read at 5")
    assert cache.lookup("k", 6) == (False, None)  # the database moved on: read again
    cache.keep("other", 6, "read at 6")
    assert cache.lookup("k", 6) == (False, None)  # everything read before 6 was dropped
    assert cache.lookup("k", None) == (False, None)  # the generation could not be read: read again


def test_a_database_that_went_back_and_forward_again_serves_nothing_kept_before(relay: SqlStores) -> None:
    """A copy of the database restored under a running relay: its number is lower, then climbs back to the one the
    relay kept its answers under. What was kept before belongs to the other copy: never served."""
    cache = StandingCache(str(relay.db.engine.url.database))
    cache.keep("k", 5, "kept from the database before the restore")
    assert cache.lookup("k", 3) == (False, None)  # restored: the number went back
    cache.keep("k", 3, "read at 3")  # older than the newest seen: not kept (a slow reader looks the same)
    assert cache.lookup("k", 5) == (False, None)  # climbed back to 5: the old answer is gone
    cache.keep("k", 5, "read at 5 from the restored copy")
    assert cache.lookup("k", 5) == (True, "read at 5 from the restored copy")


def test_an_unreadable_generation_fails_closed(relay: SqlStores, path: Path) -> None:
    assert relay.control.set_lock("lab-a", "lock", "burst", T0, "admin")
    _served_from_memory(relay, lambda: relay.control.lock_of("lab-a"))
    with sqlite3.connect(path) as conn:  # the triggers are there, the number they raise is not
        conn.execute("ALTER TABLE standing_generation RENAME TO elsewhere")
    assert _cache(relay).current() is None
    with pytest.raises(Unavailable, match="unavailable"):
        relay.control.lock_of("lab-a")  # the miss reads the number with the rows: never a stale answer


def test_a_disposed_database_reads_again_afresh(relay: SqlStores, admin: SqlStores) -> None:
    _served_from_memory(relay, lambda: relay.control.flag("frozen"))
    relay.db.dispose()  # every connection closed, the cache's own included
    assert admin.control.set_flag("frozen", True, T0, "admin")
    assert relay.control.flag("frozen")
    _served_from_memory(relay, lambda: relay.control.flag("frozen"))


def test_without_every_trigger_nothing_is_kept(relay: SqlStores, path: Path) -> None:
    """A later migration that copies a table (SQLite's way to alter a column) drops its triggers with it: the
    relay then keeps nothing, and a change the missing trigger would have counted is still seen."""
    assert relay.control.set_lock("lab-a", "lock", "burst", T0, "admin")
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TRIGGER standing_locks_update")
    cache = _cache(relay)
    for _ in range(3):
        assert relay.control.lock_of("lab-a") == ("lock", "burst")
    assert cache.hits == 0
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE locks SET kind = 'revoke', reason = 'by hand' WHERE name = 'lab-a'")  # counted by none
    assert relay.control.lock_of("lab-a") == ("revoke", "by hand")
