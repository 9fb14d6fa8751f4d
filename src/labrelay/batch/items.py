"""What the HL7 and FHIR readers share: a file read in blocks as lines of bounded length, and the records found in
its items (messages, Bundles) numbered and handed out in batches.

Memory is bounded whatever the input: a line longer than its reader's limit is never held whole (``Overlong``
stands for it), and a batch holds at most ``BATCH_RECORDS`` records (plus those of the item that filled it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import polars as pl

from labrelay.batch.csv_reader import Batch
from labrelay.domain.records import FIELDS, Reason

BLOCK = 1 << 16
BATCH_RECORDS = 20_000


class StructureError(ValueError):
    """An item (an HL7 message, a FHIR Bundle) that cannot be turned into records: one rejected record."""


@dataclass(frozen=True, slots=True)
class Overlong:
    """A line longer than the reader's limit, skipped to its end: only its first bytes are kept."""

    head: bytes


def bounded_lines(source: BinaryIO, limit: int, *, cr: bool) -> Iterator[bytes | Overlong]:
    """The lines of ``source``, without their ends, read in blocks: a line ends at LF (and at CR or CRLF too
    when ``cr``). A line longer than ``limit`` bytes is given as ``Overlong`` and skipped, never held whole."""
    pending = b""
    skipping = False  # inside an overlong line, already reported
    while data := source.read(BLOCK):
        pending += data
        held = b""
        if cr:
            if pending.endswith(b"\r"):  # maybe the first half of a CRLF: decided with the next block
                pending, held = pending[:-1], b"\r"
            pending = pending.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if skipping:
                skipping = False  # the end of the overlong line
            elif len(line) > limit:
                yield Overlong(line[:16])
            else:
                yield line
        if len(pending) > limit:
            if not skipping:
                yield Overlong(pending[:16])
            pending, skipping = b"", True
        pending += held
    if pending and not skipping:
        yield pending


def numbered_batches(items: Iterable[list[dict[str, str]] | StructureError]) -> Iterator[Batch]:
    """Batches of the records found in ``items``, each an item's records or the error that makes it unusable.
    Record number = position in the file (1-based): each record found takes one, and so does each broken item
    (one rejected record)."""
    rows: list[dict[str, str]] = []
    numbers: list[int] = []
    rejected: list[tuple[int, str, str]] = []
    number = read = 0
    for item in items:
        if isinstance(item, StructureError):
            number += 1
            read += 1
            rejected.append((number, "*", f"{Reason.STRUCTURE.value}: {item}"))
        else:
            for rec in item:
                number += 1
                read += 1
                rows.append(rec)
                numbers.append(number)
        if read >= BATCH_RECORDS:
            yield _batch(rows, numbers, rejected, read)
            rows, numbers, rejected, read = [], [], [], 0
    if read:
        yield _batch(rows, numbers, rejected, read)


def _batch(rows: list[dict[str, str]], numbers: list[int], rejected: list[tuple[int, str, str]], read: int) -> Batch:
    frame = pl.DataFrame(rows, schema=dict.fromkeys(FIELDS, pl.String))
    frame = frame.with_columns(pl.Series("_record", numbers, dtype=pl.Int64))
    return Batch(frame, rejected, read)
