"""A real PostgreSQL server for the tests, from Debian's packages (``.ci/run`` installs them when missing).

The cluster lives in a temporary directory, listens on 127.0.0.1 on a free port, trusts local connections (it is
a throwaway test cluster) and is owned by the ``postgres`` system user when the tests run as root (``initdb``
refuses root). ``restart`` stops and starts it on the same port: the fault tests use it.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

CI = os.environ.get("LABRELAY_CI") == "1"


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    which = shutil.which("pg_ctl")
    return Path(which).parent if which else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    def __init__(self, bindir: Path, root: Path) -> None:
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.port = _free_port()
        self._as_root = os.geteuid() == 0
        self._migrated: str | None = None

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self._as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        conf = self.data / "postgresql.conf"
        with conf.open("a") as fh:
            fh.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.root}'\n"
                "max_connections = 400\nfsync = on\nshared_buffers = 64MB\n"
            )

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, *, migrated: bool = False) -> str:
        """A fresh database, empty or (``migrated``) a copy of one migrated to the schema's head; returns its
        SQLAlchemy URL. Copying the template (``createdb -T``) is cheaper than running every migration again."""
        name = "t_" + uuid.uuid4().hex[:16]
        template = ("-T", self._template()) if migrated else ()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", *template, name)
        return self.url(name)

    def _template(self) -> str:
        if self._migrated is None:
            from sqlalchemy import create_engine  # noqa: PLC0415

            from labrelay.storage import migrate  # noqa: PLC0415 - only the scaled tests need the relay's schema

            name = "labrelay_template"
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
            engine = create_engine(self.url(name))
            try:
                migrate.upgrade(engine)
            finally:
                engine.dispose()  # createdb -T refuses a template with open connections
            self._migrated = name
        return self._migrated

    def dump(self, url: str) -> bytes:
        """``pg_dump`` of the database at ``url`` (plain SQL): what a stolen backup holds."""
        name = url.rsplit("/", 1)[1]
        cmd = [str(self.bindir / "pg_dump"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name]
        return subprocess.run(cmd, capture_output=True, check=True, timeout=120).stdout

    def wait(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ok = self._run("pg_isready", "-h", "127.0.0.1", "-p", str(self.port), check=False)
            if ok.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError("PostgreSQL did not come back")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster for the whole session (skipped without PostgreSQL, except in CI where it must run)."""
    bindir = _bindir()
    if bindir is None:
        if CI:
            pytest.fail("PostgreSQL is not installed; .ci/run installs it (Debian package postgresql)")
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="labrelay-pg-"))
    os.chmod(root, 0o755)  # noqa: S103 - the postgres user must reach its cluster inside
    server = PostgresServer(bindir, root)
    server.init()
    server.start()
    try:
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
