"""Terminal output: results on stdout, messages and progress bars on stderr, exit codes for scripts."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from labrelay import errors

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_OK = 0
EXIT_OPERATIONAL = 1
EXIT_USAGE = 2
EXIT_SECURITY = 3


def exit_code_for(exc: errors.LabrelayError) -> int:
    """0 success, 1 operational failure, 2 usage error, 3 refused by a security check."""
    if isinstance(exc, errors.SecurityError):
        return EXIT_SECURITY
    if isinstance(exc, errors.UsageError):
        return EXIT_USAGE
    return EXIT_OPERATIONAL


def kind_of(exc: errors.LabrelayError) -> str:
    return {EXIT_SECURITY: "refused", EXIT_USAGE: "usage error"}.get(exit_code_for(exc), "error")


def report(exc: errors.LabrelayError) -> None:
    err.print(f"labrelay: {kind_of(exc)}: {exc.diagnostics()}", markup=False)


class _Task:
    def __init__(self, bar: Progress | None, task: TaskID | None) -> None:
        self._bar = bar
        self._task = task

    def advance(self, n: int) -> None:
        if self._bar is not None and self._task is not None and n:
            self._bar.advance(self._task, n)

    def done(self) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.remove_task(self._task)


class TerminalProgress:
    """Progress bars on stderr when it is a terminal; one line per step otherwise (logs stay readable)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self._bar: Progress | None = None
        if not quiet and err.is_terminal:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=err,
                transient=True,
            )

    def __enter__(self) -> TerminalProgress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()

    def task(self, label: str, total: int | None) -> _Task:
        if self._bar is None:
            if not self.quiet:
                err.print(f"… {label}", markup=False)
            return _Task(None, None)
        return _Task(self._bar, self._bar.add_task(label, total=total))

    def note(self, message: str) -> None:
        if not self.quiet:
            err.print(message, markup=False)
