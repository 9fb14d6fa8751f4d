"""The demo's relay: ``labrelay serve`` on a free loopback port, as a child process in its own session."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from labrelay.errors import OperationalError

READY_TIMEOUT = 60.0


class DemoRelay:
    """A relay on port 0 with its output appended to ``log``: started, its URL read from the ready file it writes
    once listening, stopped gracefully (SIGTERM, then SIGKILL if it does not exit in time) or left running."""

    def __init__(self, data: Path, log: Path) -> None:
        self.data = data
        self.log = log
        self.ready = data.parent / f"{data.name}.ready.json"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float = READY_TIMEOUT) -> str:
        """Start the relay and wait until it listens; its URL."""
        self.ready.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "LABRELAY_DEBUG"}
        args = ["serve", "--data", str(self.data), "--port", "0", "--ready-file", str(self.ready)]
        with self.log.open("ab") as log:
            proc = self.proc = subprocess.Popen(
                [sys.executable, "-m", "labrelay", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        try:
            return ready_url(proc, self.ready, self.log, timeout)
        except OperationalError:
            self.stop()
            raise

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (graceful shutdown), then SIGKILL if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def ready_url(proc: subprocess.Popen[bytes], ready: Path, log: Path, timeout: float) -> str:
    """The URL a ``labrelay serve --ready-file READY`` child writes once it listens, waited for up to ``timeout``
    seconds; ``OperationalError`` (naming ``log``) if it exits or does not listen in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready.exists():
            return str(json.loads(ready.read_text())["url"])
        if proc.poll() is not None:
            raise OperationalError(f"the relay exited with code {proc.returncode}; see {log}")
        time.sleep(0.05)
    raise OperationalError(f"the relay did not start within {timeout:.0f}s; see {log}")
