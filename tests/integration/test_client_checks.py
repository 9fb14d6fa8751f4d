"""The client does not trust the relay: stale offers, re-offers and receipts that would attest nothing."""

from __future__ import annotations

import json
import os
import shutil
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from labrelay.client import fetch as fetch_module
from labrelay.client.api import RelayClient
from labrelay.client.fetch import (
    acknowledge,
    fetch_all,
    journal_entry,
    verify_manifest,
    verify_manifest_ignoring_deadline,
)
from labrelay.client.keystore import Party
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


class Killed(BaseException):
    """Stands for SIGKILL at one instant of a fetch: nothing after it runs (no handler catches a BaseException)."""


def _killed_after_naming(monkeypatch: pytest.MonkeyPatch, world, out: Path, *, raw: bool = False) -> str:
    """A fetch by cnam killed just after it named its output, before it recorded it as received (no sidecar, no
    journal receipt, no receipt to the relay); the transfer's id."""

    def kill(*args: Any, **kwargs: Any) -> Any:
        raise Killed

    with monkeypatch.context() as patch, world.client("cnam") as client:
        patch.setattr(fetch_module, "_received_raw" if raw else "_received", kill)
        with pytest.raises(Killed):
            fetch_all(world.parties["cnam"], client, out, SystemClock(), raw=raw)
    [transfer_id] = [p.stem for p in (world.party_dir("cnam") / "received").glob("*.json") if p.stem != "sources"]
    return transfer_id


@pytest.mark.parametrize("raw", [False, True], ids=["decrypted", "raw"])
def test_a_fetch_killed_after_naming_its_output_is_finished_by_the_next_run(
    world, cli, batch: Path, monkeypatch: pytest.MonkeyPatch, raw: bool
) -> None:
    """Killed between naming the file and recording it: the next run finds the very file it wrote (device, inode,
    size, in the journal before the name was given) and finishes it: sidecar, journal, receipt, nothing downloaded
    or written again. It used to refuse the file as planted (exit 3) on every later run, blocking the inbox."""
    sent = cli("send", batch, "--as", world.party_dir("lab-paris-01"), "--server", world.url, "--to", "cnam")
    assert sent.code == 0, str(sent)
    out = world.root / "out"
    transfer_id = _killed_after_naming(monkeypatch, world, out, raw=raw)
    [output] = [p for p in out.iterdir() if not p.name.startswith(".")]
    inode = output.stat().st_ino
    # A sidecar "left" as a link (as if the kill fell after the sidecar was named): replaced, never followed.
    victim = world.root / "victim.txt"
    victim.write_text("untouched\n")
    sidecar = out / (output.name.rsplit(".", 1)[0] + ".manifest.json")
    sidecar.symlink_to(victim)
    args = ["fetch", "--as", world.party_dir("cnam"), "--server", world.url, "--out", out, *(["--raw"] if raw else [])]
    again = cli(*args)
    assert again.code == 0, str(again)
    assert sorted(p for p in out.iterdir() if not p.name.startswith(".")) == sorted([output, sidecar])
    assert output.stat().st_ino == inode  # the same file, not written again
    assert not sidecar.is_symlink()
    assert json.loads(sidecar.read_text())["transfer_id"] == transfer_id
    assert victim.read_text() == "untouched\n"
    if raw:  # run once more before its receipt: the same file, said already received (it crashed on the name)
        third = cli(*args)
        assert third.code == 0, str(third)
        assert f"{transfer_id} was already received" in third.out
        assert "not acknowledged yet" in third.out
        assert output.stat().st_ino == inode
        receipt = cli("receipt", transfer_id, "--as", world.party_dir("cnam"), "--server", world.url)
        assert receipt.code == 0, str(receipt)
    else:
        assert journal_entry(world.parties["cnam"], transfer_id)["receipt"]
        assert len(output.read_text().splitlines()) == 1 + positives_in(batch)
    assert state_of(world, transfer_id) == "delivered"


@pytest.mark.threat("T26")
def test_a_file_put_in_place_of_a_killed_fetchs_output_is_still_refused(
    world, cli, batch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the very file the killed run wrote is finished: the same name, the same bytes, but another file (a new
    inode) is refused as before, nothing is written through it or over it, and the payload stays on the relay."""
    sent = cli("send", batch, "--as", world.party_dir("lab-paris-01"), "--server", world.url, "--to", "cnam")
    assert sent.code == 0, str(sent)
    out = world.root / "out"
    transfer_id = _killed_after_naming(monkeypatch, world, out)
    [output] = list(out.glob("*.csv"))
    content = output.read_bytes()
    output.unlink()
    output.write_bytes(content)  # the same name, size and bytes; another file
    again = cli("fetch", "--as", world.party_dir("cnam"), "--server", world.url, "--out", out)
    assert again.code == 3, str(again)
    assert "exists already" in again.err, str(again)
    assert output.read_bytes() == content
    assert state_of(world, transfer_id) == "available"


def test_an_old_copy_of_a_party_after_its_key_rotation_refuses_nothing(world, cli, batch: Path) -> None:
    """A copy of cnam's directory from before a rotation (a backup restored, a second host) meets a payload sealed
    to cnam's key in force, which it does not hold: the operator's mistake, not the payload's. It used to refuse the
    payload to the relay (lost to cnam, its sender told "refused"); now nothing is refused, the run says why and
    exits 1, and the copy that holds the key fetches it."""
    cnam = world.party_dir("cnam")
    old_copy = world.root / "cnam-old-copy"
    shutil.copytree(cnam, old_copy)
    rotated = cli("party", "rotate", cnam, "--authority", world.auth_dir, "--server", world.url)
    assert rotated.code == 0, str(rotated)
    sent = cli("send", batch, "--as", world.party_dir("lab-paris-01"), "--server", world.url, "--to", "cnam")
    assert sent.code == 0, str(sent)
    transfer_id = sent_ids(sent.out)["cnam"]
    stale = cli("fetch", "--as", old_copy, "--server", world.url, "--out", world.root / "stale-out")
    assert stale.code == 1, str(stale)
    assert "older than its last key rotation" in stale.err, str(stale)
    assert state_of(world, transfer_id) == "available"
    assert journal_entry(Party.load(old_copy), transfer_id) is None
    fetched = cli("fetch", "--as", cnam, "--server", world.url, "--out", world.root / "out")
    assert fetched.code == 0, str(fetched)
    assert state_of(world, transfer_id) == "delivered"


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_an_inbox_shared_with_a_loaders_group_as_documented_is_readable_by_that_group_alone(
    world, cli, batch: Path, fmt: str
) -> None:
    """docs/deployment.md: a loader running as another user reads the inbox through a group: ``UMask=0027``, the
    inbox ``chgrp GROUP`` and ``chmod 2750``. Outputs and their sidecars were 0600 whatever the umask, so the recipe
    could not work; in a setgid inbox they are now 0640 under umask 0027 (0600 under 0077), never readable by
    others, never writable but by their owner. Anywhere else they stay 0600."""
    lab, cnam = world.party_dir("lab-paris-01"), world.party_dir("cnam")
    shared, private = world.root / "shared", world.root / "private"
    shared.mkdir()
    shared.chmod(0o2750)
    for umask, out, expected in ((0o027, shared, 0o640), (0o077, shared, 0o600), (0o022, private, 0o600)):
        sent = cli("send", batch, "--as", lab, "--server", world.url, "--to", "cnam", "--again")
        assert sent.code == 0, str(sent)
        before = set(out.iterdir()) if out.exists() else set()
        previous = os.umask(umask)
        try:
            fetched = cli("fetch", "--as", cnam, "--server", world.url, "--out", out, "--format", fmt)
        finally:
            os.umask(previous)
        assert fetched.code == 0, str(fetched)
        written = [p for p in set(out.iterdir()) - before if not p.name.startswith(".")]
        assert len(written) == 2, written  # the output and its sidecar
        assert {stat.S_IMODE(p.stat().st_mode) for p in written} == {expected}, (umask, out.name)
