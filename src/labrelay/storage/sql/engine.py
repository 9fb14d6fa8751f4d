"""The SQL engines, the ``Database`` every store shares, and the two rules they all follow: driver failures become
``Unavailable``/``StorageFull`` (``translated``), and a write that lost a race is decided again a bounded number of
times (``retrying``)."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, InterfaceError
from sqlalchemy.exc import OperationalError as SqlOperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from labrelay.errors import StorageFull, Unavailable
from labrelay.storage.sql.standing import StandingCache, read_generation

T = TypeVar("T")

SQLITE_WAIT = 30.0
"""Seconds a SQLite transaction waits for the database's one writer (``busy_timeout``, and ``Database``'s turn)."""


def sqlite_engine(path: Path) -> Engine:
    """A SQLite engine in WAL mode, fully synchronous, where every transaction takes the write lock up front.

    ``BEGIN IMMEDIATE`` serialises writers at the start of a transaction instead of failing with "database is
    locked" when a reader tries to upgrade; with WAL, readers in other processes are never blocked.
    """
    engine = create_engine(
        f"sqlite+pysqlite:///{path}", connect_args={"timeout": SQLITE_WAIT, "check_same_thread": False}
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={int(SQLITE_WAIT * 1000)}")
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


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``name``."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def outage(exc: DBAPIError) -> Unavailable | StorageFull:
    """What a caller is told of a database it cannot use: its disk is full, or it is unavailable (retry later)."""
    message = str(exc.orig).lower() if exc.orig is not None else str(exc).lower()
    if ("disk" in message and "full" in message) or "no space left" in message:
        return StorageFull("the relay's database disk is full; retry later")
    return Unavailable("the relay's database is unavailable; retry later")


_OUTAGES = (SqlOperationalError, InterfaceError)


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Driver failures (a restarted or unreachable database, a full disk, every connection in use) become
    ``Unavailable``/``StorageFull``; anything else (a constraint, a programming error) passes through."""
    try:
        yield
    except PoolTimeout as exc:
        raise Unavailable("the relay's database connections are all in use; retry later") from exc
    except DBAPIError as exc:
        if not (isinstance(exc, _OUTAGES) or exc.connection_invalidated):
            raise
        raise outage(exc) from exc


class Database:
    """One SQL database, as the stores use it: every connection they take comes from ``begin`` or ``connect``, so
    that every driver failure in it reaches their callers translated (``translated``)."""

    def __init__(self, engine: Engine, *, wait: float = SQLITE_WAIT) -> None:
        """``wait``: on SQLite, how long a thread waits for its turn (``_turn``) before the caller is told to retry."""
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"
        self._wait = wait
        self._writer = None if self.postgres else threading.RLock()
        path = engine.url.database
        self.standing_cache = None if self.postgres or not path or path == ":memory:" else StandingCache(path)

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """On SQLite, this process's turn at the database, whose every transaction takes its one write lock up
        front (``BEGIN IMMEDIATE``); nothing on PostgreSQL.

        A thread that found SQLite's lock taken waited in SQLite's busy handler, which sleeps in fixed steps (up to
        100 ms each) and is not woken when the lock is released: under a burst of labs, requests slept while the
        database was free (decision 0026). The threads of one process queue here instead, each woken as the one
        before it leaves; another process (an admin command) still meets SQLite's own lock. Reentrant, and bounded
        like the busy timeout: a thread that waits ``wait`` seconds is ``Unavailable``, never stuck."""
        if self._writer is None:
            yield
            return
        if not self._writer.acquire(timeout=self._wait):
            raise Unavailable("the relay's database is busy; retry later")
        try:
            yield
        finally:
            self._writer.release()

    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        """A transaction, committed on leaving the block (rolled back on an exception)."""
        with self._turn(), translated(), self.engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection for reads (on SQLite, in this process's turn too: its transaction takes the write lock)."""
        with self._turn(), translated(), self.engine.connect() as conn:
            yield conn

    def standing(self, key: Hashable, load: Callable[[Connection], T]) -> T:
        """``load``'s answer about a party's standing (its entries, revocations, lock; a relay flag), read in a
        transaction of its own, or, on SQLite, the answer kept from an earlier read if none of those tables changed
        since (``standing.StandingCache``, decision 0027). ``load`` must return an immutable value: it is shared."""
        cache = self.standing_cache
        if cache is None:
            with self.connect() as conn:
                return load(conn)
        found, kept = cache.lookup(key, cache.current())
        if found:
            return cast(T, kept)
        with self.connect() as conn:
            generation = read_generation(conn)
            value = load(conn)
        if generation is not None:  # None: a trigger is missing, so a kept answer could go stale unseen
            cache.keep(key, generation, value)
        return value

    def dispose(self) -> None:
        """Close every pooled connection (the process is done with this database)."""
        if self.standing_cache is not None:
            self.standing_cache.close()
        self.engine.dispose()


def retrying(action: Callable[[], T], *, on: type[Exception], attempts: int) -> T:
    """``action``'s result; if it raises ``on`` (another process wrote the same row between our read and our
    write), run it again, deciding on what is stored now: at most ``attempts`` runs in all. A write that loses
    every time is ``Unavailable``: the caller's client retries later, when the contention has passed."""
    for _ in range(attempts - 1):
        try:
            return action()
        except on:
            continue
    try:
        return action()
    except on as exc:
        raise Unavailable("the relay's database is busy with concurrent changes; retry later") from exc
