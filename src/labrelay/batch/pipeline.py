"""Read → validate → route → write, in bounded batches, with counts that always reconcile.

Every record read ends in exactly one of three places, and the summary says how many in each:
**accepted** (valid and routed; how many each recipient got is listed too), **rejected** (in the rejection report,
with its record number, field and reason), or **held for review** (valid, but no recipient can take it yet).
``read == accepted + rejected + held``, always: ``Summary.reconciled`` checks it and the CLI refuses to call a run
successful if it does not hold.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

import polars as pl

from labrelay.batch.csv_reader import Batch, CsvReader
from labrelay.batch.fhir import FhirReader
from labrelay.batch.hl7 import Hl7Reader
from labrelay.batch.ledger import LedgerSink
from labrelay.batch.outputs import RecordSink
from labrelay.batch.route import Router
from labrelay.batch.validate import Validator
from labrelay.domain.records import FIELDS
from labrelay.errors import Unreadable, UsageError

INPUT_FORMATS = ("auto", "csv", "hl7", "fhir")


class Reader(Protocol):
    def batches(self) -> Iterator[Batch]: ...


def detect_format(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            head = fh.read(64).lstrip(b"\xef\xbb\xbf").lstrip()
    except OSError as exc:
        raise Unreadable(f"cannot read {path}: {exc.strerror}") from exc
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
    fmt = detect_format(path) if fmt == "auto" else fmt
    reader: Reader = {"csv": CsvReader, "hl7": Hl7Reader, "fhir": FhirReader}[fmt](path)
    return fmt, reader


@dataclass
class Summary:
    input_format: str
    read: int = 0
    accepted: int = 0
    rejected: int = 0
    held: int = 0
    per_recipient: dict[str, int] = field(default_factory=dict)
    ignored_columns: tuple[str, ...] = ()
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
            "ignored_columns": list(self.ignored_columns),
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


REVIEW_COLUMNS = ("record", "reason", *FIELDS)


class ReviewFile:
    """Records held for review, whole, for the lab to look at (on the lab's machine, mode 0600)."""

    def __init__(self, out: TextIO | None) -> None:
        self._out = out
        if out is not None:
            out.write(",".join(REVIEW_COLUMNS) + "\n")

    def add(self, frame: pl.DataFrame) -> None:
        if self._out is not None and frame.height:
            self._out.write(
                frame.select(pl.col("_record").alias("record"), pl.col("_reason").alias("reason"), *FIELDS).write_csv(
                    include_header=False
                )
            )


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
    ledger: LedgerSink | None = None,
) -> Summary:
    """Process every batch; return the summary (also updated in place). With a ``ledger``, each routed record's
    person goes to the sender's ledger with the destinations that received it.

    The routed records of a block are written (serialised, then compressed and sealed by the sinks' streams) by
    one writer thread while the next block is read and validated: at most one block in flight, written in order;
    a failure in the writer stops the run at the next block, and the run does not return before every write
    has finished."""
    sinks = sinks or {}
    row_ids = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-writer") as writer:
        writing: Future[None] | None = None
        for batch in reader.batches():
            summary.read += batch.read
            structural = {record for record, _, _ in batch.rejected}
            report.add(batch.rejected)
            result = validator.validate(batch.frame, padded=batch.padded)
            report.add(list(result.rejections.iter_rows()))
            summary.rejected += len(structural) + result.rejected_records
            held = [result.review]
            accepted = result.accepted
            if router is not None:
                if ledger is not None:
                    accepted = ledger.prepare(accepted, row_ids)
                    row_ids += accepted.height
                routed, not_routable = router.route(accepted)
                held.append(not_routable)
                for name, frame in routed.items():
                    summary.per_recipient[name] = summary.per_recipient.get(name, 0) + frame.height
                if writing is not None:
                    writing.result()  # the previous block is written (or its failure raised here)
                writing = writer.submit(_write_block, sinks, routed, ledger, accepted)
                accepted_count = accepted.height - not_routable.height
            else:
                accepted_count = accepted.height
            for frame in held:
                review.add(frame)
                summary.held += frame.height
            summary.accepted += accepted_count
            if on_batch is not None:
                on_batch(batch)
        if writing is not None:
            writing.result()
    return summary


def _write_block(
    sinks: Mapping[str, RecordSink],
    routed: Mapping[str, pl.DataFrame],
    ledger: LedgerSink | None,
    accepted: pl.DataFrame,
) -> None:
    if ledger is not None:
        ledger.add(accepted, routed)
    for name, frame in routed.items():
        sinks[name].write_frame(frame)
