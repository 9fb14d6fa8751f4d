"""``labrelay.ports.TransferLocks``: per-transfer mutual exclusion, within one process (``ThreadLocks``) or across
every process sharing a PostgreSQL database (``SqlTransferLocks``)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from labrelay.errors import Unavailable
from labrelay.storage.sql.engine import lock_key, outage, translated


class ThreadLocks:
    """``labrelay.ports.TransferLocks`` for one process (the embedded default: one relay process per database)."""

    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    @contextlib.contextmanager
    def hold(self, name: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            yield

    def forget(self, name: str) -> None:
        with self._guard:
            self._locks.pop(name, None)


class SqlTransferLocks:
    """``labrelay.ports.TransferLocks`` across processes: a PostgreSQL session advisory lock per transfer, held on
    its own connection while an upload chunk is written, a transfer created, closed or repaired. A process killed while
    holding one loses its session, and with it the lock. Threads of one process queue on a thread lock first, so
    they do not each hold a connection while waiting."""

    def __init__(self, engine: Engine, wait_seconds: int = 30) -> None:
        self.engine = engine
        self._local = ThreadLocks()
        self._wait = wait_seconds

    @contextlib.contextmanager
    def hold(self, name: str) -> Iterator[None]:
        key = lock_key(f"labrelay:transfer:{name}")
        with self._local.hold(name):
            with translated():
                conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            try:
                try:
                    conn.execute(text(f"SET lock_timeout = '{int(self._wait)}s'"))
                    conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
                except DBAPIError as exc:
                    if "lock timeout" in str(exc.orig).lower():
                        raise Unavailable(f"transfer {name} is busy in another relay process; retry later") from exc
                    raise outage(exc) from exc
                yield
            finally:
                try:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                except DBAPIError:
                    conn.invalidate()  # the session is gone, and its locks with it
                finally:
                    conn.close()

    def forget(self, name: str) -> None:
        self._local.forget(name)
