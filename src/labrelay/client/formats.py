"""What ``labrelay fetch --format csv|excel|parquet`` writes from a routed CSV payload.

``csv`` is the payload as the lab's ``RecordSink`` wrote it (a header of the rule's fields, polars' CSV: comma,
``"`` quoting only where needed, LF, dates ``YYYY-MM-DD``, ``age`` an integer), with two columns appended to every
line by ``RowTagger``, on the way from the decryptor to the file: ``batch_id`` and ``sender``, from the verified
manifest. ``excel`` and ``parquet`` are converted from that tagged CSV by ``write_excel`` and ``write_parquet``,
read in blocks of whole records: memory does not grow with the file.

polars is imported inside the functions that convert, never at module level: ``fetch --format csv`` only tags
bytes and must start without the record-processing stack (``tests/unit/test_lazy_imports.py``).
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from labrelay.domain.records import ALL_OUTPUT_FIELDS
from labrelay.errors import OperationalError, StorageFull, Unreadable, UsageError

if TYPE_CHECKING:
    import polars as pl

OUTPUT_FORMATS = ("csv", "excel", "parquet")
EXTENSIONS = {"csv": ".csv", "excel": ".csv", "parquet": ".parquet"}

TAG_COLUMNS = ("batch_id", "sender")
"""The columns ``RowTagger`` appends, in this order, after the policy's fields."""
_TAG_HEADER = "".join(f",{c}" for c in TAG_COLUMNS).encode("ascii")

DATE_COLUMNS = frozenset({"date_naissance", "date_prelevement", "date_validation"})
INTEGER_COLUMNS = frozenset({"age"})
"""Typed in the parquet output (Date, Int16); every other column, identifiers included, stays a String."""

_TAG_VALUE = re.compile(r"[a-z0-9-]+")
_HEADER_LIMIT = 1 << 20  # bytes: a routed payload's header is a few hundred; anything longer is not one


class ByteSink(Protocol):
    def write(self, data: bytes, /) -> int | None: ...


# ------------------------------------------------------------------ csv: the payload, tagged


class RowTagger:
    """A writable byte stream that appends ``,batch_id,sender`` to the header line and ``,<batch>,<sender>`` to
    every other line of a routed CSV payload, writing the result to ``out``.

    Chunks may be cut anywhere (between ``\\r`` and ``\\n`` too). A line ending ``\\r\\n`` gets the suffix before
    the ``\\r``; a last line without a newline gets it too (at ``finish``) and stays without one; an empty payload
    writes nothing. Data lines are tagged with two ``bytes.replace`` per chunk, never a Python loop per line: this
    is sound because labrelay's payloads hold one record per line (validated values hold no control character, so
    no quoted field spans lines). ``finish`` must be called after the last ``write``; it does not close ``out``.
    """

    def __init__(self, out: ByteSink, batch_id: str, sender: str) -> None:
        for name, value in (("batch id", batch_id), ("sender", sender)):
            if not _TAG_VALUE.fullmatch(value):
                raise UsageError(f"invalid {name} {value!r} for the output's columns: [a-z0-9-]+ expected")
        self._out = out
        self._suffix = f",{batch_id},{sender}".encode("ascii")
        self._crlf_from = b"\r" + self._suffix + b"\n"
        self._crlf_to = self._suffix + b"\r\n"
        self._header: bytearray | None = bytearray()  # None once the header line is written
        self._cr = False  # the last chunk ended with a \r, held back until we know whether \n follows
        self._open = False  # bytes of an unterminated data line have been written
        self._finished = False

    def write(self, data: bytes, /) -> int:
        if self._finished:
            raise ValueError("write after finish")
        size = len(data)
        if not size:
            return 0
        if self._header is not None:
            self._header += data
            end = self._header.find(b"\n")
            if end < 0:
                if len(self._header) > _HEADER_LIMIT:
                    raise Unreadable("payload's first line is over 1 MiB: not a routed CSV payload")
                return size
            line, rest = bytes(self._header[:end]), bytes(self._header[end + 1 :])
            self._header = None
            if line.endswith(b"\r"):
                self._out.write(line[:-1] + _TAG_HEADER + b"\r\n")
            else:
                self._out.write(line + _TAG_HEADER + b"\n")
            self._rows(rest)
        else:
            self._rows(bytes(data))
        return size

    def _rows(self, chunk: bytes) -> None:
        if self._cr:
            chunk = b"\r" + chunk
            self._cr = False
        if not chunk:
            return
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._cr = True
        if not chunk:
            return
        # Every \n gets the suffix before it; then, where a \r preceded that \n, the suffix moves before the \r.
        # (The bytes just before any \n of the first result are the suffix inserted there, so "\r" + suffix + "\n"
        # only matches where the payload had "\r\n".)
        tagged = chunk.replace(b"\n", self._suffix + b"\n")
        if b"\r" in chunk:
            tagged = tagged.replace(self._crlf_from, self._crlf_to)
        self._out.write(tagged)
        self._open = not chunk.endswith(b"\n")

    def finish(self) -> None:
        """Write what is held back: a header without a newline (tagged), a last line without one (tagged)."""
        if self._finished:
            return
        self._finished = True
        if self._header is not None:
            line = bytes(self._header)
            self._header = None
            if not line:
                return  # an empty payload: nothing to tag
            if line.endswith(b"\r"):
                self._out.write(line[:-1] + _TAG_HEADER + b"\r")
            else:
                self._out.write(line + _TAG_HEADER)
            return
        if self._cr:  # the payload ends with a bare \r: a line end without its \n
            self._out.write(self._suffix + b"\r")
        elif self._open:
            self._out.write(self._suffix)
        self._cr = self._open = False

    def flush(self) -> None:
        flush = getattr(self._out, "flush", None)
        if flush is not None:
            flush()

    def writable(self) -> bool:
        return True


# ------------------------------------------------------------------ reading a tagged CSV back

BLOCK_BYTES = 4 << 20
"""Text parsed at a time when converting: memory stays flat whatever the file's size. Measured on 160 and 320 MB
files: polars' own lazy CSV scan (in the version we pin) grew with the file, by about 0.65 times its size; in 4 MiB
blocks, either converts within about 140 MB resident (excel) or 210 MB (parquet), polars included."""

_RECORD_LIMIT = 4 * BLOCK_BYTES  # a record longer than this is not one labrelay wrote
_HINT = "give it a file that labrelay fetch --format csv wrote"


def _header_of(source: Path) -> list[str]:
    """The column names of a tagged CSV, if it is one: known fields, each once, then ``batch_id,sender``."""
    try:
        with source.open("rb") as fh:
            head = fh.read(_HEADER_LIMIT)
    except OSError as exc:
        raise Unreadable(f"cannot read {source}: {exc.strerror or exc}") from exc
    line = head.split(b"\n", 1)[0].removesuffix(b"\r").removeprefix(b"\xef\xbb\xbf")
    try:
        columns = line.decode("utf-8").split(",")
    except UnicodeDecodeError:
        columns = []
    fields = columns[: -len(TAG_COLUMNS)]
    if (
        tuple(columns[-len(TAG_COLUMNS) :]) != TAG_COLUMNS
        or not fields
        or len(set(fields)) != len(fields)
        or any(f not in ALL_OUTPUT_FIELDS for f in fields)
    ):
        raise Unreadable(
            f"{source} is not a CSV written by labrelay fetch: its header is not the policy's fields "
            "followed by batch_id,sender",
            hint=_HINT,
        )
    return columns


def _records_end(data: bytes) -> int:
    """Where ``data`` can be cut after whole CSV records: after its last newline outside quotes (0: nowhere).
    labrelay's files have no newline inside a field, so the first newline tried is the one."""
    cut = len(data)
    while (cut := data.rfind(b"\n", 0, cut)) >= 0:
        if data.count(b'"', 0, cut) % 2 == 0:
            return cut + 1
    return 0


def _blank_as_null(column: str) -> pl.Expr:
    import polars as pl  # noqa: PLC0415 - lazy: fetch --format csv never loads polars

    value = pl.col(column)
    return pl.when(value == "").then(None).otherwise(value)


def _problems(columns: list[str]) -> dict[str, pl.Expr]:
    """Per row, whether it is malformed: short (no sender), or a date or age that does not parse."""
    import polars as pl  # noqa: PLC0415 - lazy: fetch --format csv never loads polars

    checks: dict[str, pl.Expr] = {"": pl.col(TAG_COLUMNS[-1]).is_null()}
    for name in columns:
        value = _blank_as_null(name)
        if name in DATE_COLUMNS:
            shaped = value.str.contains(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
            parsed = value.str.to_date("%Y-%m-%d", strict=False)
            checks[name] = value.is_not_null() & (~shaped | parsed.is_null())
        elif name in INTEGER_COLUMNS:
            checks[name] = value.is_not_null() & ~value.str.contains(r"^[0-9]{1,3}$")
    return checks


def _parsed(source: Path, block: bytes, columns: list[str], first: int) -> pl.DataFrame:
    """``block`` (whole records) as text columns, checked; ``first`` is the number of its first record. Errors
    name the record and the column, never a value: this is health data."""
    import polars as pl  # noqa: PLC0415 - lazy: fetch --format csv never loads polars

    try:
        frame = pl.read_csv(block, has_header=False, schema=dict.fromkeys(columns, pl.String))
    except pl.exceptions.PolarsError as exc:
        raise Unreadable(
            f"{source} is not a CSV written by labrelay fetch: malformed record (quotes, fields or encoding) "
            f"after record {first - 1}",
            hint=_HINT,
        ) from exc
    checks = _problems(columns)
    found = frame.select([check.arg_true().first().alias(name) for name, check in checks.items()]).row(0)
    for name, index in zip(checks, found, strict=True):
        if index is None:
            continue
        if not name:
            raise Unreadable(f"{source}: record {first + index} has fewer fields than the header", hint=_HINT)
        kind = "a date (YYYY-MM-DD)" if name in DATE_COLUMNS else "an age in years"
        raise Unreadable(f"{source}: record {first + index}, column {name}: not {kind}", hint=_HINT)
    return frame


def _blocks(source: Path, columns: list[str]) -> Iterator[pl.DataFrame]:
    """The data records of a tagged CSV (its header checked by ``_header_of``), all text (an unquoted empty cell is
    null), checked, in frames of about ``BLOCK_BYTES`` of text; at least one frame (empty: a header-only file)."""
    import polars as pl  # noqa: PLC0415 - lazy: fetch --format csv never loads polars

    first = 1
    try:
        with source.open("rb") as fh:
            fh.readline(_HEADER_LIMIT)
            tail = b""
            while True:
                chunk = fh.read(BLOCK_BYTES)
                data = tail + chunk
                cut = _records_end(data) if chunk else len(data)
                if chunk and not cut:
                    if len(data) > _RECORD_LIMIT:
                        raise Unreadable(f"{source}: a record over {_RECORD_LIMIT >> 20} MiB", hint=_HINT)
                    tail = data
                    continue
                block, tail = data[:cut], data[cut:]
                if block.strip(b"\r\n"):
                    frame = _parsed(source, block, columns, first)
                    first += frame.height
                    yield frame
                if not chunk:
                    break
    except OSError as exc:
        raise Unreadable(f"cannot read {source}: {exc.strerror or exc}") from exc
    if first == 1:
        yield pl.DataFrame(schema=dict.fromkeys(columns, pl.String))


def _write_failed(what: str, exc: Exception) -> OperationalError:
    """A failure writing the output (the input was read and checked): full disk, or what the cause says."""
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "[Errno 28]" in str(exc):
        return StorageFull(f"no space left to write the {what} output")
    return OperationalError(f"cannot write the {what} output: {type(exc).__name__}", hint="--verbose shows why")


# ------------------------------------------------------------------ excel


def excel_text(value: str) -> str:
    """What one cell's text becomes in the excel output (before CSV quoting; ``excel_cell`` is the same rule on a
    column):

    - all ASCII digits, and starting with 0 or 11 digits or more (postal code, phone, NIR, RPPS, commune code…):
      ``="VALUE"``, which Excel and LibreOffice show as the text VALUE, leading zeros kept and never rounded. This
      is a formula, but one we build, and only around a value made of digits alone: no character of the sender's
      but digits can get into it;
    - beginning with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return: a single quote before it, so that no
      spreadsheet evaluates it as a formula (OWASP, CSV injection);
    - anything else: unchanged.
    """
    if value.isascii() and value.isdigit() and (value.startswith("0") or len(value) >= 11):
        return f'="{value}"'
    if value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def excel_cell(column: str) -> pl.Expr:
    """``excel_text`` on every cell of ``column`` (a null stays empty)."""
    import polars as pl  # noqa: PLC0415 - lazy: fetch --format csv never loads polars

    value = pl.col(column)
    digits = value.str.contains(r"^[0-9]+$")  # ASCII digits: the class, not \d (which is Unicode's)
    keep_zeros = digits & (value.str.starts_with("0") | (value.str.len_chars() >= 11))
    formula = value.str.contains(r"^[=+\-@\t\r]")
    return (
        pl.when(keep_zeros)
        .then(pl.concat_str([pl.lit('="'), value, pl.lit('"')]))
        .when(formula)
        .then(pl.concat_str([pl.lit("'"), value]))
        .otherwise(value)
        .alias(column)
    )


def write_excel(source: Path, dest: BinaryIO) -> int:
    """Convert a tagged CSV (``fetch --format csv``) for French spreadsheets, writing to ``dest``; return the rows
    written.

    ``;`` between cells, UTF-8 with a BOM (so that Excel reads the accents right), CRLF line ends, cells quoted only
    where CSV requires it (a ``;``, a ``"`` — doubled — or a line break inside), every cell transformed by
    ``excel_text``. The result is for people: a database loads the csv or parquet output, whose values are the data
    itself. On an error, ``dest`` may hold part of the output: write to a temporary name and discard it.
    """
    import polars as pl  # noqa: PLC0415 - lazy: fetch --format csv never loads polars

    columns = _header_of(source)
    cells = [excel_cell(c) for c in columns]
    rows = 0
    first = True
    for frame in _blocks(source, columns):
        try:
            frame.select(cells).write_csv(
                dest,
                separator=";",
                line_terminator="\r\n",
                quote_style="necessary",
                include_bom=first,
                include_header=first,
            )
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise _write_failed("excel", exc) from exc
        first = False
        rows += frame.height
    return rows


# ------------------------------------------------------------------ parquet


def parquet_column(column: str) -> pl.Expr:
    """One text column as typed in the parquet output: Date for the three dates, Int16 for age, else String."""
    import polars as pl  # noqa: PLC0415 - lazy: fetch --format csv never loads polars

    if column in DATE_COLUMNS:
        return _blank_as_null(column).str.to_date("%Y-%m-%d", strict=True).alias(column)
    if column in INTEGER_COLUMNS:
        return _blank_as_null(column).cast(pl.Int16, strict=True).alias(column)
    return pl.col(column)


def write_parquet(source: Path, dest: BinaryIO | Path) -> int:
    """Convert a tagged CSV (``fetch --format csv``) into parquet with typed columns; return the rows written.

    ``date_naissance``, ``date_prelevement`` and ``date_validation`` become Date, ``age`` Int16, every other column
    (identifiers included: never a number, their leading zeros are data) String; an empty cell is null. Only the
    columns the file has, in its order. Read in blocks and written by polars' streaming parquet sink: memory stays
    flat whatever the file's size. On an error, ``dest`` may hold part of the output: write to a temporary name and
    discard it.
    """
    import polars as pl  # noqa: PLC0415 - lazy: fetch --format csv never loads polars
    from polars.io.plugins import register_io_source  # noqa: PLC0415 - lazy, as above

    columns = _header_of(source)
    schema: dict[str, pl.DataType] = {
        c: pl.Date() if c in DATE_COLUMNS else pl.Int16() if c in INTEGER_COLUMNS else pl.String() for c in columns
    }
    typed = [parquet_column(c) for c in columns]
    rows = 0

    def frames(
        with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None, batch_size: int | None
    ) -> Iterator[pl.DataFrame]:
        nonlocal rows
        for block in _blocks(source, columns):
            frame = block.select(typed)
            rows += frame.height
            if predicate is not None:
                frame = frame.filter(predicate)
            yield frame if with_columns is None else frame.select(with_columns)

    try:
        register_io_source(frames, schema=schema, validate_schema=True).sink_parquet(dest, compression="zstd")
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise _write_failed("parquet", exc) from exc
    return rows
