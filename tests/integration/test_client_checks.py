"""The client does not trust the relay: stale offers, re-offers and receipts that would attest nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from labrelay.client.api import RelayClient
from labrelay.client.fetch import (
    acknowledge,
    fetch_all,
    journal_entry,
    verify_manifest,
    verify_manifest_ignoring_deadline,
)
from labrelay.client.trust import TrustedDirectory
from labrelay.clock import ManualClock, SystemClock
from labrelay.crypto.envelopes import sign_envelope
from labrelay.crypto.keys import SigningKey
from labrelay.domain.transfers import ReceiptStatus
from labrelay.errors import IntegrityError, Unavailable
from tests.support.world import positives_in, sent_ids


def state_of(world, transfer_id: str) -> str:
    return world.db("SELECT state FROM transfers WHERE id = :id", id=transfer_id)[0][0]


class ReplayingRelay(RelayClient):
    """A compromised relay that keeps serving an inbox listing it captured earlier."""

    def __init__(self, *args: Any, listing: list[dict[str, Any]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._listing = listing

    def transfers(self, box: str) -> list[dict[str, Any]]:
        return self._listing


@pytest.mark.threat("T5")
def test_an_offer_past_its_deadline_is_refused_by_the_client(world, cli, batch: Path) -> None:
    sent = cli(
        "send", batch, "--as", world.party_dir("lab-paris-01"), "--server", world.url, "--to", "cnam", "--ttl", "1h"
    )
    assert sent.code == 0, str(sent)
    cnam = world.parties["cnam"]
    with world.client("cnam") as honest:
        listing = honest.transfers("inbox")
    later = ManualClock(datetime.now(UTC) + timedelta(hours=2))
    out = world.root / "out"
    with ReplayingRelay(world.url, "cnam", cnam.signing_key, SystemClock(), retries=0, listing=listing) as relay:
        report = fetch_all(cnam, relay, out, later)
    [(transfer_id, error)] = report.refused
    assert isinstance(error, IntegrityError)
    assert "after its deadline" in error.message
    assert not list(out.glob("*.csv"))
    assert state_of(world, transfer_id) == "available"


def test_a_raw_download_made_in_time_is_acknowledged_after_its_deadline_by_the_check_named_for_it(
    world, cli, batch: Path
) -> None:
    """``fetch --raw`` before the deadline, ``receipt`` after it: the receipt attests a download made in time, so the
    receipt path skips the deadline, by name (``verify_manifest_ignoring_deadline``); ``verify_manifest``, which every
    fetch calls with the time, refuses the same manifest then."""
    sent = cli(
        "send", batch, "--as", world.party_dir("lab-paris-01"), "--server", world.url, "--to", "cnam", "--ttl", "1h"
    )
    transfer_id = sent_ids(sent.out)["cnam"]
    raw = cli("fetch", "--as", world.party_dir("cnam"), "--server", world.url, "--out", world.root / "raw", "--raw")
    assert raw.code == 0, str(raw)
    cnam = world.parties["cnam"]
    later = ManualClock(datetime.now(UTC) + timedelta(hours=2))
    with world.client("cnam") as client:
        envelope = client.transfer(transfer_id)["manifest"]
        directory = TrustedDirectory(cnam.authority, client.directory(), later.now())
        with pytest.raises(IntegrityError, match="after its deadline"):
            verify_manifest(cnam, directory, envelope, transfer_id, now=later.now())
        assert verify_manifest_ignoring_deadline(cnam, directory, envelope, transfer_id).transfer_id == transfer_id
        receipt = acknowledge(cnam, client, transfer_id, later)
    assert receipt.status is ReceiptStatus.RECEIVED
    assert state_of(world, transfer_id) == "delivered"


def test_a_transfer_offered_again_is_acknowledged_again_not_decrypted_again(world, cli, batch: Path) -> None:
    sent = cli("send", batch, "--as", world.party_dir("lab-paris-01"), "--server", world.url, "--to", "cnam")
    transfer_id = sent_ids(sent.out)["cnam"]
    out = world.root / "out"
    first = cli("fetch", "--as", world.party_dir("cnam"), "--server", world.url, "--out", out)
    assert first.code == 0, str(first)
    [output] = list(out.glob("*.csv"))
    stamp = output.stat().st_mtime_ns
    # the relay "forgets" the receipt
    world.db("UPDATE transfers SET state = 'available', receipt = NULL WHERE id = :id", id=transfer_id)
    again = cli("fetch", "--as", world.party_dir("cnam"), "--server", world.url, "--out", out)
    assert again.code == 0, str(again)
    # Offered again (the embedded relay's reaper runs every minute: it has not closed it first), recognised by the
    # fetch journal, acknowledged again without a download or a decryption: the file written first is untouched.
    assert "already received" in again.out, str(again)
    assert output.stat().st_mtime_ns == stamp
    assert list(out.glob("*.csv")) == [output]
    assert state_of(world, transfer_id) == "delivered"


def test_a_receipt_lost_on_the_way_is_sent_by_the_next_fetch(
    world, cli, batch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = cli("send", batch, "--as", world.party_dir("lab-paris-01"), "--server", world.url, "--to", "cnam")
    transfer_id = sent_ids(sent.out)["cnam"]
    cnam = world.parties["cnam"]
    out = world.root / "out"

    def lost(self: RelayClient, tid: str, envelope: dict[str, Any]) -> dict[str, Any]:
        raise Unavailable("connection reset")

    with monkeypatch.context() as patch, world.client("cnam") as client:
        patch.setattr(RelayClient, "send_receipt", lost)
        report = fetch_all(cnam, client, out, SystemClock())
    assert report.refused == []  # not the payload's fault: nothing is refused, the receipt is retried
    assert [type(e) for _, e in report.failed] == [Unavailable]
    assert journal_entry(cnam, transfer_id)["acknowledged"] is False
    assert state_of(world, transfer_id) == "available"
    again = cli("fetch", "--as", world.party_dir("cnam"), "--server", world.url, "--out", out)
    assert again.code == 0, str(again)
    assert state_of(world, transfer_id) == "delivered"
    assert len(list(out.glob("*.csv"))) == 1


def test_a_receipt_attests_a_check_this_party_made(world, cli, tmp_path: Path) -> None:
    payload = tmp_path / "data.bin"
    payload.write_bytes(b"\x00" * 5000)
    lab = world.party_dir("lab-paris-01")
    sent = cli("send", payload, "--as", lab, "--server", world.url, "--to", "cnam", "--as-is")
    transfer_id = sent_ids(sent.out)["cnam"]
    cnam = world.party_dir("cnam")
    blind = cli("receipt", transfer_id, "--as", cnam, "--server", world.url)
    assert blind.code == 2, str(blind)
    assert "no verified download" in blind.err
    assert state_of(world, transfer_id) == "available"
    wrong = tmp_path / "other.age"
    wrong.write_bytes(b"not it")
    assert cli("receipt", transfer_id, "--as", cnam, "--server", world.url, "--file", wrong).code == 3
    assert state_of(world, transfer_id) == "available"
    assert cli("fetch", "--as", cnam, "--server", world.url, "--out", tmp_path / "raw", "--raw").code == 0
    ok = cli("receipt", transfer_id, "--as", cnam, "--server", world.url)
    assert ok.code == 0, str(ok)
    assert state_of(world, transfer_id) == "delivered"


@pytest.mark.threat("T12")
def test_senders_see_what_was_not_delivered_and_refuse_forged_receipts(world, cli, batch: Path) -> None:
    lab = world.party_dir("lab-paris-01")
    sent = cli("send", batch, "--as", lab, "--server", world.url, "--to", "cnam", "--to", "ars-11")
    ids = sent_ids(sent.out)
    positives = positives_in(batch)
    assert cli("fetch", "--as", world.party_dir("cnam"), "--server", world.url, "--out", world.root / "o").code == 0
    status = cli("receipts", "--as", lab, "--server", world.url)
    assert status.code == 0, str(status)
    lines = {line.split()[0]: line for line in status.out.splitlines()}
    assert "delivered" in lines[ids["cnam"]]
    assert "decrypted at" in lines[ids["cnam"]]
    assert f"{positives} records" in lines[ids["cnam"]]
    assert "available" in lines[ids["ars-11"]]
    assert "deadline" in lines[ids["ars-11"]]
    # A relay that claims delivery with a receipt the recipient never signed is caught by the sender.
    forged = {
        "payload": {
            "type": "transfer-receipt",
            "v": 1,
            "transfer_id": ids["ars-11"],
            "sender": "lab-paris-01",
            "recipient": "ars-11",
            "sha256": "0" * 64,
            "size": 1,
            "record_count": 300,
            "status": "decrypted",
            "received_at": "2026-11-28T00:00:00Z",
        }
    }
    forged = sign_envelope(forged["payload"], SigningKey.generate(), "ars-11")
    world.db(
        "UPDATE transfers SET state = 'delivered', receipt = :r WHERE id = :id", r=json.dumps(forged), id=ids["ars-11"]
    )
    refused = cli("receipts", "--as", lab, "--server", world.url)
    assert refused.code == 3, str(refused)
    assert ids["ars-11"] in refused.err
