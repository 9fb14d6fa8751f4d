"""Fuzzing the three readers (hypothesis): whatever the bytes, no crash, no hang, bounded work; every input ends as
records, per-record rejections, or one clear ``Unreadable`` or ``NotResults``. Counts always reconcile."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labrelay.batch.fhir import bundle_for
from labrelay.batch.hl7 import record_to_message
from labrelay.batch.pipeline import RejectionReport, ReviewFile, Summary, open_reader, run
from labrelay.domain.records import FIELDS
from labrelay.errors import NotResults, Unreadable
from tests.support.records import V, good

SETTINGS = settings(max_examples=120, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
CSV_SEED = (",".join(FIELDS) + "\n" + ",".join(good().values()) + "\n").encode()
HL7_SEED = (record_to_message(good(), "M1", "20260115120000") + "\r").encode()
FHIR_SEED = (json.dumps(bundle_for(good(), "5f0e5b1c-6c8e-4f3a-9a0e-0e5d4c3b2a10")) + "\n").encode()


def check(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"input{suffix}"
        path.write_bytes(data)
        try:
            fmt, reader = open_reader(path)
            summary = run(reader, V, summary=Summary(fmt), report=RejectionReport(None), review=ReviewFile(None))
        except (Unreadable, NotResults):
            return
        assert summary.reconciled, summary


def mutate(seed: bytes) -> st.SearchStrategy[bytes]:
    """The seed with bytes flipped, cut, duplicated or spliced in: inputs close to valid, where bugs hide."""

    def apply(ops: list[tuple[int, int, bytes]]) -> bytes:
        data = bytearray(seed)
        for kind, position, blob in ops:
            at = position % (len(data) + 1)
            if kind == 0 and data:
                data[at % len(data)] ^= blob[0] if blob else 0xFF
            elif kind == 1:
                data[at:at] = blob
            elif kind == 2:
                del data[at : at + len(blob) + 1]
            else:
                data += data[:at]
        return bytes(data)

    op = st.tuples(st.integers(0, 3), st.integers(0, 10_000), st.binary(min_size=1, max_size=8))
    return st.lists(op, min_size=1, max_size=6).map(apply)


@SETTINGS
@given(st.binary(max_size=2048))
def test_arbitrary_bytes(data: bytes) -> None:
    check(data, ".bin")


@SETTINGS
@given(mutate(CSV_SEED))
def test_mutated_csv(data: bytes) -> None:
    check(data, ".csv")


@SETTINGS
@given(mutate(HL7_SEED))
def test_mutated_hl7(data: bytes) -> None:
    check(data, ".hl7")


@SETTINGS
@given(mutate(FHIR_SEED))
def test_mutated_fhir(data: bytes) -> None:
    check(data, ".ndjson")


def test_deeply_nested_json_is_a_rejection_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_bytes(b"{" + b'"a":[' * 100_000 + b"]" * 100_000 + b"}")
    check(path.read_bytes(), ".json")


def test_a_huge_single_line_is_bounded(tmp_path: Path) -> None:
    check(b"MSH|^~\\&|" + b"A" * 5_000_000 + b"\r", ".hl7")
    check(CSV_SEED + b'"' + b"x" * 3_000_000 + b"\n", ".csv")
