"""The lab's outbox folder: when a file in it is complete, and where it goes once dealt with.

A file is taken once complete: a name ending in ``.part`` or starting with ``.`` is never taken (the LIS writes
``results.csv.part`` and renames it, or a hidden temporary); any other regular file only once its size and
modification time have stayed the same for ``stable_for`` seconds of the agent's watching (``--once``, which looks
only once, takes a file whose modification time is at least ``stable_for`` old). Directories (``sent/``,
``failed/`` among them), symbolic links and other special files are not input.

Sent files go to ``sent/NAME`` beside ``sent/NAME.report.json``; refused or given-up ones to ``failed/NAME`` beside
``failed/NAME.reason.json``. The report is written (atomically) before the file is moved, so a crash in between
leaves the file in the outbox: the next pass sends it again, the idempotent send answers "already sent", and it
moves then. A name already taken in ``sent/`` or ``failed/`` gets a ``-2``, ``-3``… before its extension.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labrelay.client.files import write_json_atomic

SENT_DIR = "sent"
FAILED_DIR = "failed"
PARTIAL_SUFFIX = ".part"
REPORT_SUFFIX = ".report.json"
REASON_SUFFIX = ".reason.json"

Snapshot = tuple[int, int]  # size, mtime in nanoseconds


def ignored(name: str) -> bool:
    """Names never taken, whatever their age: ``*.part`` and hidden files."""
    return name.startswith(".") or name.endswith(PARTIAL_SUFFIX)


def scan(outbox: Path) -> dict[str, Snapshot]:
    """The outbox's candidate files (regular, not ignored) and their size and modification time."""
    found: dict[str, Snapshot] = {}
    with os.scandir(outbox) as entries:
        for entry in entries:
            if ignored(entry.name):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(info.st_mode):
                found[entry.name] = (info.st_size, info.st_mtime_ns)
    return found


@dataclass
class _Seen:
    snapshot: Snapshot
    since: float


class Completeness:
    """Which files have been still for ``stable_for`` seconds, by the agent's own monotonic clock."""

    def __init__(self, stable_for: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.stable_for = stable_for
        self._monotonic = monotonic
        self._seen: dict[str, _Seen] = {}

    def ready(self, files: Mapping[str, Snapshot]) -> list[str]:
        now = self._monotonic()
        for name in set(self._seen) - set(files):
            del self._seen[name]
        out = []
        for name, snapshot in sorted(files.items()):
            seen = self._seen.get(name)
            if seen is None or seen.snapshot != snapshot:
                self._seen[name] = _Seen(snapshot, now)
                continue
            if now - seen.since >= self.stable_for:
                out.append(name)
        return out

    def forget(self, name: str) -> None:
        self._seen.pop(name, None)


def settled(files: Mapping[str, Snapshot], stable_for: float, now: float) -> list[str]:
    """For a single look (``--once``): files last modified at least ``stable_for`` seconds before ``now`` (epoch)."""
    return sorted(name for name, (_, mtime) in files.items() if now - mtime / 1e9 >= stable_for)


class Sorter:
    """Moves dealt-with files out of the outbox, each with its JSON document."""

    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox
        self.sent_dir = outbox / SENT_DIR
        self.failed_dir = outbox / FAILED_DIR
        for folder in (self.sent_dir, self.failed_dir):
            folder.mkdir(mode=0o750, exist_ok=True)

    def sent(self, name: str, report: Mapping[str, Any]) -> Path:
        return self._move(name, self.sent_dir, REPORT_SUFFIX, report)

    def failed(self, name: str, reason: Mapping[str, Any]) -> Path:
        return self._move(name, self.failed_dir, REASON_SUFFIX, reason)

    def _move(self, name: str, folder: Path, suffix: str, doc: Mapping[str, Any]) -> Path:
        dest = _free_name(folder, name)
        write_json_atomic(dest.with_name(dest.name + suffix), {**doc, "file": dest.name}, mode=0o640)
        os.rename(self.outbox / name, dest)
        return dest


def _free_name(folder: Path, name: str) -> Path:
    if not (folder / name).exists():
        return folder / name
    stem, dot, ext = name.partition(".")
    for n in range(2, 100_000):
        candidate = folder / f"{stem}-{n}{dot}{ext}"
        if not candidate.exists():
            return candidate
    raise FileExistsError(name)
