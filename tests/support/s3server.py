"""A real S3-compatible server for the tests: moto's ``moto_server`` (installed with ``moto[server]``) in a child
process on 127.0.0.1, on a free port.

``stop`` kills it and ``start`` brings it back on the same port: the fault tests use that to make S3 unreachable.
moto keeps everything in memory, so a restart loses every bucket and object: a test that restarts the server
recreates its bucket (``create_bucket``) and must not expect its objects back. With the session fixture
``s3_server`` shared by every test, a test that stops it must start it again (``s3_bucket`` starts it if a
failed test left it stopped); ``own_s3_server`` gives a test a server of its own to kill.

Test modules use the fixtures with ``pytest_plugins = ["tests.s3server"]`` (importing them by name would shadow
them in the test's arguments), or get them from the root conftest's ``pytest_plugins``.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REGION = "us-east-1"
ACCESS_KEY = "labrelay-test"
SECRET_KEY = "labrelay-test-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class S3Server:
    """``moto_server`` from the interpreter's own bin directory (the venv's), listening on 127.0.0.1:``port``."""

    def __init__(self, log_dir: Path) -> None:
        self.executable = Path(sys.executable).parent / "moto_server"
        if not self.executable.exists():
            raise RuntimeError(f"{self.executable} is missing: install moto[server] in the venv")
        self.port = _free_port()
        self.log = log_dir / "moto_server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 30) -> None:
        """Start (empty: moto keeps nothing across restarts) and wait until it answers HTTP."""
        if self.running:
            return
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                [str(self.executable), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self._proc.returncode}; see {self.log}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1) as response:  # noqa: S310
                    if response.status < 500:
                        return
            except urllib.error.HTTPError as exc:  # any HTTP answer means it is serving
                exc.close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto_server did not answer on {self.endpoint} within {timeout} s; see {self.log}")

    def stop(self) -> None:
        """Kill the server (as a crash would) and wait until the port refuses connections."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait(timeout=30)
        self._proc = None

    def client(self, timeout: float = 5.0) -> Any:
        """labrelay's own client (short timeouts, few retries) on this server; close it after use."""
        from labrelay.storage.s3 import s3_client  # noqa: PLC0415 - tests import the adapter lazily

        return s3_client(self.endpoint, REGION, ACCESS_KEY, SECRET_KEY, timeout=timeout)

    def create_bucket(self, name: str | None = None, *, versioned: bool = False) -> str:
        """A new bucket (a fresh random name unless given); returns its name."""
        name = name or f"labrelay-{uuid.uuid4().hex[:20]}"
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
            if versioned:
                client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        finally:
            client.close()
        return name


@contextlib.contextmanager
def running_s3() -> Iterator[S3Server]:
    """A server of one's own (a test that kills it disturbs nobody), stopped and its logs removed at the end."""
    with tempfile.TemporaryDirectory(prefix="labrelay-s3-") as log_dir:
        server = S3Server(Path(log_dir))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto server for the whole session."""
    with running_s3() as server:
        yield server


@pytest.fixture
def own_s3_server() -> Iterator[S3Server]:
    """A server of the test's own, for a test that stops it (the session's keeps serving the others)."""
    with running_s3() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket on the session's server (started again if a previous test left it stopped)."""
    s3_server.start()
    return s3_server.create_bucket()
