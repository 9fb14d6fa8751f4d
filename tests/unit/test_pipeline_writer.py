"""The pipeline writes each block's routed records on a writer thread while the next block is validated: the
outputs must still come out whole and in input order, be finished when ``run`` returns, and a failure on the
writer must stop the run (``send_results`` then discards every output and the breach ledger: client/routed.py)."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from labrelay.batch import pipeline
from labrelay.batch.csv_reader import Batch, CsvReader
from labrelay.batch.persons import PersonsIndexSink
from labrelay.batch.pipeline import Reader, RejectionReport, ReviewFile, Summary, run
from labrelay.batch.route import Router
from labrelay.client.policy import default_policy_text
from labrelay.crypto.pseudonym import new_key
from labrelay.domain.policy import parse_policy
from labrelay.domain.records import FIELDS
from labrelay.errors import StorageFull, Unreadable
from labrelay.refdata import department_regions
from tests.support.records import good, line, validator

RECORDS = 600
PHONES = [f"06{i:08d}" for i in range(RECORDS)]


def write_batch(path: Path, records: list[dict[str, str]]) -> Path:
    path.write_text(",".join(FIELDS) + "\n" + "\n".join(line(r) for r in records) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def batch_file(tmp_path: Path) -> Path:
    return write_batch(tmp_path / "batch.csv", [good(telephone=phone) for phone in PHONES])


def with_bad_nirs(tmp_path: Path) -> Path:
    """The batch with every seventh record's NIR broken (records 4, 11, 18…): rejections in every block."""
    records = [good(telephone=phone, **({"nir": "bad"} if i % 7 == 3 else {})) for i, phone in enumerate(PHONES)]
    return write_batch(tmp_path / "batch.csv", records)


class SlowSink:
    """Records what it is given, slowly, so the reader runs ahead of the writer."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.frames: list[pl.DataFrame] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on

    def write_frame(self, frame: pl.DataFrame) -> None:
        time.sleep(0.02)
        self.threads.add(threading.current_thread().name)
        if self.fail_on is not None and len(self.frames) == self.fail_on:
            raise StorageFull("no space left for the payload")
        self.frames.append(frame)


class Bytes:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)


def routed_run(
    source: Path | Reader,
    sinks: dict[str, SlowSink],
    persons: PersonsIndexSink | None = None,
    *,
    rules: object | None = None,
    summary: Summary | None = None,
    report: io.StringIO | None = None,
) -> Summary:
    """``run`` under the default policy, routing to ``sinks``: a path is read in blocks of 8 KiB (about 20 blocks),
    with the project's rules unless ``rules`` stands in for them."""
    router = Router(
        parse_policy(default_policy_text()), set(department_regions().values()), set(sinks), pseudonym_key=new_key()
    )
    return run(
        CsvReader(source, block_bytes=8192) if isinstance(source, Path) else source,
        rules or validator(),  # type: ignore[arg-type]
        summary=summary or Summary("csv"),
        report=RejectionReport(report),
        review=ReviewFile(None),
        router=router,
        sinks=sinks,  # type: ignore[arg-type]
        persons=persons,
    )


def test_every_block_is_written_in_order_before_run_returns(batch_file: Path) -> None:
    sinks = {name: SlowSink() for name in ("cnam", "spf", "ars-11")}
    index = Bytes()
    persons = PersonsIndexSink(index, {name: f"t-{name}" for name in sinks}, new_key())
    summary = routed_run(batch_file, sinks, persons)
    assert summary.reconciled
    assert summary.accepted == RECORDS
    assert len(sinks["cnam"].frames) > 10  # several blocks, so several were in flight
    phones = pl.concat(sinks["cnam"].frames).get_column("telephone").to_list()
    assert phones == PHONES  # whole, once each, in input order
    for name, sink in sinks.items():
        assert sum(f.height for f in sink.frames) == summary.per_recipient[name] == RECORDS
        assert sink.threads
        assert threading.current_thread().name not in sink.threads
    index_rows = bytes(index.data).decode().splitlines()
    assert persons.patients == RECORDS
    assert len([r for r in index_rows if r.startswith("patient,")]) == RECORDS


def test_a_failure_on_the_writer_stops_the_run(batch_file: Path) -> None:
    sinks = {"cnam": SlowSink(), "spf": SlowSink(fail_on=3), "ars-11": SlowSink()}
    with pytest.raises(StorageFull):
        routed_run(batch_file, sinks)
    assert len(sinks["spf"].frames) == 3
    # The reader stopped within a block of the failure: not every block was handed to the writer.
    assert len(sinks["cnam"].frames) <= 5


class FailingIndex(PersonsIndexSink):
    """A persons index whose stream fails at its ``fail_on``-th block (a full disk under the ledger)."""

    def __init__(self, fail_on: int, transfer_ids: dict[str, str]) -> None:
        super().__init__(Bytes(), transfer_ids, new_key())
        self.fail_on = fail_on
        self.blocks = 0
        self.threads: set[str] = set()

    def add(self, accepted: pl.DataFrame, routed: dict[str, pl.DataFrame]) -> None:  # type: ignore[override]
        self.threads.add(threading.current_thread().name)
        if self.blocks == self.fail_on:
            raise StorageFull("no space left for the ledger")
        self.blocks += 1
        super().add(accepted, routed)


def test_the_ledger_is_written_on_its_own_thread_and_its_failure_stops_the_run(batch_file: Path) -> None:
    sinks = {name: SlowSink() for name in ("cnam", "spf", "ars-11")}
    persons = FailingIndex(3, {name: f"t-{name}" for name in sinks})
    with pytest.raises(StorageFull, match="ledger"):
        routed_run(batch_file, sinks, persons)
    assert persons.blocks == 3
    assert len(sinks["cnam"].frames) <= 5  # stopped within a block or two of the failure
    writers = set().union(*(s.threads for s in sinks.values()))
    assert persons.threads
    assert writers
    assert not persons.threads & writers
    assert threading.current_thread().name not in persons.threads


def test_the_persons_index_lists_prescribers_in_the_order_they_first_appear() -> None:
    """Two sends of one file write the same persons index, byte for byte: prescribers in the order they first
    appear in the block (a group-by in no set order listed them as its threads finished), each once."""
    from labrelay.batch.route import ROW_ID  # noqa: PLC0415

    count = 3000
    rows = [good(prescripteur_rpps=f"1{(i * 7919) % 10**10:010d}", prescripteur_nom=f"DR {i}") for i in range(count)]
    rows += rows[:50]  # seen again later in the block: still listed where first seen
    accepted = pl.DataFrame(rows, schema=dict.fromkeys(FIELDS, pl.String))

    def index() -> bytes:
        out = Bytes()
        sink = PersonsIndexSink(out, {"ars-11": "t-ars"}, None)
        numbered = sink.prepare(accepted)
        sink.add(numbered, {"ars-11": numbered.select(ROW_ID)})
        return bytes(out.data)

    first = index()
    assert index() == first
    listed = pl.read_csv(first, infer_schema=False).filter(pl.col("kind") == "professional")
    expected = [f"1{(i * 7919) % 10**10:010d}" for i in range(count)]
    assert listed.get_column("person").to_list() == expected


class FirstBlockLast:
    """The rules, but the first block's validation waits until another block's has finished: the workers finish
    blocks out of order, as they do when the first block is the harder one."""

    def __init__(self) -> None:
        self.inner = validator()
        self.later_done = threading.Event()
        self.calls = 0
        self.lock = threading.Lock()

    def validate(self, frame: pl.DataFrame, **kwargs: bool) -> object:
        with self.lock:
            self.calls += 1
        if frame.get_column("_record")[0] == 1:  # the file's first block
            assert self.later_done.wait(10), "no other block was validated while the first one was"
            time.sleep(0.2)  # the later block is certainly finished first, and seen so by the pipeline
            return self.inner.validate(frame, **kwargs)
        result = self.inner.validate(frame, **kwargs)
        self.later_done.set()
        return result


class SlowReader:
    """A reader that yields its third block only once a block after the first has been validated (and a moment
    more): the pipeline then holds a later block finished while the first is still being validated."""

    def __init__(self, path: Path, validated: threading.Event) -> None:
        self.inner = CsvReader(path, block_bytes=8192)
        self.validated = validated

    def batches(self) -> Iterator[Batch]:
        for i, batch in enumerate(self.inner.batches()):
            if i == 2:
                assert self.validated.wait(10)
                time.sleep(0.05)
            yield batch


@pytest.mark.parametrize("workers", [None, 3], ids=["default-workers", "three-workers"])
def test_blocks_validated_out_of_order_are_counted_reported_and_written_in_file_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int | None
) -> None:
    """With the default workers, the first block is still being validated while the second is (one worker would
    wait forever); with three, the pipeline holds a later block finished before the first, and must wait for the
    first all the same."""
    if workers is not None:
        monkeypatch.setattr(pipeline, "WORKERS", workers)
    path = with_bad_nirs(tmp_path)
    sinks = {name: SlowSink() for name in ("cnam", "spf", "ars-11")}
    rules = FirstBlockLast()
    report = io.StringIO()
    summary = routed_run(SlowReader(path, rules.later_done), sinks, rules=rules, report=report)
    assert rules.later_done.is_set()
    bad = [i + 1 for i in range(RECORDS) if i % 7 == 3]
    assert summary.reconciled
    assert (summary.read, summary.rejected, summary.accepted) == (RECORDS, len(bad), RECORDS - len(bad))
    reported = [int(r.split(",")[0]) for r in report.getvalue().splitlines()[1:]]
    assert reported == bad  # one row each, in record order
    phones = pl.concat(sinks["cnam"].frames).get_column("telephone").to_list()
    assert phones == [p for i, p in enumerate(PHONES) if i % 7 != 3]


def _first_records(path: Path) -> list[int]:
    """The first record number of each block the reader makes of ``path``."""
    return [b.frame.get_column("_record")[0] for b in CsvReader(path, block_bytes=8192).batches()]


def test_a_failure_in_a_worker_stops_the_run(batch_file: Path) -> None:
    """Every block from the fourth on fails in validation: the three before it are written, whole and in order,
    and the run stops within a few blocks."""
    firsts = _first_records(batch_file)
    failing_from = firsts[3]

    class Failing:
        def __init__(self) -> None:
            self.inner = validator()
            self.calls = 0
            self.lock = threading.Lock()

        def validate(self, frame: pl.DataFrame, **kwargs: bool) -> object:
            with self.lock:
                self.calls += 1
            if frame.get_column("_record")[0] >= failing_from:
                raise StorageFull("no space left for the review file")
            return self.inner.validate(frame, **kwargs)

    sinks = {name: SlowSink() for name in ("cnam", "spf", "ars-11")}
    failing = Failing()
    with pytest.raises(StorageFull, match="review"):
        routed_run(batch_file, sinks, rules=failing)
    written = pl.concat(sinks["cnam"].frames).get_column("telephone").to_list()
    assert written == PHONES[: failing_from - 1]  # the blocks before the failing one, each once, in order
    assert failing.calls <= 3 + pipeline.WORKERS  # the reader stopped within a block or two of it


class FailingReader:
    """A reader whose file becomes unreadable after ``blocks`` blocks (a disk error mid-file)."""

    def __init__(self, path: Path, blocks: int) -> None:
        self.inner = CsvReader(path, block_bytes=8192)
        self.blocks = blocks

    def batches(self) -> Iterator[Batch]:
        for i, batch in enumerate(self.inner.batches()):
            if i == self.blocks:
                raise Unreadable("cannot read batch.csv: Input/output error")
            yield batch


def test_when_the_reader_fails_what_it_read_before_is_still_counted_reported_and_written(tmp_path: Path) -> None:
    """A worker may still hold a block when the reader fails: that block is finished (counted, its rejections
    reported, written) before the failure is raised, as when each block was finished before the next was read."""
    path = with_bad_nirs(tmp_path)
    firsts = _first_records(path)
    read = firsts[5] - 1  # the records of the five blocks read before the failure
    sinks = {name: SlowSink() for name in ("cnam", "spf", "ars-11")}
    summary, report = Summary("csv"), io.StringIO()
    rules = validator()

    class SlowOnTheLast:
        """The last block read before the failure is still being validated when the reader fails."""

        def validate(self, frame: pl.DataFrame, **kwargs: bool) -> object:
            if frame.get_column("_record")[0] == firsts[4]:
                time.sleep(0.5)
            return rules.validate(frame, **kwargs)

    with pytest.raises(Unreadable, match="Input/output"):
        routed_run(FailingReader(path, 5), sinks, rules=SlowOnTheLast(), summary=summary, report=report)
    bad = [i + 1 for i in range(read) if i % 7 == 3]
    assert (summary.read, summary.rejected, summary.accepted) == (read, len(bad), read - len(bad))
    assert [int(r.split(",")[0]) for r in report.getvalue().splitlines()[1:]] == bad
    assert sum(f.height for f in sinks["spf"].frames) == read - len(bad)


def test_each_person_of_the_index_lists_the_transfers_that_carried_them_across_blocks(tmp_path: Path) -> None:
    """Row ids are numbered per block: each patient's transfers are still theirs, whichever blocks the workers
    finished first (a positive resident of Paris goes to CNAM, SpF and the ARS of Île-de-France; a negative one of
    Lyon to SpF and the ARS of Auvergne-Rhône-Alpes)."""
    kinds = [(i % 3 == 0, i % 2 == 0) for i in range(RECORDS)]  # (positive, Paris)
    records = [
        good(
            telephone=phone,
            resultat="POSITIF" if positive else "NEGATIF",
            **({} if paris else {"code_commune_insee": "69381", "code_postal": "69001"}),
        )
        for phone, (positive, paris) in zip(PHONES, kinds, strict=True)
    ]
    path = write_batch(tmp_path / "batch.csv", records)
    sinks = {name: SlowSink() for name in ("cnam", "spf", "ars-11", "ars-84")}
    index = Bytes()
    persons = PersonsIndexSink(index, {name: f"t-{name}" for name in sinks}, new_key())
    summary = routed_run(path, sinks, persons, rules=FirstBlockLast())
    assert summary.reconciled
    assert len(_first_records(path)) > 10
    listed = pl.read_csv(bytes(index.data), infer_schema=False).filter(pl.col("kind") == "patient")
    expected = [
        ";".join(sorted(["t-spf", *(["t-cnam"] if positive else []), "t-ars-11" if paris else "t-ars-84"]))
        for positive, paris in kinds
    ]
    assert listed.get_column("telephone").to_list() == PHONES
    assert listed.get_column("transfers").to_list() == expected
