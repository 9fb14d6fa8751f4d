"""The audit chain: any edit, deletion or reordering is found, and the first bad record named."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from labrelay.domain.audit import GENESIS, AuditEntry, AuditEvent, AuditLink, Outcome, chain_hash, verify_chain

T0 = datetime(2026, 11, 28, tzinfo=UTC)


def chain(n: int) -> list[AuditLink]:
    out, prev = [], GENESIS
    for i in range(1, n + 1):
        entry = AuditEntry(
            at=T0 + timedelta(seconds=i), event=AuditEvent.UPLOAD_CHUNK, actor="lab-a", details={"offset": i}
        )
        digest = chain_hash(entry, i, prev)
        out.append(AuditLink(seq=i, entry=entry, prev_hash=prev, hash=digest))
        prev = digest
    return out


def test_intact_chain_verifies() -> None:
    records = chain(10)
    report = verify_chain(records)
    assert report.ok
    assert report.links == 10
    assert report.head == records[-1].hash


@pytest.mark.threat("T11")
def test_edit_is_found() -> None:
    records = chain(10)
    records[4] = dataclasses.replace(records[4], entry=dataclasses.replace(records[4].entry, outcome=Outcome.REFUSED))
    report = verify_chain(records)
    assert not report.ok
    assert report.first_bad_seq == 5


@pytest.mark.threat("T11")
def test_deletion_and_reordering_are_found() -> None:
    records = chain(10)
    assert verify_chain(records[:3] + records[4:]).first_bad_seq == 4  # the missing record
    swapped = [*records[:2], records[3], records[2], *records[4:]]
    assert verify_chain(swapped).first_bad_seq == 3  # the first position out of place


@pytest.mark.threat("T11")
def test_rehashed_edit_breaks_the_link() -> None:
    """An attacker who edits a record and recomputes its hash still breaks the next record's link."""
    records = chain(5)
    edited = dataclasses.replace(records[1].entry, actor="someone-else")
    records[1] = dataclasses.replace(records[1], entry=edited, hash=chain_hash(edited, 2, records[1].prev_hash))
    report = verify_chain(records)
    assert report.first_bad_seq == 3
