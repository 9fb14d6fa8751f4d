"""``labrelay serve`` as a child process on a free loopback port: for the demo, the tests and the benchmarks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from labrelay.errors import OperationalError

READY_TIMEOUT = 60.0


class RelayProcess:
    """Start a relay on port 0, learn its URL from the ready file, stop it gracefully (or kill it)."""

    def __init__(self, data: Path, log: Path, extra: Sequence[str] = (), name: str = "") -> None:
        self.data = data
        self.log = log
        self.extra = tuple(extra)
        self.ready = data.parent / f"{name or data.name}.ready.json"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout: float = READY_TIMEOUT) -> str:
        self.ready.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "LABRELAY_DEBUG"}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "labrelay",
                    "serve",
                    "--data",
                    str(self.data),
                    "--port",
                    "0",
                    "--ready-file",
                    str(self.ready),
                    *self.extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready.exists():
                self.url = str(json.loads(self.ready.read_text())["url"])
                return self.url
            if self.proc.poll() is not None:
                raise OperationalError(f"the relay exited with code {self.proc.returncode}; see {self.log}")
            time.sleep(0.05)
        self.stop()
        raise OperationalError(f"the relay did not start within {timeout:.0f}s; see {self.log}")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (graceful shutdown), then SIGKILL if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no cleanup (crash tests)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class WorkerProcess:
    """``labrelay worker`` as a child process (the scaled configuration's background jobs)."""

    def __init__(self, data: Path, log: Path) -> None:
        self.data = data
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "LABRELAY_DEBUG"}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "labrelay", "worker", "--data", str(self.data)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
