"""``labrelay.ports.Leader`` on PostgreSQL: one worker among those sharing the database runs the background jobs."""

from __future__ import annotations

import contextlib

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from labrelay.storage.sql.engine import lock_key

LEADER_LOCK = lock_key("labrelay:worker-leader")


class SqlLeader:
    """One leader among the workers sharing a PostgreSQL database: a session advisory lock, held on a dedicated
    connection for as long as the worker leads. If that connection dies (the database restarted, the network
    dropped), leadership is lost with it, and ``still_leader`` says so: the worker stops its jobs and campaigns
    again, so two leaders never run at once for longer than one tick."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._conn: Connection | None = None

    def try_acquire(self) -> bool:
        if self._conn is not None:
            return self.still_leader()
        try:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            won = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LEADER_LOCK}).scalar())
        except DBAPIError:
            return False
        if not won:
            conn.close()
            return False
        self._conn = conn
        return True

    def still_leader(self) -> bool:
        if self._conn is None:
            return False
        try:
            held = self._conn.execute(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted")
            ).scalar()
        except DBAPIError:
            self._drop()
            return False
        if not held:
            self._drop()
            return False
        return True

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(DBAPIError):
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LEADER_LOCK})
            self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.invalidate()
                self._conn.close()
            self._conn = None
