"""Streaming reader for the lab-results CSV template, as French labs write it.

``,`` or ``;``; UTF-8 with or without BOM, or Windows-1252 (as Excel exports it in France; bytes it leaves
undefined read as ISO-8859-1 does, like the WHATWG decoder browsers use), or a mix of the two line by line; LF or
CRLF. Header names match the template whatever their case, surrounding spaces or BOM; the template's optional
columns (``labrelay.domain.records.OPTIONAL``) may be left out and read as empty. The file is read in blocks of
whole records (a newline closes a record only outside quotes), so memory is bounded by the block size whatever
the file's size.

Each block takes the fast path when it can. The common block (no control character, no broken record) is parsed
once: polars refuses a record with a field too many, and the block's length equal to its values, separators,
quotes and line ends proves that none has one too few (decision 0022). Any other block is parsed a second time as
lines, to count each record's fields, which finds short and long records that polars would otherwise pad or
truncate. A block polars refuses (broken quoting, a record spanning lines) is parsed again record by record
with Python's ``csv`` module. Either way every record is numbered (1-based, header excluded) and ends up in the
batch's frame or in its structural rejections: one bad record never fails the file.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from labrelay.domain.records import FIELDS, INVISIBLE_RANGES, OPTIONAL, RAW_MAX, REQUIRED, Reason
from labrelay.errors import NotResults, Unreadable

BLOCK_BYTES = 8 * 1024 * 1024  # measured: memory grows with it, time hardly shrinks (docs/performance.md)
MAX_CARRY = 4 * BLOCK_BYTES  # an unclosed quote cannot make a record (and memory) grow without bound
BOM = b"\xef\xbb\xbf"
_QUOTED = r'"(?:[^"]|"")*"'
LINE_CONTROL = r"[\x00-\x0c\x0e-\x1f\x7f]|\r."
_CONTROL_BYTES = bytes([*range(0x0A), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])  # all but LF and CR
# The first bytes of the UTF-8 encodings of every character of INVISIBLE_RANGES: a block holding none of them holds
# no such character. One ``bytes.translate`` keeps these, the control bytes, CR and the quote, deleting the rest.
_INVISIBLE_LEADS = bytes(sorted({chr(cp).encode()[0] for lo, hi in INVISIBLE_RANGES for cp in range(lo, hi + 1)}))
_NOT_SCANNED = bytes(sorted(set(range(256)) - {*_CONTROL_BYTES, *_INVISIBLE_LEADS, ord("\r"), ord('"')}))


@dataclass
class Batch:
    """Records read from one stretch of the input: the good ones as canonical columns, the broken ones as reasons."""

    frame: pl.DataFrame  # the canonical FIELDS as strings, plus "_record" (Int64, 1-based)
    rejected: list[tuple[int, str, str]] = field(default_factory=list)  # (record, field, reason)
    read: int = 0  # records read: frame.height + distinct rejected records
    padded: bool = True  # False when the reader knows no value has spaces around it (nothing to trim)
    invisible: bool = True  # False when the reader knows no value holds a character of INVISIBLE_RANGES


@dataclass(frozen=True)
class CsvLayout:
    separator: str
    columns: tuple[str, ...]  # the header's names in file order, normalised (template names where they match)
    ignored: tuple[str, ...]  # header columns that are not in the template, as written (never forwarded)
    bom: bool
    missing: tuple[str, ...] = ()  # optional template columns the file leaves out: read as empty


def _whatwg_1252(error: UnicodeError) -> tuple[str, int]:
    """The five bytes Windows-1252 leaves undefined decode to the code point of the same value, as the WHATWG
    decoder (every browser's, and the lab page's) does."""
    if not isinstance(error, UnicodeDecodeError):
        raise error
    bad = error.object[error.start : error.end]
    return "".join(chr(b) for b in bad), error.end


codecs.register_error("labrelay-whatwg-1252", _whatwg_1252)


def _decode_line(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return line.decode("cp1252", errors="labrelay-whatwg-1252")  # decodes any byte: never fails


def to_utf8(block: bytes) -> bytes:
    """``block`` as UTF-8: unchanged when it is UTF-8, else decoded line by line (UTF-8, else Windows-1252).

    A block holding no valid UTF-8 sequence beyond ASCII (what decoding it with errors ignored keeps is ASCII) has
    no line that is valid UTF-8 and not ASCII: every line reads the same as Windows-1252, so the block is decoded
    whole (about three times faster than line by line)."""
    try:
        block.decode("utf-8")
    except UnicodeDecodeError:
        if block.decode("utf-8", errors="ignore").isascii():
            return block.decode("cp1252", errors="labrelay-whatwg-1252").encode("utf-8")
        return "\n".join(_decode_line(line) for line in block.split(b"\n")).encode("utf-8")
    return block


def header_name(text: str) -> str:
    """A header cell as matched against the template: a BOM, spaces and tabs around it, quotes around it (a
    spreadsheet's ``  "NOM"``, which CSV does not count as quoting) and case do not count."""
    name = text.removeprefix("\ufeff").strip(" \t")
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = name[1:-1].strip(" \t")
    return name.lower()


def _shown(names: list[str], limit: int = 30) -> str:
    shown = ", ".join(n if n else '""' for n in names[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


def sniff(path: Path) -> CsvLayout:
    """Read the header: separator, columns, BOM. Refuses a file whose header does not carry the template, saying
    which columns it found and which the template expects."""
    try:
        with path.open("rb") as fh:
            head = fh.readline(64 * 1024)
    except OSError as exc:
        raise Unreadable(f"cannot read {path}: {exc.strerror}") from exc
    bom = head.startswith(BOM)
    text = to_utf8(head[len(BOM) :] if bom else head).decode("utf-8").rstrip("\r\n")
    if not text.strip():
        raise NotResults(f"{path} is empty or has no header line", hint=_TEMPLATE_HINT)
    separator = ";" if text.count(";") > text.count(",") else ","
    try:
        written = next(csv.reader([text], delimiter=separator))
    except (csv.Error, StopIteration) as exc:
        raise NotResults(f"{path} has no readable CSV header ({exc})", hint=_TEMPLATE_HINT) from exc
    # An empty header cell (a trailing separator, as spreadsheets export) names no template field: its values are
    # ignored like any other unknown column's, under a name of its own.
    columns = tuple(header_name(c) or f"(column {i + 1})" for i, c in enumerate(written))
    if not any(c in FIELDS for c in columns):
        # Not a header: most likely a record (the header line left out). Its values are not repeated in a message
        # that goes to logs and JSON documents: they would carry a patient's name and NIR there.
        raise NotResults(
            f"{path} is not in the lab-results template: its first line names none of the template's columns "
            f"({len(written)} fields, not shown: it may be a record; is the header line missing?); "
            f"expected: {', '.join(FIELDS)}",
            hint=_TEMPLATE_HINT,
        )
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:
        raise NotResults(f"{path}: the header names a column twice ({_shown(twice)})", hint=_TEMPLATE_HINT)
    missing = [f for f in FIELDS if f in REQUIRED and f not in columns]
    if missing:
        raise NotResults(
            f"{path} is not in the lab-results template: columns found: {_shown([c.strip() for c in written])}; "
            f"expected: {', '.join(FIELDS)}; missing: {', '.join(missing)}",
            hint=_TEMPLATE_HINT,
        )
    ignored = tuple(w.strip() for w, c in zip(written, columns, strict=True) if c not in FIELDS)
    absent = tuple(f for f in OPTIONAL if f not in columns)
    return CsvLayout(separator, columns, ignored, bom, absent)


_TEMPLATE_HINT = (
    "the lab-results template (docs/lab-results.md) names these columns, in any order and any case: "
    + ", ".join(FIELDS)
    + "; optional, and read as empty when left out: "
    + ", ".join(OPTIONAL)
    + "; to send another kind of document as it is, use --as-is --to NAME"
)


def _blocks(path: Path, block_bytes: int) -> Iterator[bytes]:
    """Stretches of the file after the header line, each ending at a record boundary.

    The file is read into one reused buffer; each stretch is copied out once (fresh large allocations cost page
    faults, which dominated when every block was concatenated and sliced anew)."""
    buf = bytearray(block_bytes + MAX_CARRY)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as fh:
        fh.readline(64 * 1024)  # the header
        filled = 0
        while True:
            got = fh.readinto(view[filled : filled + block_bytes])
            filled += got or 0
            if not got:
                if filled:
                    yield bytes(view[:filled])
                return
            cut = buf.rfind(b"\n", 0, filled)
            if buf.find(b'"', 0, filled) != -1:  # quotes: a newline inside a quoted field is not a boundary
                while cut != -1 and buf.count(b'"', 0, cut) % 2:
                    cut = buf.rfind(b"\n", 0, cut)
            if cut == -1 and filled > MAX_CARRY:
                cut = buf.rfind(b"\n", 0, filled)  # give up on the quote: the fallback parser refuses the record
            if cut == -1:
                if filled + block_bytes > len(buf):
                    yield bytes(view[:filled])  # no newline at all in MAX_CARRY bytes: let the parser judge
                    filled = 0
                continue
            yield bytes(view[: cut + 1])
            rest = filled - cut - 1
            buf[:rest] = buf[cut + 1 : filled]
            filled = rest


class CsvReader:
    """Iterate ``Batch``es over a CSV file in the lab-results template."""

    def __init__(self, path: Path, *, block_bytes: int = BLOCK_BYTES) -> None:
        self.path = path
        self.layout = sniff(path)
        self.block_bytes = block_bytes
        self._schema = dict.fromkeys(self.layout.columns, pl.String)
        self._clean = True  # the last block had no broken record: the next one is tried in one parse

    def _fields(self) -> list[pl.Expr]:
        """The template's fields in template order; an optional column the file leaves out is empty."""
        missing = set(self.layout.missing)
        return [pl.lit("", dtype=pl.String).alias(f) if f in missing else pl.col(f) for f in FIELDS]

    def batches(self) -> Iterator[Batch]:
        seen = 0
        converted = False  # the last block was not UTF-8: the next one is converted first (a file keeps its encoding)
        for block in _blocks(self.path, self.block_bytes):
            data = to_utf8(block) if converted else block
            batch = self._fast(data, seen)  # polars checks UTF-8 itself
            if batch is None and data is block:
                data = to_utf8(block)
                batch = self._fast(data, seen) if data is not block else None
            if batch is None:
                batch = self._slow(data, seen)
            converted = data is not block
            self._clean = not batch.rejected
            seen += batch.read
            yield batch

    # ------------------------------------------------------------ fast path: polars

    def _fast(self, data: bytes, offset: int) -> Batch | None:
        kept = data.translate(None, _NOT_SCANNED)  # the bytes that matter here, few: one pass over the block
        control = len(kept.translate(None, _INVISIBLE_LEADS + b'\r"')) != 0
        if b"\r" in kept:
            control = control or data.count(b"\r") != data.count(b"\r\n")  # a CR that does not end a line
        invisible = len(kept.translate(None, _CONTROL_BYTES + b'\r"')) != 0
        once = not control and self._clean  # after a block with broken records, the next one likely has some too
        batch = self._parsed_once(data, offset, quotes=kept.count(b'"'), cr=kept.count(b"\r")) if once else None
        if batch is None:
            batch = self._parsed_twice(data, offset, control)
        if batch is not None:
            batch.invisible = invisible
        return batch

    def _parsed_once(self, data: bytes, offset: int, *, quotes: int, cr: int) -> Batch | None:
        """The common block (no control character, no blank line, no quote but around a whole value, no record too
        long or of another width) in one parse, or None when the block is not that.

        Parsed with ``truncate_ragged_lines=False``, polars refuses a block in which some record has more fields
        than the header. Every other departure from the common block makes the block longer than the sum of its
        values, separators, quotes, CRs and LFs (a record with fewer fields is padded with empty values, an
        escaped or stray quote is one byte in the value for one or two in the file), and nothing makes it
        shorter; so the block is the common one exactly when its length is that sum and each line is one record
        (a quote opening a value across a line end joins two). Anything else goes to ``_parsed_twice``."""
        expected = len(self.layout.columns)
        if not data or data.startswith(BOM):
            return None  # polars would drop a BOM
        lines = (newlines := data.count(b"\n")) + (not data.endswith(b"\n"))
        try:
            frame = pl.read_csv(
                data,
                has_header=False,
                new_columns=list(self.layout.columns),
                schema=self._schema,
                separator=self.layout.separator,
                empty_string_is_null=False,
                truncate_ragged_lines=False,
                raise_if_empty=False,
            )
        except pl.exceptions.PolarsError:
            return None
        if frame.height != lines:
            return None
        lengths = [pl.col(c).str.len_bytes().cast(pl.Int64) for c in self.layout.columns]
        values, widest = frame.select(
            pl.sum_horizontal(lengths).sum().alias("values"), pl.sum_horizontal(lengths).max().alias("widest")
        ).row(0)
        if (values or 0) + lines * (expected - 1) + quotes + cr + newlines != len(data):
            return None
        # A record longer than RAW_MAX bytes per field is refused: none is when the widest record's values, with its
        # separators, two quotes per value and a CR, are within the bound.
        if (widest or 0) + 3 * expected > RAW_MAX * expected:
            return None
        record = (pl.int_range(1, pl.len() + 1, dtype=pl.Int64) + offset).alias("_record")
        # One chunk per column (polars parses a block in several): every expression of validation runs faster on one.
        frame = frame.select(*self._fields(), record, pl.lit(False).alias("_control")).rechunk()
        return Batch(frame, [], frame.height)  # padded: the validator probes the values (cheaper than the bytes)

    def _parsed_twice(self, data: bytes, offset: int, control: bool) -> Batch | None:
        """Any block polars can parse: once as records, once as lines to count each record's fields, find blank
        lines, long records and the records holding a control character."""
        expected = len(self.layout.columns)
        sep = self.layout.separator
        quoted = b'"' in data
        try:
            lines = pl.read_csv(
                data,
                has_header=False,
                separator="\x1f",
                quote_char=None,
                new_columns=["line"],
                schema={"line": pl.String},
                empty_string_is_null=False,
            )
            if quoted:
                lines = lines.with_columns(pl.col("line").str.count_matches('"', literal=True).alias("_quotes"))
                if lines.select(pl.col("_quotes").mod(2).sum()).item():
                    return None  # a quoted field spans lines: let the csv module pair them up
            frame = pl.read_csv(
                data,
                has_header=False,
                new_columns=list(self.layout.columns),
                schema=self._schema,
                separator=sep,
                empty_string_is_null=False,
                truncate_ragged_lines=True,
                raise_if_empty=False,
            )
        except pl.exceptions.PolarsError:  # whatever polars refuses, the csv module reads record by record
            return None
        if frame.height != lines.height:
            return None
        line = pl.col("line")
        length = line.str.len_bytes()
        fields, padded = self._field_counts(lines, quoted)
        shape = pl.concat([lines, frame], how="horizontal").select(
            fields.alias("fields"),
            ((length == 0) | ((length == 1) & (line == "\r"))).alias("blank"),
            length.alias("length"),
            line.str.contains(LINE_CONTROL).alias("_control") if control else pl.lit(False).alias("_control"),
            line,
        )
        if quoted:
            shape = self._counted_exactly(shape)
        frame = pl.concat([frame.select(self._fields()), shape], how="horizontal")
        if frame.select(pl.col("blank").any()).item():
            frame = frame.filter(~pl.col("blank"))
        frame = frame.with_columns((pl.int_range(1, pl.len() + 1, dtype=pl.Int64) + offset).alias("_record"))
        broken = (pl.col("fields") != expected) | (pl.col("length") > RAW_MAX * expected)
        if not frame.select(broken.any()).item():
            return Batch(frame.select(*FIELDS, "_record", "_control"), [], frame.height, padded)
        rejected = self._rejections(frame.filter(broken), quoted)
        good = frame.filter(~broken)
        return Batch(good.select(*FIELDS, "_record", "_control"), rejected, frame.height, padded)

    def _field_counts(self, lines: pl.DataFrame, quoted: bool) -> tuple[pl.Expr, bool]:
        """(each line's count of fields, or -1 when it does not have them all; whether any value may carry spaces
        around it)."""
        expected = len(self.layout.columns)
        sep = self.layout.separator
        line = pl.col("line")
        crlf = line.str.ends_with("\r").cast(pl.Int64)
        parsed = pl.sum_horizontal([pl.col(c).str.len_bytes().cast(pl.Int64) for c in self.layout.columns])
        length = line.str.len_bytes().cast(pl.Int64)
        if quoted:
            # With quotes, the same holds of a record none of whose values holds a quote (every quote on its line
            # then opens or closes a value): its line is as long as its values, separators and quotes. Other
            # records (-1 here) are counted exactly by ``_counted_exactly``.
            plain = ~pl.any_horizontal([pl.col(c).str.contains('"', literal=True) for c in self.layout.columns])
            whole = plain & (length == parsed + (expected - 1) + pl.col("_quotes") + crlf)
            return pl.when(whole).then(expected).otherwise(-1), True
        # Without quotes, a record has all its fields exactly when its line is as long as its fields plus the
        # separators between them: a short record (padded with empty fields) or a long one (truncated) is
        # not. Byte lengths are free in Arrow (offsets), unlike counting separators; the few lines that fail
        # are counted exactly below, to say whether fields are missing or extra.
        fields = pl.when(length == parsed + (expected - 1) + crlf).then(expected).otherwise(-1)
        # Can a value carry spaces around it? Only next to a separator or at either end of a line.
        spaced = (
            line.str.contains(f" {sep}", literal=True)
            | line.str.contains(f"{sep} ", literal=True)
            | line.str.starts_with(" ")
            | line.str.ends_with(" ")
            | line.str.ends_with(" \r")
        )
        return fields, bool(lines.select(spaced.any()).item())

    def _counted_exactly(self, shape: pl.DataFrame) -> pl.DataFrame:
        """``shape`` with the fields of each record marked -1 counted: the separators outside quoted segments."""
        unsure = shape.select((pl.col("fields") == -1).arg_true()).to_series()
        if not len(unsure):
            return shape
        counted = (
            shape.get_column("line")
            .gather(unsure)
            .str.replace_all(_QUOTED, "")
            .str.count_matches(self.layout.separator, literal=True)
            .cast(pl.Int64)
            + 1
        )
        return shape.with_columns(shape.get_column("fields").cast(pl.Int64).scatter(unsure, counted))

    def _rejections(self, bad: pl.DataFrame, quoted: bool) -> list[tuple[int, str, str]]:
        """The broken records' reasons: too long, or fields missing or extra (counted exactly here)."""
        expected = len(self.layout.columns)
        counted = (
            pl.col("fields") if quoted else pl.col("line").str.count_matches(self.layout.separator, literal=True) + 1
        )
        return [
            (
                rec,
                "*",
                str(
                    Reason.TOO_LONG if n == expected else Reason.MISSING_FIELDS if n < expected else Reason.EXTRA_FIELDS
                ),
            )
            for rec, n in zip(bad["_record"].to_list(), bad.select(counted).to_series().to_list(), strict=True)
        ]

    # ------------------------------------------------------------ slow path: record by record

    def _slow(self, data: bytes, offset: int) -> Batch:
        expected = len(self.layout.columns)
        index = {name: i for i, name in enumerate(self.layout.columns)}
        reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""), delimiter=self.layout.separator, strict=True)
        rows: list[list[str]] = []
        numbers: list[int] = []
        rejected: list[tuple[int, str, str]] = []
        record = offset
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                record += 1
                reason = Reason.CONTROL if "NUL" in str(exc) else Reason.MALFORMED
                rejected.append((record, "*", str(reason)))
                continue
            if not row:
                continue  # a blank line is not a record
            record += 1
            if len(row) != expected:
                reason = Reason.MISSING_FIELDS if len(row) < expected else Reason.EXTRA_FIELDS
                rejected.append((record, "*", str(reason)))
            elif any(len(value) > RAW_MAX for value in row):
                rejected.append((record, "*", str(Reason.TOO_LONG)))
            else:
                rows.append([row[index[name]] if name in index else "" for name in FIELDS])
                numbers.append(record)
        frame = pl.DataFrame(rows, schema=dict.fromkeys(FIELDS, pl.String), orient="row")
        frame = frame.with_columns(pl.Series("_record", numbers, dtype=pl.Int64))
        return Batch(frame, rejected, record - offset)
