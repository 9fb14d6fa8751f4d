"""``labrelay serve`` and ``labrelay worker`` as child processes, for the tests and the benchmarks: relays on port 0
(one, or replicas launched together), workers, stopped gracefully or killed. The demo starts its own relay
(``labrelay.cli.demo_relay``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from labrelay.cli.demo_relay import ready_url
from labrelay.errors import OperationalError

READY_TIMEOUT = 60.0


class _Child:
    """A ``labrelay`` command in its own session, its output appended to ``log``; stopped gracefully or killed."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self, args: Sequence[str]) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k != "LABRELAY_DEBUG"}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "labrelay", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        return self.proc

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


class RelayProcess(_Child):
    """Start a relay on port 0, learn its URL from the ready file, stop it gracefully (or kill it)."""

    def __init__(self, data: Path, log: Path, extra: Sequence[str] = (), name: str = "") -> None:
        super().__init__(log)
        self.data = data
        self.extra = tuple(extra)
        self.ready = data.parent / f"{name or data.name}.ready.json"
        self.url = ""

    def start(self, timeout: float = READY_TIMEOUT) -> str:
        self.launch()
        return self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the process without waiting for it to listen (several replicas start at once this way)."""
        self.ready.unlink(missing_ok=True)
        self._spawn(["serve", "--data", str(self.data), "--port", "0", "--ready-file", str(self.ready), *self.extra])

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> str:
        """Wait until the launched relay listens; its URL."""
        proc = self.proc
        if proc is None:
            raise OperationalError("the relay was not launched")
        try:
            self.url = ready_url(proc, self.ready, self.log, timeout)
        except OperationalError:
            self.stop()
            raise
        return self.url


class WorkerProcess(_Child):
    """``labrelay worker`` as a child process (the scaled configuration's background jobs)."""

    def __init__(self, data: Path, log: Path) -> None:
        super().__init__(log)
        self.data = data

    def start(self) -> None:
        self._spawn(["worker", "--data", str(self.data)])
