"""The lab's outbox folder: when a file in it is complete, and where it goes once dealt with.

A file is taken once complete: a name ending in ``.part`` or starting with ``.`` is never taken (the LIS writes
``results.csv.part`` and renames it, or a hidden temporary); any other regular file only once its size and
modification time have stayed the same for ``stable_for`` seconds of the agent's watching (``--once``, which looks
only once, takes a file whose modification time is at least ``stable_for`` old). Directories (``sent/``,
``failed/`` among them), symbolic links and other special files are not input.

A complete file is first claimed: renamed into ``.taking/NAME`` (hidden, so never input), where nothing else can
replace it while it is sent. From there, sent files go to ``sent/NAME`` beside ``sent/NAME.report.json``; refused or
given-up ones to ``failed/NAME`` beside ``failed/NAME.reason.json``. The report is written (atomically) before the
file is moved, so a crash in between leaves the file in ``.taking/``: the next pass sends it again, the idempotent
send answers "already sent", and it moves then. A name already taken in ``sent/`` or ``failed/`` gets a ``-2``,
``-3``… before its extension. The three folders are made 0750 if missing and refused unless they are real
directories owned by the agent's user; every rename and write is relative to their descriptors, opened without
following links.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labrelay.errors import UsageError
from labrelay.jsonfile import write_json_atomic

TAKING_DIR = ".taking"
SENT_DIR = "sent"
FAILED_DIR = "failed"
PARTIAL_SUFFIX = ".part"
REPORT_SUFFIX = ".report.json"
REASON_SUFFIX = ".reason.json"

Snapshot = tuple[int, int]  # size, mtime in nanoseconds


class NotRegular(OSError):
    """The name is not a regular file (a link, a directory, a special file): not input."""


def ignored(name: str) -> bool:
    """Names never taken, whatever their age: ``*.part`` and hidden files."""
    return name.startswith(".") or name.endswith(PARTIAL_SUFFIX)


def scan(outbox: Path, others: dict[str, str] | None = None) -> dict[str, Snapshot]:
    """The outbox's candidate files (regular, not ignored) and their size and modification time; ``others``, if
    given, receives every other name not ignored by design (not hidden, not ``.part``, not ``sent``/``failed``)
    with why it is not input."""
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
            elif others is not None and entry.name not in (SENT_DIR, FAILED_DIR):
                others[entry.name] = _why_not(info.st_mode)
    return found


def _why_not(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


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
    """Claims complete files out of the outbox into ``.taking/`` and files them from there, each with its JSON
    document. Every rename and write is made relative to directory descriptors opened without following links,
    each folder checked (a real directory, the agent's own): whoever writes the outbox cannot point ``failed/``
    at another directory, even by swapping it after the check. An unsafe folder raises UsageError."""

    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox
        self.taking_dir = outbox / TAKING_DIR
        self.sent_dir = outbox / SENT_DIR
        self.failed_dir = outbox / FAILED_DIR
        self.check()

    def check(self) -> None:
        """Make the three folders (0750) if missing; refuse any that is not a real directory the agent owns."""
        with self._folders(TAKING_DIR, SENT_DIR, FAILED_DIR):
            pass

    def claim(self, name: str) -> Path:
        """Move ``name`` (a regular file, not a link) into ``.taking/``; nothing can replace it there. Raises
        FileNotFoundError if it is gone, FileExistsError if a file of that name is being taken already,
        ``NotRegular`` if it is not a regular file."""
        with self._folders(TAKING_DIR) as (outbox_fd, taking_fd):
            if not stat.S_ISREG(os.stat(name, dir_fd=outbox_fd, follow_symlinks=False).st_mode):
                raise NotRegular(name)
            if _exists(taking_fd, name):
                raise FileExistsError(name)
            os.rename(name, name, src_dir_fd=outbox_fd, dst_dir_fd=taking_fd)
            if not stat.S_ISREG(os.stat(name, dir_fd=taking_fd, follow_symlinks=False).st_mode):
                os.rename(name, name, src_dir_fd=taking_fd, dst_dir_fd=outbox_fd)  # swapped in between: back
                raise NotRegular(name)
        return self.taking_dir / name

    def claimed(self) -> list[str]:
        """The regular files in ``.taking/`` (claimed by a run that has not filed them yet)."""
        with self._folders(TAKING_DIR) as (_, taking_fd), os.scandir(taking_fd) as entries:
            return sorted(e.name for e in entries if e.is_file(follow_symlinks=False) and not ignored(e.name))

    def sent(self, name: str, report: Mapping[str, Any]) -> Path:
        return self._move(name, SENT_DIR, REPORT_SUFFIX, report)

    def failed(self, name: str, reason: Mapping[str, Any]) -> Path:
        return self._move(name, FAILED_DIR, REASON_SUFFIX, reason)

    def _move(self, name: str, folder: str, suffix: str, doc: Mapping[str, Any]) -> Path:
        with self._folders(TAKING_DIR, folder) as (_, taking_fd, dest_fd):
            os.stat(name, dir_fd=taking_fd, follow_symlinks=False)  # FileNotFoundError: the claimed file is gone
            dest = _free_name(dest_fd, name)
            write_json_atomic(Path(dest + suffix), {**doc, "file": dest}, 0o640, dir_fd=dest_fd)
            os.rename(name, dest, src_dir_fd=taking_fd, dst_dir_fd=dest_fd)
        return self.outbox / folder / dest

    @contextmanager
    def _folders(self, *names: str) -> Iterator[tuple[int, ...]]:
        """The outbox's descriptor, then each folder's (made if missing, checked)."""
        fds = [os.open(self.outbox, os.O_RDONLY | os.O_DIRECTORY)]
        try:
            for name in names:
                fds.append(_open_folder(fds[0], name, self.outbox / name))
            yield tuple(fds)
        finally:
            for fd in fds:
                os.close(fd)


def _open_folder(outbox_fd: int, name: str, shown: Path) -> int:
    with suppress(FileExistsError):
        os.mkdir(name, mode=0o750, dir_fd=outbox_fd)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=outbox_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UsageError(f"{shown} is not a directory (a symbolic link or a file): refused") from exc
        raise
    if os.fstat(fd).st_uid != os.geteuid():
        os.close(fd)
        raise UsageError(f"{shown} is not owned by the agent's user: refused")
    return fd


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _free_name(dir_fd: int, name: str) -> str:
    if not _exists(dir_fd, name):
        return name
    stem, dot, ext = name.partition(".")
    for n in range(2, 100_000):
        candidate = f"{stem}-{n}{dot}{ext}"
        if not _exists(dir_fd, candidate):
            return candidate
    raise FileExistsError(name)
