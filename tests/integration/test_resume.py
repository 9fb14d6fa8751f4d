"""Interrupted uploads and downloads resume at their offset, across a relay killed with SIGKILL."""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest

from labrelay.client.api import RelayClient
from labrelay.client.fetch import fetch_all
from labrelay.client.progress import NoProgress
from labrelay.client.send import seal
from labrelay.client.trust import TrustedDirectory
from labrelay.clock import SystemClock
from labrelay.crypto.envelopes import envelope_payload
from labrelay.domain.parties import Role
from labrelay.domain.transfers import Manifest
from labrelay.errors import Unavailable
from tests.support.world import RelayServer, relay_store, sent_ids, swap_one_byte


def transfer_id_batch(world, transfer_id: str) -> str:
    """The first 8 characters of a transfer's batch id, as fetch names its output file."""
    [(manifest,)] = world.db("SELECT manifest FROM transfers WHERE id = :id", id=transfer_id)
    return json.loads(manifest)["payload"]["batch_id"][:8]


def state_of(world, transfer_id: str) -> str:
    return world.db("SELECT state FROM transfers WHERE id = :id", id=transfer_id)[0][0]


def audit_details(world, event: str) -> list[str]:
    return [r[0] for r in world.db("SELECT details FROM audit_events WHERE event = :e ORDER BY seq", e=event)]


def test_upload_resumes_after_the_relay_is_killed(world, cli, tmp_path: Path) -> None:
    plain = tmp_path / "big.bin"
    plain.write_bytes(os.urandom(3 * 1024 * 1024))
    lab = world.parties["lab-paris-01"]
    with world.client("lab-paris-01") as client:
        directory = TrustedDirectory(lab.authority, client.directory(), SystemClock().now())
        [state] = seal(lab, plain, [directory.require("cnam", {Role.RECIPIENT})], timedelta(days=1), SystemClock())
        envelope = json.loads(state.read_text())["manifest"]
        manifest = Manifest.from_payload(envelope_payload(envelope))
        client.create_transfer(envelope)
        with state.with_suffix(".age").open("rb") as fh:
            assert client.upload_region(manifest.transfer_id, fh, 0, 1024 * 1024) == 1024 * 1024

    world.relay.kill()  # SIGKILL: no shutdown, no cleanup
    restarted = RelayServer(world.relay.data)
    url = restarted.start()
    try:
        resumed = cli("resume", "--as", lab.path, "--server", url)
        assert resumed.code == 0, str(resumed)
        assert manifest.transfer_id in resumed.out
        offsets = [d for d in audit_details(world, "upload:chunk") if '"offset":1048576' in d]
        assert offsets, "the second run started at the relay's offset, not from zero"
        assert not list(lab.ensure_outbox().iterdir())  # ciphertext spool removed once uploaded
        out = tmp_path / "out"
        fetched = cli("fetch", "--as", world.party_dir("cnam"), "--server", url, "--out", out)
        assert fetched.code == 0, str(fetched)
        [result] = list(out.glob("*.bin"))
        assert result.read_bytes() == plain.read_bytes()
    finally:
        restarted.stop()


def sent_as_is(world, cli, tmp_path: Path, size: int) -> tuple[bytes, str]:
    """``size`` random bytes sent ``--as-is`` to CNAM: (the bytes, the transfer id)."""
    plain = tmp_path / "data.bin"
    plain.write_bytes(os.urandom(size))
    sent = cli("send", plain, "--as", world.party_dir("lab-paris-01"), "--server", world.url, "--to", "cnam", "--as-is")
    assert sent.code == 0, str(sent)
    return plain.read_bytes(), sent_ids(sent.out)["cnam"]


def plant_partial(out: Path, transfer_id: str, data: bytes) -> None:
    """A partial download of ``transfer_id`` left in fetch's work directory under ``out``."""
    work = out / ".labrelay"
    work.mkdir(parents=True, mode=0o700)
    (work / f"{transfer_id}.age.part").write_bytes(data)


@pytest.mark.scaled("ranged reads across S3 chunk objects")
def test_download_resumes_from_a_partial_file(world, cli, tmp_path: Path) -> None:
    plain, transfer_id = sent_as_is(world, cli, tmp_path, 2 * 1024 * 1024)
    out = tmp_path / "out"
    with world.client("cnam") as client:
        plant_partial(out, transfer_id, b"".join(client.download(transfer_id))[:700_000])
    fetched = cli("fetch", "--as", world.party_dir("cnam"), "--server", world.url, "--out", out)
    assert fetched.code == 0, str(fetched)
    [written] = list(out.glob(f"*_{transfer_id_batch(world, transfer_id)}_cnam.bin"))
    assert written.read_bytes() == plain
    assert any('"start":700000' in d for d in audit_details(world, "download:serve"))


class Notes(NoProgress):
    """Progress that keeps the lines fetch says (``note``)."""

    def __init__(self) -> None:
        self.said: list[str] = []

    def note(self, message: str) -> None:
        self.said.append(message)


def test_a_partial_file_that_no_longer_matches_is_downloaded_again_not_refused(world, cli, tmp_path: Path) -> None:
    """A power loss after a partial download's bytes were written but before they reached the disk leaves a file of
    the right length with the wrong bytes. The resumed download then fails the signed hash: fetch downloads the
    payload whole once more rather than refusing it for good because of its own disk."""
    plain, transfer_id = sent_as_is(world, cli, tmp_path, 2 * 1024 * 1024)
    out = tmp_path / "out"
    plant_partial(out, transfer_id, bytes(700_000))  # its length survived, its bytes did not
    notes = Notes()
    with world.client("cnam") as client:
        report = fetch_all(world.parties["cnam"], client, out, SystemClock(), progress=notes)
    [fetched] = report.fetched
    assert (fetched.transfer_id, fetched.acknowledged) == (transfer_id, True)
    assert fetched.path.read_bytes() == plain
    assert report.refused == []
    assert any("downloading it again from the start" in note for note in notes.said)
    served = audit_details(world, "download:serve")
    assert any('"start":700000' in d for d in served)  # resumed first …
    assert any('"start":0' in d for d in served)  # … then whole
    assert state_of(world, transfer_id) == "delivered"


def test_a_payload_whose_whole_download_fails_is_still_refused(world, cli, tmp_path: Path) -> None:
    """The retry above is one whole download: a payload altered in the relay's storage fails it too and is refused."""
    _, transfer_id = sent_as_is(world, cli, tmp_path, 1024 * 1024)
    swap_one_byte(world, transfer_id)
    out = tmp_path / "out"
    plant_partial(out, transfer_id, b"".join(relay_store(world).open(transfer_id))[:300_000])
    fetched = cli("fetch", "--as", world.party_dir("cnam"), "--server", world.url, "--out", out)
    assert fetched.code == 3, str(fetched)
    assert "does not match its signed manifest" in fetched.err
    assert not list(out.glob("*.bin"))
    served = audit_details(world, "download:serve")
    assert any('"start":300000' in d for d in served)  # resumed first …
    assert sum('"start":0' in d for d in served) == 1  # … then one whole download, no more


class CutOnce(RelayClient):
    """A client whose first download stream is cut after its first piece, as a restarted replica would cut it."""

    cut = True

    def download(self, transfer_id: str, start: int = 0):
        stream = super().download(transfer_id, start)
        if not self.cut:
            return stream
        self.cut = False

        def first_piece_then_cut():
            yield next(stream)
            stream.close()
            raise Unavailable("download interrupted")

        return first_piece_then_cut()


def test_an_interrupted_download_resumes_within_the_same_fetch(world, cli, tmp_path: Path) -> None:
    plain = tmp_path / "data.bin"
    plain.write_bytes(os.urandom(2 * 1024 * 1024))
    sent = cli("send", plain, "--as", world.party_dir("lab-paris-01"), "--server", world.url, "--to", "cnam", "--as-is")
    transfer_id = sent_ids(sent.out)["cnam"]
    cnam = world.parties["cnam"]
    out = tmp_path / "out"
    with CutOnce(world.url, cnam.name, cnam.signing_key, SystemClock(), retries=2, backoff=0.01) as client:
        report = fetch_all(cnam, client, out, SystemClock())
        assert not client.cut  # the cut happened
    [fetched] = report.fetched
    assert fetched.transfer_id == transfer_id
    assert fetched.acknowledged
    assert fetched.path.read_bytes() == plain.read_bytes()
    starts = [d for d in audit_details(world, "download:serve") if '"start":0' not in d]
    assert starts, "the second request resumed from the bytes already received, not from zero"


def test_a_publication_interrupted_by_a_crash_is_completed_at_restart(world, cli, tmp_path: Path) -> None:
    """Crash after the atomic rename, before the database said so: the restarted relay finishes the job."""
    plain = tmp_path / "x.bin"
    plain.write_bytes(os.urandom(100_000))
    sent = cli("send", plain, "--as", world.party_dir("lab-paris-01"), "--server", world.url, "--to", "cnam", "--as-is")
    transfer_id = sent_ids(sent.out)["cnam"]
    world.relay.stop()
    world.db("UPDATE transfers SET state = 'uploading' WHERE id = :id", id=transfer_id)
    restarted = RelayServer(world.relay.data)
    url = restarted.start()
    try:
        fetched = cli("fetch", "--as", world.party_dir("cnam"), "--server", url, "--out", tmp_path / "o")
        assert fetched.code == 0, str(fetched)
        assert transfer_id in fetched.out
    finally:
        restarted.stop()


@pytest.mark.threat("T5")
def test_nothing_is_served_past_its_deadline(world, cli, tmp_path: Path) -> None:
    plain = tmp_path / "short.bin"
    plain.write_bytes(b"short-lived\n" * 100)
    lab = world.party_dir("lab-paris-01")
    sent = cli("send", plain, "--as", lab, "--server", world.url, "--to", "cnam", "--ttl", "2s", "--as-is")
    assert sent.code == 0, str(sent)
    transfer_id = sent_ids(sent.out)["cnam"]
    time.sleep(3)
    fetched = cli("fetch", "--as", world.party_dir("cnam"), "--server", world.url, "--out", tmp_path / "o")
    assert fetched.code == 0
    assert "nothing waiting" in fetched.out
    with (
        RelayClient(world.url, "cnam", world.parties["cnam"].signing_key, SystemClock(), retries=0) as client,
        pytest.raises(Exception, match="no transfer"),
    ):
        list(client.download(transfer_id))
    too_long = cli(
        "send", plain, "--as", lab, "--server", world.url, "--to", "cnam", "--ttl", "31d", "--as-is", "--again"
    )
    assert too_long.code == 2, str(too_long)
    assert "longer than the relay keeps payloads (30d)" in too_long.err
    assert not list(world.parties["lab-paris-01"].ensure_outbox().iterdir())
