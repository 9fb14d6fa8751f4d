"""One run at a time per party: ``send``, ``resume`` and ``fetch`` for the same party exclude each other.

Overlapping cron jobs are the usual cause: a nightly send still uploading when the next starts, two fetches a
minute apart on a slow link. Without a lock they would upload the same spool twice or race on the same partial
download. The lock is an advisory ``flock`` on ``PARTY/.lock``, released by the kernel when the process ends
however it ends (a killed run leaves no stale lock); the file names the command and pid holding it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from labrelay.errors import PartyBusy

LOCK_FILE = ".lock"
AGENT_LOCK_FILE = ".agent.lock"  # held by an agent for as long as it runs: one agent per party


def _holder(fd: int, name: str) -> str:
    """ "another fetch for cnam is running (pid 123)", from what the holder wrote in the lock file."""
    words: list[str] = []
    with contextlib.suppress(OSError):
        words = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
    if len(words) == 2 and words[0].isalpha() and words[1].isdigit():
        return f"another {words[0]} for {name} is running (pid {words[1]})"
    return f"another run for {name} is running"


@contextlib.contextmanager
def party_lock(
    party_dir: Path, name: str, command: str, *, wait: float = 0.0, lock_file: str = LOCK_FILE
) -> Iterator[None]:
    """Hold ``party_dir``'s lock (``lock_file``) for ``command``; wait up to ``wait`` seconds for it, then raise
    ``PartyBusy`` naming the command and pid that hold it."""
    fd = os.open(party_dir / lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        deadline = time.monotonic() + max(wait, 0.0)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise PartyBusy(
                        _holder(fd, name),
                        hint="it holds this party's lock until it ends; wait for it, or pass --wait DURATION",
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{command} {os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
