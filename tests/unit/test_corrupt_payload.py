"""A stored payload whose bytes changed behind the relay's back (T39), on real storage (SQLite, a payload directory)
with a manual clock: the relay's at-rest check catches it, and the first failure holds the transfer for good, alerts
an operator, answers its recipient with ``payload-corrupt`` from then on, and shows its sender why.

And the smallest payload a manifest may declare (T40): less than an age file sealed to one recipient is refused at
creation, and by a recipient offered one.
"""

from __future__ import annotations

import io
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from labrelay.crypto import age_stream
from labrelay.crypto.at_rest import HEADER_BYTES, SEGMENT_HEAD
from labrelay.crypto.keys import AgeIdentity
from labrelay.domain.audit import AuditEvent
from labrelay.domain.parties import Role
from labrelay.domain.transfers import (
    MIN_PAYLOAD_BYTES,
    MIN_PQ_PAYLOAD_BYTES,
    Manifest,
    QuarantineReason,
    TransferState,
    min_payload_bytes,
)
from labrelay.errors import Conflict, IntegrityError, NotFound, PayloadCorrupt, UsageError
from labrelay.http.models import TransferOut
from labrelay.http.problems import status_for
from labrelay.relay.detector import CORRUPT_PAYLOAD
from tests.support.relay_setup import Member, Setup, read_all

CHUNK = 7000  # upload chunks, hence at-rest segments, of 7000 bytes


def events(setup: Setup, event: AuditEvent, transfer_id: str | None = None) -> list:
    return [
        r.entry
        for r in setup.relay.sql.audit.links()
        if r.entry.event is event and (transfer_id is None or r.entry.transfer_id == transfer_id)
    ]


def stored(setup: Setup, transfer_id: str) -> Path:
    return setup.relay.settings.payload_dir / f"{transfer_id}.payload"


def flip(path: Path, position: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[position] ^= 0x01
    path.write_bytes(bytes(raw))


def parties(setup: Setup) -> tuple[Member, Member]:
    return setup.member("lab-a", Role.LAB), setup.member("cnam", Role.RECIPIENT)


def available(setup: Setup, lab: Member, cnam: Member, plain: bytes) -> str:
    envelope, data = setup.seal(lab, cnam, plain)
    assert setup.upload(lab, envelope, data, chunk=CHUNK) is TransferState.AVAILABLE
    return str(envelope["payload"]["transfer_id"])


@pytest.mark.threat("T39")
def test_a_segment_that_fails_mid_stream_holds_the_transfer_at_the_first_failure(setup: Setup) -> None:
    lab, cnam = parties(setup)
    plain = bytes(range(256)) * 200  # 51 200 bytes: eight segments
    transfer_id = available(setup, lab, cnam, plain)
    good = available(setup, lab, cnam, b"synthetic, no health data\n" * 40)
    path = stored(setup, transfer_id)
    flip(path, path.stat().st_size - 100)  # inside the last segment: the headers and most bytes went out
    delivery = setup.relay.services.delivery
    recovery = setup.relay.services.recovery

    stream = delivery.open_payload(cnam.caller, transfer_id)
    received = bytearray()

    def read() -> None:
        for chunk in stream.chunks:
            received.extend(chunk)

    with pytest.raises(PayloadCorrupt, match=f"{transfer_id}.*integrity check"):
        read()
    assert 0 < len(received) < stream.size  # cut where the bad segment begins, after what was sound

    # Held at once, in the database, for its reason; recorded once, with the sender named; an operator alerted.
    transfer = setup.relay.sql.transfers.get(transfer_id)
    assert transfer is not None
    assert transfer.state is TransferState.AVAILABLE
    assert transfer.quarantined_at == setup.clock.now()
    assert transfer.held_because is QuarantineReason.CORRUPT
    [corrupt] = events(setup, AuditEvent.PAYLOAD_CORRUPT)
    assert (corrupt.actor, corrupt.transfer_id) == ("cnam", transfer_id)
    assert corrupt.details["sender"] == "lab-a"
    assert corrupt.details["quarantined"] is True
    [alert] = [a for a in setup.relay.detector.raised if a.rule == CORRUPT_PAYLOAD]
    assert alert.subject == "relay-storage"
    assert transfer_id in alert.summary
    assert "lab-a" in alert.summary
    [raised] = [e for e in events(setup, AuditEvent.ALERT_RAISE) if e.reason == CORRUPT_PAYLOAD]
    assert raised.transfer_id == transfer_id

    # Never served again: its recipient is told why (410 payload-corrupt), from any offset; nothing else read.
    for start in (0, len(received)):
        with pytest.raises(PayloadCorrupt) as refused:
            delivery.open_payload(cnam.caller, transfer_id, start)
        assert status_for(refused.value) == 410
        assert refused.value.code == "payload-corrupt"
    assert len(events(setup, AuditEvent.DOWNLOAD_SERVE, transfer_id)) == 1
    assert len(events(setup, AuditEvent.PAYLOAD_CORRUPT)) == 1
    assert [r.reason for r in events(setup, AuditEvent.DOWNLOAD_REFUSE, transfer_id)] == ["corrupt", "corrupt"]
    with pytest.raises(NotFound):  # to anyone else it does not exist, as before
        delivery.open_payload(lab.caller, transfer_id)
    with pytest.raises(Conflict, match="integrity check"):
        delivery.accept_receipt(
            cnam.caller, transfer_id, setup.receipt(cnam, {"payload": transfer.manifest.to_payload()})
        )

    # Not listed any more; its sender and recipient read the hold and its reason; the rest of the inbox is served.
    assert [r.transfer_id for r in delivery.inbox(cnam.caller)] == [good]
    for member in (lab, cnam):
        hold = TransferOut.of(delivery.describe(member.caller, transfer_id)).quarantine
        assert hold is not None
        assert (hold.reason, hold.at) == ("corrupt", "2026-11-28T09:00:00Z")
    assert TransferOut.of(delivery.describe(cnam.caller, good)).quarantine is None
    assert read_all(setup, cnam, good) == age_ciphertext_of(setup, good)

    # Held, it is still deleted at its deadline, as anything else.
    setup.clock.advance(timedelta(days=7))
    assert recovery.expire_due() == 2
    assert list(setup.relay.payloads.ids()) == []


def age_ciphertext_of(setup: Setup, transfer_id: str) -> bytes:
    """The payload as the relay holds it (after its own at-rest check)."""
    return b"".join(setup.relay.payloads.open(transfer_id))


@pytest.mark.threat("T39")
def test_a_first_segment_that_fails_is_never_served_at_all(setup: Setup) -> None:
    lab, cnam = parties(setup)
    transfer_id = available(setup, lab, cnam, b"synthetic, no health data\n" * 1000)
    flip(stored(setup, transfer_id), HEADER_BYTES + SEGMENT_HEAD + 10)
    delivery = setup.relay.services.delivery
    for _ in range(2):
        with pytest.raises(PayloadCorrupt, match=transfer_id):
            delivery.open_payload(cnam.caller, transfer_id)
    assert events(setup, AuditEvent.DOWNLOAD_SERVE, transfer_id) == []  # no byte left the relay
    [corrupt] = events(setup, AuditEvent.PAYLOAD_CORRUPT)
    assert corrupt.details["quarantined"] is True
    assert setup.relay.sql.transfers.get(transfer_id).held_because is QuarantineReason.CORRUPT  # type: ignore[union-attr]
    assert len([a for a in setup.relay.detector.raised if a.rule == CORRUPT_PAYLOAD]) == 1


def test_other_holds_keep_their_reason_and_read_as_before(setup: Setup) -> None:
    """A hold recorded without a reason (before migration 0007) reads as a refusal's or an administrator's; an
    administrator's hold of a sound payload still answers "not found", as before."""
    lab, cnam = parties(setup)
    transfer_id = available(setup, lab, cnam, b"synthetic, no health data\n" * 40)
    setup.relay.sql.transfers.quarantine([transfer_id], setup.clock.now())
    transfer = setup.relay.sql.transfers.get(transfer_id)
    assert transfer is not None
    assert transfer.held_because is QuarantineReason.ADMIN
    with pytest.raises(NotFound):
        setup.relay.services.delivery.open_payload(cnam.caller, transfer_id)
    with setup.relay.sql.db.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE transfers SET quarantine_reason = NULL")
    assert setup.relay.sql.transfers.get(transfer_id).held_because is QuarantineReason.ADMIN  # type: ignore[union-attr]
    assert events(setup, AuditEvent.PAYLOAD_CORRUPT) == []


# ------------------------------------------------------------------ the smallest payload (T40)


@pytest.mark.threat("T40")
def test_the_smallest_age_file_is_what_the_real_age_tool_writes(tmp_path: Path) -> None:
    """The figures are the age format's own (domain/transfers.py derives them); the real ``age`` writes exactly the
    classic one for an empty plaintext, and labrelay's own encryption of nothing writes exactly each."""
    classic = AgeIdentity.generate(classic=True).recipient
    sealed = subprocess.run(["age", "-r", classic], input=b"", capture_output=True, check=True).stdout
    assert len(sealed) == MIN_PAYLOAD_BYTES == min_payload_bytes(classic) == 200
    hybrid = AgeIdentity.generate().recipient
    assert min_payload_bytes(hybrid) == MIN_PQ_PAYLOAD_BYTES == 1659
    for recipient in (classic, hybrid):
        out = io.BytesIO()
        size, _ = age_stream.encrypt(io.BytesIO(b""), out, [recipient])
        assert size == len(out.getvalue()) == min_payload_bytes(recipient)


@pytest.mark.threat("T40")
def test_a_manifest_smaller_than_any_age_file_is_refused_at_creation(setup: Setup) -> None:
    lab, cnam = parties(setup)
    uploads = setup.relay.services.uploads
    smallest = min_payload_bytes(cnam.identity.recipient)  # cnam's key is hybrid: 1,659 bytes
    for size in (0, 1, MIN_PAYLOAD_BYTES, smallest - 1):
        envelope, _ = setup.seal(lab, cnam, b"x", size=size)
        with pytest.raises(UsageError, match="smallest age file"):
            uploads.create(lab.caller, envelope)
    assert setup.relay.sql.transfers.get(envelope["payload"]["transfer_id"]) is None
    refusals = events(setup, AuditEvent.TRANSFER_REFUSE)
    assert [(e.actor, e.reason) for e in refusals] == [("lab-a", "usage")] * 4
    envelope, _ = setup.seal(lab, cnam, b"x", size=smallest)
    transfer, new = uploads.create(lab.caller, envelope)
    assert new
    assert transfer.state is TransferState.UPLOADING


@pytest.mark.threat("T40")
def test_a_manifest_policy_version_is_an_identifier(setup: Setup) -> None:
    """A policy version names a signed policy: no right-to-left override, no invisible character in it."""
    lab, cnam = parties(setup)
    for version in ("fr-covid\u202e2.6202", "fr-covid-2026.3\u200b", "\u2066fr-covid-2026.3\u2069", "a b"):
        with pytest.raises(UsageError, match="policy_version"):
            setup.seal(lab, cnam, b"x", policy_version=version)
        payload = setup.seal(lab, cnam, b"x")[0]["payload"] | {"policy_version": version}
        with pytest.raises(IntegrityError, match="malformed manifest"):
            Manifest.from_payload(payload)
