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
import os
import sys
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO

from labrelay import errors
from labrelay.cli.printable import printable, printable_json
from labrelay.client.progress import Unit

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from labrelay.cli.safe_console import SafeConsole


# What makes rich take a stream that is not a TTY for a terminal (rich.console.Console.__init__ and is_terminal).
_FORCING = ("FORCE_COLOR", "TTY_INTERACTIVE", "TTY_COMPATIBLE")


class Output:
    """stdout or stderr as the CLI prints to it. Lines of text for a stream that is no terminal (a cron job's log,
    a pipe, a test's capture) are written straight away, neutralised by ``printable`` exactly as the rich console
    writes them there (no colour, no wrapping); anything else (a terminal, a renderable, markup, a progress bar)
    goes through a ``SafeConsole``, built, and rich imported, on first need: a fetch run from cron does not pay
    rich's start-up. tests/unit/test_printable.py checks that both ways write the same bytes."""

    def __init__(self, *, stderr: bool) -> None:
        self._stderr = stderr
        self._console: SafeConsole | None = None

    @property
    def file(self) -> TextIO | None:
        """The stream, looked up on each print like rich's (redirections): the real one behind rich's proxy (a
        progress bar on stderr replaces ``sys.stdout`` with a proxy that would send stdout's lines to stderr);
        None when the process has no such stream (``>&-``)."""
        stream = sys.stderr if self._stderr else sys.stdout
        return getattr(stream, "rich_proxied_file", stream)

    @property
    def console(self) -> SafeConsole:
        if self._console is None:
            from labrelay.cli.safe_console import SafeConsole  # noqa: PLC0415 - rich loads on first need

            self._console = SafeConsole(stderr=self._stderr, highlight=False, soft_wrap=True)
        return self._console

    def _plain(self) -> bool:
        """Whether rich would see no terminal here: nothing forces one and the stream is no TTY."""
        if self._console is not None or any(os.environ.get(name) for name in _FORCING):
            return False
        if self.file is None:
            return True  # nowhere to write: dropped, as rich drops it
        isatty = getattr(self.file, "isatty", None)
        try:
            return not (isatty is not None and isatty())
        except ValueError:  # closed
            return False

    @property
    def is_terminal(self) -> bool:
        return False if self._plain() else self.console.is_terminal

    def print(self, *objects: Any, sep: str = " ", end: str = "\n", markup: bool = False, **options: Any) -> None:
        lines = sep == " " and end == "\n" and not markup and not options  # what the CLI prints, always
        if not lines or not self._plain() or not all(isinstance(o, str) for o in objects):
            self.console.print(*objects, sep=sep, end=end, markup=markup, **options)
            return
        stream = self.file
        if stream is None:
            return
        stream.write(" ".join(printable(o) for o in objects) + "\n")
        stream.flush()


def print_lines(console: Output, text: str) -> None:
    """Several lines the CLI composed itself, each printed (and neutralised) on its own."""
    for line in text.split("\n"):
        console.print(line, markup=False)


out = Output(stderr=False)
err = Output(stderr=True)

EXIT_OK = 0
EXIT_OPERATIONAL = 1
EXIT_USAGE = 2
EXIT_SECURITY = 3
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT), as a shell reports a process it interrupted
EXIT_TERMINATED = 143  # SIGTERM (systemd's stop, a timeout)


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
        self.command: str | None = None  # the command this run names, for a failure's document

    def reset(self) -> None:
        """A new run of the CLI (``main`` called again in one process): no document emitted yet."""
        self.enabled = False
        self.done = False
        self.command = None

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
        error = {"code": exc.code, "message": exc.message, "hint": exc.hint, "kind": kind_of(exc)}
        doc = {"command": self.command, "error": error} if self.command else {"error": error}
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

            self._bar = progress_bar(err.console)

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
