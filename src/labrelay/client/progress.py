"""Progress reporting for long work, without tying use cases to a terminal library."""

from __future__ import annotations

from typing import Protocol


class ProgressTask(Protocol):
    def advance(self, n: int) -> None: ...

    def done(self) -> None: ...


class Progress(Protocol):
    def task(self, label: str, total: int | None) -> ProgressTask: ...

    def note(self, message: str) -> None: ...


class _Silent:
    def advance(self, n: int) -> None:
        pass

    def done(self) -> None:
        pass


class NoProgress:
    """Reports nothing (scripts, tests, ``--quiet``)."""

    def task(self, label: str, total: int | None) -> ProgressTask:
        return _Silent()

    def note(self, message: str) -> None:
        pass
