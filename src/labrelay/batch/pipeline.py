"""Read → validate → route → write, in bounded batches, with counts that always reconcile.

Every record read ends in exactly one of three places, and the summary says how many in each:
**accepted** (valid, and every share the policy addresses sent), **rejected** (in the rejection report, with its
record number, field and reason), or **held for review** (valid, and some recipient's share of it held because
that recipient cannot take it yet; the recipients in force that the policy gives it still got it). How many each
recipient got, and how many records (and positives) are held for each recipient, are listed too.
``read == accepted + rejected + held``, always: ``Summary.reconciled`` checks it and the CLI refuses to call a run
successful if it does not hold.
"""

from __future__ import annotations

import csv
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, TextIO

import polars as pl

from labrelay.batch.csv_reader import Batch, CsvReader
from labrelay.batch.fhir import FhirReader
from labrelay.batch.hl7 import Hl7Reader
from labrelay.batch.outputs import RecordSink
from labrelay.batch.persons import PersonsIndexSink
from labrelay.batch.route import HELD_RECIPIENT, Router
from labrelay.batch.validate import Validator
from labrelay.domain.records import FIELDS, Result
from labrelay.errors import NotResults, Unreadable, UsageError

INPUT_FORMATS = ("auto", "csv", "hl7", "fhir")


class Reader(Protocol):
    def batches(self) -> Iterator[Batch]: ...


_EXPORT_CSV = "export it as CSV (UTF-8 or Windows-1252, `;` or `,`) in the lab-results template"
_AS_IS = "to send a document as it is, use --as-is --to NAME"


_SIGNATURES: tuple[tuple[bytes, str, str], ...] = (
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an Excel 97-2003 workbook (.xls) or an old Office document", _EXPORT_CSV),
    (b"\xff\xfe", "UTF-16 text", "save it as CSV UTF-8 (or Windows-1252) instead of Unicode text"),
    (b"\xfe\xff", "UTF-16 text", "save it as CSV UTF-8 (or Windows-1252) instead of Unicode text"),
    (b"%PDF", "a PDF document", _AS_IS),
    (b"\x1f\x8b", "a gzip-compressed file", "decompress it first"),
    (b"age-encryption.org/", "an age-encrypted file", "decrypt it first"),
)


_TEXT_BYTES = bytes(b for b in range(256) if b not in (*range(0x09), *range(0x0E, 0x20), 0x7F))
"""Every byte but the control characters text never holds (tab, LF, VT, FF and CR are text). A head in which more
than one byte in 16 is such a control is binary (random bytes: about one in nine)."""


def _kind_of(head: bytes) -> tuple[str, str] | None:
    """(what the file is, what to do) for a file that is certainly not a results file, from its first bytes."""
    if head.startswith(b"PK\x03\x04"):
        if b"opendocument.spreadsheet" in head:
            kind = "an OpenDocument spreadsheet (.ods)"
        elif b"xl/" in head or (b"[Content_Types].xml" in head and b"word/" not in head):
            kind = "an Excel workbook (.xlsx)"
        else:
            kind = "a ZIP archive (or an Office document)"
        return kind, _EXPORT_CSV if "sheet" in kind or "workbook" in kind else f"{_EXPORT_CSV}; {_AS_IS}"
    for prefix, kind, hint in _SIGNATURES:
        if head.startswith(prefix):
            return kind, hint
    if len(head) >= 8 and max(head[0::2].count(0), head[1::2].count(0)) > len(head) // 4:
        return "UTF-16 text", "save it as CSV UTF-8 (or Windows-1252) instead of Unicode text"
    if len(head.translate(None, _TEXT_BYTES)) * 16 > len(head):  # one bad record's NUL is that record's problem
        return "a binary file", _AS_IS
    return None


def _head(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            return fh.read(4096)
    except OSError as exc:
        raise Unreadable(f"cannot read {path}: {exc.strerror}") from exc


def check_kind(path: Path) -> bytes:
    """The file's first bytes, if it may be a results file at all; a workbook, UTF-16 text, a PDF, an archive or
    any binary file is refused here, saying what it is and how to export it instead."""
    head = _head(path)
    kind = _kind_of(head)
    if kind is not None:
        raise NotResults(f"{path} is {kind[0]}, not a lab-results file", hint=kind[1])
    return head


def detect_format(path: Path) -> str:
    """csv, hl7 or fhir, from the first bytes (refusing what is certainly none of them: ``check_kind``)."""
    head = check_kind(path).lstrip(b"\xef\xbb\xbf").lstrip()
    if head[:3] in (b"MSH", b"FHS", b"BHS"):
        return "hl7"
    if head.startswith(b"{"):
        return "fhir"
    return "csv"


def open_reader(path: Path, fmt: str = "auto") -> tuple[str, Reader]:
    if fmt not in INPUT_FORMATS:
        raise UsageError(f"unknown input format {fmt!r}", hint=f"one of {', '.join(INPUT_FORMATS)}")
    if not path.is_file():
        raise Unreadable(f"{path} is not a readable file")
    if fmt == "auto":
        fmt = detect_format(path)
    else:
        check_kind(path)
    reader: Reader = {"csv": CsvReader, "hl7": Hl7Reader, "fhir": FhirReader}[fmt](path)
    return fmt, reader


NO_ARS = ""
"""The key of ``Summary.held_for`` for regional shares of residences no ARS table covers."""


@dataclass
class HeldCount:
    records: int = 0
    positives: int = 0


@dataclass
class Summary:
    input_format: str
    read: int = 0
    accepted: int = 0
    rejected: int = 0
    held: int = 0
    per_recipient: dict[str, int] = field(default_factory=dict)
    held_for: dict[str, HeldCount] = field(default_factory=dict)  # recipient (or NO_ARS) → its held share
    ignored_columns: tuple[str, ...] = ()
    missing_columns: tuple[str, ...] = ()  # optional template columns the file left out (read as empty)
    policy_version: str | None = None

    @property
    def reconciled(self) -> bool:
        return self.read == self.accepted + self.rejected + self.held

    def as_dict(self) -> dict[str, object]:
        return {
            "input_format": self.input_format,
            "read": self.read,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "held_for_review": self.held,
            "reconciled": self.reconciled,
            "per_recipient": dict(sorted(self.per_recipient.items())),
            "held_for": {
                name or "no-ars": {"records": c.records, "positives": c.positives}
                for name, c in sorted(self.held_for.items())
            },
            "ignored_columns": list(self.ignored_columns),
            "missing_columns": list(self.missing_columns),
            "policy_version": self.policy_version,
        }


class RejectionReport:
    """``record,field,reason`` rows (record: 1-based data-record number, header excluded)."""

    def __init__(self, out: TextIO | None) -> None:
        self._writer = csv.writer(out, lineterminator="\n") if out is not None else None
        if self._writer is not None:
            self._writer.writerow(["record", "field", "reason"])

    def add(self, rows: list[tuple[int, str, str]]) -> None:
        if self._writer is not None:
            self._writer.writerows(rows)


REVIEW_COLUMNS = ("record", "recipient", "reason", *FIELDS)


class ReviewFile:
    """Held shares, one row per record and recipient (empty: no ARS covers the residence), the record whole, for
    the lab to look at and for ``send --held`` (on the lab's machine, mode 0600). It is itself a file in the
    results template (its first three columns are not the template's, so they are never sent)."""

    def __init__(self, out: TextIO | None) -> None:
        self._out = out
        if out is not None:
            out.write(",".join(REVIEW_COLUMNS) + "\n")

    def add(self, frame: pl.DataFrame) -> None:
        if self._out is not None and frame.height:
            self._out.write(
                frame.select(
                    pl.col("_record").alias("record"),
                    pl.col(HELD_RECIPIENT).alias("recipient"),
                    pl.col("_reason").alias("reason"),
                    *FIELDS,
                ).write_csv(include_header=False)
            )


WORKERS = 2
"""Blocks validated and routed at once, each by its own thread (polars releases the GIL: both cores busy while the
reader reads the next block). Decision 0025."""


@dataclass
class _Done:
    """One block, validated and routed (by a worker), waiting for its turn to be counted and written."""

    batch: Batch  # its counts and structural rejections; its frame, spent, is released (an empty one in its place)
    rejections: list[tuple[int, str, str]]
    rejected: int  # records the rules refused (structural rejections are counted from ``batch.rejected``)
    accepted: pl.DataFrame  # as the persons index wants it, when there is one
    routed: dict[str, pl.DataFrame]
    held: pl.DataFrame | None
    held_records: int


def _process(batch: Batch, validator: Validator, router: Router | None, persons: PersonsIndexSink | None) -> _Done:
    """A worker's share: validate the block and route it. Touches nothing shared: the rules, router and persons
    index are only read here."""
    result = validator.validate(batch.frame, padded=batch.padded, invisible=batch.invisible)
    accepted = result.accepted
    routed: dict[str, pl.DataFrame] = {}
    held = None
    held_records = 0
    if router is not None:
        if persons is not None:
            accepted = persons.prepare(accepted)
        routed, held = router.route(accepted)
        if held.height:
            held_records = held.select(pl.col("_record").n_unique()).item()
    rejections = list(result.rejections.iter_rows())
    spent = replace(batch, frame=batch.frame.clear())
    return _Done(spent, rejections, result.rejected_records, accepted, routed, held, held_records)


def run(
    reader: Reader,
    validator: Validator,
    *,
    summary: Summary,
    report: RejectionReport,
    review: ReviewFile,
    router: Router | None = None,
    sinks: Mapping[str, RecordSink] | None = None,
    on_batch: Callable[[Batch], None] | None = None,
    persons: PersonsIndexSink | None = None,
) -> Summary:
    """Process every batch; return the summary (also updated in place). With ``persons``, each routed record's
    person goes to the persons index of the sender's breach ledger with the destinations that received it.

    The reader reads on this thread; ``WORKERS`` threads validate and route the blocks read (at most ``WORKERS``
    blocks with them, one fewer while the next is read: one more measured 3% faster and 30 MB larger); each block
    is then taken in file order: counted, reported, and its routed records written (serialised, then compressed
    and sealed by the sinks' streams) by one writer thread, its persons by another (the ledger's own polars work,
    CSV, gzip and age). Each stream is written in order, so the outputs are the same byte for byte as one block at
    a time. ``on_batch`` gets each block's counts in file order (its frame is released once validated). A failure
    stops the run at the next block; when the reader fails, the blocks read before are counted and reported first,
    as they were when each was finished before the next was read; the run does not return before every write has
    finished."""
    sinks = sinks or {}
    with (
        ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="batch-check") as checking,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-writer") as writer,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-writer") as ledger,
    ):
        pending: deque[Future[_Done]] = deque()
        writing: list[Future[None]] = []

        def finish(done: _Done) -> None:
            nonlocal writing
            batch = done.batch
            summary.read += batch.read
            report.add(batch.rejected)
            report.add(done.rejections)
            summary.rejected += len({record for record, _, _ in batch.rejected}) + done.rejected
            for name, frame in done.routed.items():
                summary.per_recipient[name] = summary.per_recipient.get(name, 0) + frame.height
            if done.held is not None and done.held.height:
                _count_held(summary, done.held)
                review.add(done.held)
            if router is not None and sinks:
                for previous in writing:
                    previous.result()  # the previous block is written (or its failure raised here)
                writing = [writer.submit(_write_block, sinks, done.routed)]
                if persons is not None:
                    writing.append(ledger.submit(persons.add, done.accepted, done.routed))
            summary.held += done.held_records
            summary.accepted += done.accepted.height - done.held_records
            if on_batch is not None:
                on_batch(batch)

        batches = reader.batches()
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except BaseException:
                while pending:  # what was read before the failure is still counted and reported
                    finish(pending.popleft().result())
                raise
            pending.append(checking.submit(_process, batch, validator, router, persons))
            while len(pending) >= WORKERS or (pending and pending[0].done()):
                finish(pending.popleft().result())
        while pending:
            finish(pending.popleft().result())
        for previous in writing:
            previous.result()
    return summary


def _count_held(summary: Summary, held: pl.DataFrame) -> None:
    """Records (not shares: under two regional rules a record no ARS covers is held twice) per held recipient."""
    positive = pl.col("resultat") == Result.POSITIVE.value
    counts = held.group_by(HELD_RECIPIENT).agg(
        pl.col("_record").n_unique().alias("records"), pl.col("_record").filter(positive).n_unique().alias("positives")
    )
    for name, records, positives in counts.iter_rows():
        count = summary.held_for.setdefault(name, HeldCount())
        count.records += records
        count.positives += positives


def _write_block(sinks: Mapping[str, RecordSink], routed: Mapping[str, pl.DataFrame]) -> None:
    for name, frame in routed.items():
        sinks[name].write_frame(frame)
