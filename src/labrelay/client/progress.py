"""Progress reporting for long work, without tying use cases to a terminal library.

A task counts in a unit: ``records`` for reading, validating and routing (the total known from the file's
lines), ``bytes`` for what is sealed, uploaded or downloaded. A long command ends with one line saying how long
it took, how many records and how fast (``Stopwatch``).
"""

from __future__ import annotations

import time
from typing import Literal, Protocol

Unit = Literal["records", "bytes", "persons"]


class ProgressTask(Protocol):
    def advance(self, n: int) -> None: ...

    def done(self) -> None: ...


class Progress(Protocol):
    def task(self, label: str, total: int | None, unit: Unit = "bytes") -> ProgressTask: ...

    def note(self, message: str) -> None: ...


class _Silent:
    def advance(self, n: int) -> None:
        pass

    def done(self) -> None:
        pass


class NoProgress:
    """Reports nothing (scripts, tests, ``--quiet``)."""

    def task(self, label: str, total: int | None, unit: Unit = "bytes") -> ProgressTask:
        return _Silent()

    def note(self, message: str) -> None:
        pass


class Stopwatch:
    """Elapsed time of a command, and its closing line: ``done in 12.3 s: 10,000 records, 812 records/s``."""

    def __init__(self) -> None:
        self._start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def line(self, records: int, what: str = "records") -> str:
        seconds = self.elapsed
        rate = f", {records / seconds:,.0f} {what}/s" if seconds > 0 and records else ""
        return f"done in {seconds:.1f} s: {records:,} {what}{rate}"
