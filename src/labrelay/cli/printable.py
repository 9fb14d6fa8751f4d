"""Text from elsewhere, made safe to show on a terminal.

A relay's error messages and hints, party names, file names, refusal details and alerts reach the CLI user's
terminal; so do the names of the user's own files. None of it may move the cursor, erase or recolour a line, set
the window title, or reorder what is shown. ``printable`` replaces every character a terminal would obey or
hide by a visible escape (``\\x1b``, ``\\r``, ``\\u202e``): C0 and C1 controls (ESC, CR, BEL, and the 8-bit CSI
U+009B …), DEL, invisible format characters (zero-width spaces and joiners, bidi embeddings, overrides and
isolates, the byte-order mark, tags), line and paragraph separators, and lone surrogates. The text stays readable
and nothing is dropped silently. ``labrelay.cli.ui`` applies it to everything the CLI prints. The characters and
their escapes are the ones the relay shows operators (``labrelay.domain.names.is_hidden``, ``escape``).
"""

from __future__ import annotations

from labrelay.domain.names import escape, is_hidden


def printable(text: str, *, newlines: bool = False) -> str:
    """``text`` with every character a terminal would obey or hide shown as its escape. Newlines too, unless
    ``newlines`` (text the CLI composed of several lines itself)."""
    if text.isascii() and text.isprintable():  # the usual case, at C speed
        return text
    return "".join(escape(char) if is_hidden(char) and not (newlines and char == "\n") else char for char in text)


def _json_escape(char: str) -> str:
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def printable_json(document: str) -> str:
    """A JSON text with the characters ``printable`` would replace written as ``\\uXXXX`` escapes instead: the same
    JSON value, safe on a terminal (JSON escapes C0 controls in strings, but not DEL, C1 or format characters).
    A raw tab or CR can only be whitespace between tokens: it becomes a space; newlines stay."""
    if document.isascii() and document.isprintable():
        return document
    return "".join(
        " " if char in "\t\r" else _json_escape(char) if char != "\n" and is_hidden(char) else char for char in document
    )
