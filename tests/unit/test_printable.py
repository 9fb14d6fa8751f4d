"""What the CLI prints shows control and invisible characters as escapes, never passes them to the terminal."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.text import Text

from labrelay.cli.printable import printable, printable_json
from labrelay.cli.safe_console import SafeConsole
from labrelay.cli.ui import Output
from labrelay.domain.names import is_hidden as is_unsafe

# What a terminal obeys or hides: erase, move, recolour, retitle, bell, CR, newline, the 8-bit CSI, DEL, bidi
# embeddings, overrides and isolates, zero-width characters, the BOM, a tag character, a line separator, a lone
# surrogate (which would also crash the write).
OBEYED = [
    "\x1b", "\r", "\n", "\t", "\x07", "\x08", "\x00", "\x7f", "\x85", "\x9b", "\x9d",
    "\u200b", "\u200d", "\u200e", "\u200f", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e",
    "\u2066", "\u2067", "\u2068", "\u2069", "\u061c", "\ufeff", "\U000e0041", "\u2028", "\u2029", "\ud800",
]  # fmt: skip
KEPT = ["é", "É", "œ", "«\u00a0", "\u202f»", "—", "…", "ñ", "日本", "age1qqq", "[red]", ":smile:", "\\x1b", " "]


@pytest.mark.threat("T37")
@pytest.mark.parametrize("char", OBEYED)
def test_every_control_or_invisible_character_is_shown_not_obeyed(char: str) -> None:
    assert is_unsafe(char)
    shown = printable(f"before{char}after")
    assert char not in shown
    assert shown.startswith("before")
    assert shown.endswith("after")
    assert shown.isprintable()  # nothing left that Python itself would not show
    assert "\\" in shown  # visibly replaced, not dropped


def test_text_that_needs_nothing_is_left_alone() -> None:
    for text in KEPT:
        assert printable(text) == text
        assert printable_json(json.dumps(text, ensure_ascii=False)) == json.dumps(text, ensure_ascii=False)


def test_newlines_are_kept_only_when_the_cli_composed_them() -> None:
    assert printable("one\ntwo") == "one\\ntwo"
    assert printable("one\ntwo\r\x1b[2K", newlines=True) == "one\ntwo\\r\\x1b[2K"
    assert printable("\x1b[31mred\x1b[0m") == "\\x1b[31mred\\x1b[0m"
    assert printable("\u202eevil") == "\\u202eevil"
    assert printable("\U000e0041") == "\\U000e0041"


@pytest.mark.threat("T37")
def test_json_keeps_the_value_and_loses_the_control_characters() -> None:
    value = {"detail": "".join(OBEYED) + " still readable", "names": ["cnam", "ars-\u202e11"]}
    document = json.dumps(value, ensure_ascii=False, indent=2)
    safe = printable_json(document)
    assert json.loads(safe) == value  # the same JSON value …
    assert not any(char in safe for char in OBEYED if char != "\n")  # … with nothing a terminal obeys
    assert safe.count("\n") == document.count("\n")  # indentation kept
    assert printable_json('{"a":\r1,\t"b": 2}') == '{"a": 1, "b": 2}'  # raw tab and CR: whitespace between tokens


@pytest.mark.threat("T37")
def test_the_cli_console_shows_escapes_whatever_it_is_given() -> None:
    """Strings and any renderable alike (a rich Text: progress labels render so): the console is the one place
    everything printed passes."""
    sink = io.StringIO()
    console = SafeConsole(file=sink, highlight=False, soft_wrap=True, force_terminal=True, color_system="truecolor")
    console.print("relay says: \x1b[2K\x1b[1Aok\rfine [bold red]fake[/] \u202eevil")
    console.print(Text("label \x1b]0;title\x07 \x9b31m"))
    console.print(Text("styled", style="bold"))  # the console's own styling still works
    written = sink.getvalue()
    ansi_of_its_own = written.count("\x1b[1m")  # the bold above
    assert ansi_of_its_own == 1
    assert written.replace("\x1b[1m", "").replace("\x1b[0m", "").count("\x1b") == 0
    for char in ("\r", "\x07", "\x9b", "\u202e"):
        assert char not in written
    assert "\\x1b[2K\\x1b[1Aok\\rfine [bold red]fake[/] \\u202eevil" in written  # markup off: shown as typed
    assert "label \\x1b]0;title" in written
    assert "\\x9b31m" in written


class _Pipe(io.StringIO):
    """A stream that is no terminal (a cron job's log, a pipe)."""

    def isatty(self) -> bool:
        return False


@pytest.fixture
def no_forced_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the environment running the tests says, rich is not told that a pipe is a terminal: the tests
    below compare the fast path with rich, which they must reach."""
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)


def _both_ways(objects: list[str], **kwargs: str) -> tuple[str, str]:
    """What the CLI's ``Output`` writes to a stream that is no terminal, and what rich's console writes there."""
    plain, rich = _Pipe(), _Pipe()
    with redirect_stdout(plain):
        Output(stderr=False).print(*objects, markup=False, **kwargs)
    SafeConsole(file=rich, highlight=False, soft_wrap=True).print(*objects, markup=False, **kwargs)
    return plain.getvalue(), rich.getvalue()


LINES = [
    *(f"before{char}after" for char in OBEYED),
    *KEPT,
    "",
    "a line longer than any terminal, " * 12 + "   ",
    "trailing spaces   ",
    "   leading spaces",
    "日本語の行 " * 30,
    "e\u0301 combining, \u00a0no-break, \u3000ideographic space",
    "tab\there",
    "[bold]not markup[/bold] :smile: not an emoji",
]


@pytest.mark.threat("T37")
@pytest.mark.parametrize("line", LINES)
@pytest.mark.usefixtures("no_forced_terminal")
def test_lines_for_no_terminal_are_written_as_rich_writes_them(line: str) -> None:
    """Output writes lines for a log or a pipe without loading rich: the same bytes rich's console writes there,
    escapes included."""
    plain, rich = _both_ways([line])
    assert plain == rich
    assert plain.endswith("\n")


@pytest.mark.usefixtures("no_forced_terminal")
@given(st.lists(st.text(), min_size=1, max_size=3))
def test_any_text_is_written_as_rich_writes_it(objects: list[str]) -> None:
    plain, rich = _both_ways(objects)
    assert plain == rich


@pytest.mark.usefixtures("no_forced_terminal")
@given(st.lists(st.text(), min_size=1, max_size=3), st.sampled_from([" ", "", ", ", "\t"]), st.sampled_from(["\n", ""]))
def test_other_separators_and_ends_go_through_rich(objects: list[str], sep: str, end: str) -> None:
    plain, rich = _both_ways(objects, sep=sep, end=end)
    assert plain == rich


@pytest.mark.usefixtures("no_forced_terminal")
def test_stdout_behind_a_progress_bar_still_reaches_stdout() -> None:
    """A progress bar on stderr replaces ``sys.stdout`` with rich's proxy, which would send stdout's lines to the
    stderr console: the transfer ids a script reads from ``labrelay send … > sent.log`` must reach the file."""
    from rich.file_proxy import FileProxy  # noqa: PLC0415

    real, errors = _Pipe(), _Pipe()
    proxy = FileProxy(SafeConsole(file=errors, highlight=False, soft_wrap=True), real)
    with redirect_stdout(proxy):  # type: ignore[type-var]
        Output(stderr=False).print("sent 0cbe1051 to cnam")
    assert real.getvalue() == "sent 0cbe1051 to cnam\n"
    assert errors.getvalue() == ""


def test_a_closed_stdout_drops_the_line_as_rich_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """``labrelay fetch … >&-``: Python has no ``sys.stdout`` at all; the line is dropped, nothing raised."""
    monkeypatch.setattr("sys.stdout", None)
    Output(stderr=False).print("fetched 1 payload")
    assert Output(stderr=False).is_terminal is False


@pytest.mark.usefixtures("no_forced_terminal")
def test_a_terminal_or_a_renderable_still_goes_through_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    sink = _Pipe()
    with redirect_stderr(sink):
        output = Output(stderr=True)
        assert output.is_terminal is False
        output.print(Text("styled", style="bold"))  # a renderable: rich renders it (no terminal: no escape codes)
        assert sink.getvalue() == "styled\n"
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich takes the stream for a terminal: so does Output
    forced = _Pipe()
    with redirect_stderr(forced):
        output = Output(stderr=True)
        assert output.is_terminal is True
        output.print(Text("styled", style="bold"))
    assert "\x1b[1m" in forced.getvalue()
