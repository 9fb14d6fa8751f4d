"""What every signed request reads about its caller, kept in the process while the database says it is current.

Each signed request reads the caller's directory entries, its revocations, its lock on this relay and the lockdown
flag. On SQLite every one of those reads took the database's one write lock in its turn (decision 0026), and they
were 60% of the relay's transactions under a burst of labs. These four tables change rarely (an enrolment, a
revocation, a lock, a freeze), so their rows are kept here, keyed by what was asked, with the **generation** they
were read at.

The freshness rule (decision 0027): migration 0010 keeps one number, ``standing_generation.value``, that triggers
raise in the same transaction as any insert, update or delete on ``parties``, ``revocations``, ``locks`` or
``relay_flags``, whoever writes (this relay, an admin command in another process, a hand-typed SQL statement). A
kept value is used only if the number read from the database at the time of the request is the one it was read
with, in the same transaction as its rows; otherwise the rows are read again. The number is read without taking
the write lock (a WAL reader sees the last commit), so a request that is served from here makes no transaction at
all. A revocation, lock or freeze committed before a request's read is therefore seen by that request, exactly as
without the cache. Any failure to read the number is a miss: the rows are read as before, and a broken database is
``Unavailable`` there. Each miss also checks that the twelve triggers are all there (a later migration that copies
a table drops its triggers): if one is missing, nothing is kept and every read goes to the rows.

Only on SQLite: on PostgreSQL reads run concurrently in each replica, and the tables have no triggers.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Hashable

from sqlalchemy import Connection, text

GENERATION = "SELECT value FROM standing_generation WHERE id = 1"
MAX_KEPT = 10_000
"""At most this many answers kept; past it the cache starts again empty (callers are signed parties, whose names
the directory bounds, but nothing here relies on it)."""


class StandingCache:
    """Answers about the parties' standing, each with the generation it was read at (see the module's docstring)."""

    def __init__(self, path: str) -> None:
        """``path``: the SQLite database file."""
        self._path = path
        self._lock = threading.Lock()
        self._generation: int | None = None
        self._kept: dict[Hashable, object] = {}
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self.hits = 0  # answers served from here (what shows, in a test, that a read was not made)

    def current(self) -> int | None:
        """The generation the database holds now (None if it cannot be read: the caller then reads the rows).

        Read on a connection of the calling thread's own, in SQLite's autocommit mode: a WAL reader, which sees the
        last commit and neither takes nor waits for the write lock (a pooled connection's checkout and return cost
        more than the read)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        try:
            if conn is None:
                conn = sqlite3.connect(self._path, timeout=0, isolation_level=None, check_same_thread=False)
                with self._lock:
                    self._opened.append(conn)
                self._local.conn = conn
            rows = conn.execute(GENERATION).fetchall()  # to the end: the statement is reset, no snapshot kept
        except sqlite3.Error:
            self._local.conn = None  # closed by ``close``, or broken: the next call opens another
            return None
        return int(rows[0][0]) if rows else None

    def close(self) -> None:
        """Close every thread's connection (the process is done with the database)."""
        with self._lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            conn.close()

    def lookup(self, key: Hashable, generation: int | None) -> tuple[bool, object]:
        """(True, the kept answer) if ``key`` was read at ``generation``; (False, None) otherwise."""
        if generation is None:
            return False, None
        with self._lock:
            if self._generation == generation and key in self._kept:
                self.hits += 1
                return True, self._kept[key]
            if self._generation != generation:
                # The database moved on, or back (a copy restored under a running relay): nothing kept may be
                # served again, even when the number comes back to the one it was kept under.
                self._kept.clear()
        return False, None

    def keep(self, key: Hashable, generation: int, value: object) -> None:
        """Keep ``value``, read in the same transaction as ``generation``. An answer read at an older generation
        than the one already kept is not kept (a slow reader finishing after a faster one saw a change)."""
        with self._lock:
            if self._generation is None or generation > self._generation:
                self._generation = generation
                self._kept.clear()
            elif generation < self._generation:
                return
            if len(self._kept) >= MAX_KEPT:
                self._kept.clear()
            self._kept[key] = value


WATCHED = ("parties", "revocations", "locks", "relay_flags")
TRIGGERS = frozenset(f"standing_{table}_{change}" for table in WATCHED for change in ("insert", "update", "delete"))
"""The triggers migration 0010 made. A later migration that copies one of these tables (SQLite's way to alter a
column) drops its triggers with it: without all of them nothing is kept."""

_TRIGGERS_PRESENT = "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'standing_%'"


def read_generation(conn: Connection) -> int | None:
    """The generation, inside the caller's transaction (so that it dates the rows read beside it); None if any of
    the triggers that raise it is missing (then the answer read beside it must not be kept)."""
    present = {str(name) for (name,) in conn.execute(text(_TRIGGERS_PRESENT))}
    if not present >= TRIGGERS:
        return None
    return int(conn.execute(text(GENERATION)).scalar_one())
