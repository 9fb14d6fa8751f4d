"""Terminal output: results on stdout, messages and progress bars on stderr, exit codes for scripts.

With ``--json`` (``send``, ``validate``, ``fetch``, ``receipts``, ``resume``) a command prints exactly one JSON
document on stdout, also when it fails (``{"ok": false, "error": {...}, "exit_code": N}``); the one-line message
still goes to stderr.

Everything printed goes through ``printable`` (labrelay.cli.printable): what a relay sends (error text, hints,
alerts), and every name or file name, reaches the terminal with its control and invisible characters shown as
escapes, never obeyed. One ``print`` is one or more *lines*: a newline inside a string is shown as ``\\n``, so a
field cannot forge a line of its own; print several lines one by one (``print_lines``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.segment import Segment

from labrelay import errors
from labrelay.cli.printable import printable, printable_json
from labrelay.client.progress import Unit

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


class SafeConsole(Console):
    """A rich console that shows, never obeys, control and invisible characters (``printable``): every string
    given to ``print`` is neutralised whole, newlines included, and markup is off unless asked for; every piece
    of text rendered (progress labels, any renderable) is neutralised again, keeping only the line breaks rich
    itself lays out. The console's own control sequences (progress bars) are not text and pass."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        kwargs.setdefault("markup", False)
        kwargs.setdefault("emoji", False)
        super().print(*(printable(o) if isinstance(o, str) else o for o in objects), **kwargs)

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        return super()._render_buffer(
            segment if segment.control else segment._replace(text=printable(segment.text, newlines=True))
            for segment in buffer
        )


def print_lines(console: Console, text: str) -> None:
    """Several lines the CLI composed itself, each printed (and neutralised) on its own."""
    for line in text.split("\n"):
        console.print(line, markup=False)


out = SafeConsole(highlight=False, soft_wrap=True)
err = SafeConsole(stderr=True, highlight=False, soft_wrap=True)

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


def warn(message: str) -> None:
    """One line on stderr that does not stop the command."""
    err.print(f"labrelay: warning: {message}", markup=False)


def report(exc: errors.LabrelayError) -> None:
    err.print(f"labrelay: {kind_of(exc)}: {exc.diagnostics()}", markup=False)
    if json_output.enabled:
        json_output.fail(exc)


class JsonOutput:
    """The command's one JSON document, when --json was given."""

    def __init__(self) -> None:
        self.enabled = False
        self.done = False

    def reset(self) -> None:
        """A new run of the CLI (``main`` called again in one process): no document emitted yet."""
        self.enabled = False
        self.done = False

    def say(self, text: str) -> None:
        """A line for people: printed on stdout unless the command answers in JSON."""
        if not self.enabled:
            out.print(text, markup=False)

    def emit(self, doc: dict[str, Any], exit_code: int = EXIT_OK) -> None:
        if self.enabled and not self.done:
            self.done = True
            document = json.dumps({"ok": exit_code == EXIT_OK, **doc, "exit_code": exit_code}, ensure_ascii=False)
            print(printable_json(document))

    def fail(self, exc: errors.LabrelayError, exit_code: int | None = None) -> None:
        doc = {"error": {"code": exc.code, "message": exc.message, "hint": exc.hint, "kind": kind_of(exc)}}
        self.emit(doc, exit_code_for(exc) if exit_code is None else exit_code)


json_output = JsonOutput()


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
            from labrelay.cli.bars import progress_bar  # noqa: PLC0415 - rich's progress loads only for a terminal

            self._bar = progress_bar(err)

    def __enter__(self) -> TerminalProgress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()

    def task(self, label: str, total: int | None, unit: Unit = "bytes") -> _Task:
        if self._bar is None:
            if not self.quiet:
                err.print(f"… {label}", markup=False)
            return _Task(None, None)
        return _Task(self._bar, self._bar.add_task(label, total=total, unit=unit))

    def note(self, message: str) -> None:
        if not self.quiet:
            err.print(message, markup=False)
