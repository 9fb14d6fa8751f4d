"""Each attack the issue names is refused with exit code 3 and one clear line, and nothing is written or
acknowledged. The relay is a real process; tampering is done where an attacker would do it (its disk, its
database, the wire)."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from labrelay.cli.main import main
from labrelay.client.api import RelayClient
from labrelay.clock import SystemClock
from labrelay.crypto import httpsig
from labrelay.crypto.envelopes import sign_envelope
from labrelay.crypto.keys import AgeIdentity, SigningKey
from labrelay.domain.names import AUTHORITY_KEYID, new_id
from labrelay.domain.parties import PartyEntry, Role
from labrelay.domain.transfers import Manifest
from labrelay.errors import (
    AuthenticationFailed,
    IntegrityError,
    NotCiphertext,
    PartyRevoked,
    PermissionDenied,
    ReplayDetected,
)
from tests.support.world import CliResult, relay_store, sent_ids, swap_one_byte


def refused(result: CliResult, needle: str) -> None:
    assert result.code == 3, str(result)
    assert needle in result.err, str(result)
    assert "Traceback" not in result.err
    assert len([line for line in result.err.splitlines() if line.startswith("labrelay:")]) >= 1


def state_of(world, transfer_id: str) -> str:
    return world.db("SELECT state FROM transfers WHERE id = :id", id=transfer_id)[0][0]


def nothing_written(out: Path) -> None:
    written = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert written == [], written


def send_one(world, cli, batch: Path, to: str = "cnam") -> str:
    result = cli("send", batch, "--as", world.party_dir("lab-paris-01"), "--server", world.url, "--to", to)
    assert result.code == 0, str(result)
    return sent_ids(result.out)[to]


@pytest.mark.scaled("a byte flipped in an S3 chunk object is caught as on disk")
@pytest.mark.threat("T7")
def test_one_flipped_byte_in_a_stored_payload(world, cli, batch: Path) -> None:
    """An attacker who owns the relay, keys included, swaps a payload for one with a byte changed and wraps it
    properly: the relay serves it, and the recipient refuses it against the sender's signed hash."""
    transfer_id = send_one(world, cli, batch)
    swap_one_byte(world, transfer_id)
    out = world.root / "out"
    refused(
        cli("fetch", "--as", world.party_dir("cnam"), "--server", world.url, "--out", out),
        "does not match its signed manifest",
    )
    nothing_written(out)
    assert state_of(world, transfer_id) == "available"  # no receipt was sent


@pytest.mark.threat("T7")
def test_one_flipped_byte_on_the_relays_disk(world, cli, batch: Path) -> None:
    """Without the keys, a changed byte in storage breaks the at-rest seal: the relay stops serving at that
    record and records the corruption; the recipient writes nothing and acknowledges nothing."""
    transfer_id = send_one(world, cli, batch)
    world.flip_stored_byte(transfer_id)
    out = world.root / "out"
    result = cli("fetch", "--as", world.party_dir("cnam"), "--server", world.url, "--out", out)
    assert result.code != 0, str(result)
    assert "Traceback" not in result.err
    decrypted = [p for p in out.rglob("*") if p.is_file() and ".labrelay" not in p.parts]
    assert decrypted == []  # at most the ciphertext prefix, kept to resume from
    for partial in out.rglob("*.part"):
        assert b"age-encryption.org/v1".startswith(partial.read_bytes()[:21])  # ciphertext, if anything
    assert state_of(world, transfer_id) == "available"
    corrupt = world.db(
        "SELECT count(*) FROM audit_events WHERE event = 'payload:corrupt' AND transfer_id = :id", id=transfer_id
    )[0][0]
    assert corrupt >= 1


@pytest.mark.threat("T41")
def test_an_upload_that_is_not_age_ciphertext(world, batch: Path) -> None:
    """A lab's client that skipped encryption sends the batch in the clear, under a manifest that matches it (its size,
    its SHA-256): the relay refuses its first chunk (422 ``not-ciphertext``, rebuilt as such by the client), keeps
    no byte of it, and audits the refusal."""
    lab, cnam = world.parties["lab-paris-01"], world.parties["cnam"]
    plain = batch.read_bytes()
    now = datetime.now(UTC).replace(microsecond=0)
    manifest = Manifest(
        transfer_id=new_id(),
        batch_id=new_id(),
        sender=lab.name,
        recipient="cnam",
        recipient_key=cnam.age_recipient,
        size=len(plain),
        sha256=hashlib.sha256(plain).hexdigest(),
        record_count=None,
        media_type="text/csv",
        created=now,
        deadline=now + timedelta(days=1),
    )
    with world.client(lab.name) as client:
        client.create_transfer(sign_envelope(manifest.to_payload(), lab.signing_key, lab.name))
        with pytest.raises(NotCiphertext, match="age header"):
            client.upload_region(manifest.transfer_id, io.BytesIO(plain), 0, len(plain))
    tid = manifest.transfer_id
    assert world.db("SELECT state, uploaded FROM transfers WHERE id = :id", id=tid) == [("uploading", 0)]
    assert relay_store(world).uploaded(tid) == 0
    refusals = world.db(
        "SELECT reason FROM audit_events WHERE event = 'upload:chunk' AND outcome = 'refused' AND transfer_id = :id",
        id=tid,
    )
    assert refusals == [("not-ciphertext",)]


@pytest.mark.threat("T2")
def test_a_manifest_signed_by_an_unregistered_key(world, cli, batch: Path) -> None:
    # On the relay: a lab presents a manifest its registered key did not sign.
    lab = world.parties["lab-paris-01"]
    cnam = world.parties["cnam"]
    manifest = {
        "type": "transfer-manifest",
        "v": 1,
        "transfer_id": new_id(),
        "batch_id": new_id(),
        "sender": lab.name,
        "recipient": "cnam",
        "recipient_key": cnam.age_recipient,
        "size": 10,
        "sha256": "0" * 64,
        "record_count": None,
        "media_type": "text/csv",
        "created": "2026-01-01T00:00:00Z",
        "deadline": "2099-01-01T00:00:00Z",
    }
    manifest["created"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    manifest["deadline"] = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with world.client("lab-paris-01") as client, pytest.raises(IntegrityError, match="manifest"):
        client.create_transfer(sign_envelope(manifest, SigningKey.generate(), lab.name))
    assert world.db("SELECT count(*) FROM transfers")[0][0] == 0

    # On the recipient: the relay hands over a manifest re-signed by an unregistered key.
    transfer_id = send_one(world, cli, batch)
    envelope = json.loads(world.db("SELECT manifest FROM transfers WHERE id = :id", id=transfer_id)[0][0])
    forged = sign_envelope(envelope["payload"], SigningKey.generate(), envelope["signer"])
    world.db("UPDATE transfers SET manifest = :m WHERE id = :id", m=json.dumps(forged), id=transfer_id)
    out = world.root / "out"
    refused(
        cli("fetch", "--as", world.party_dir("cnam"), "--server", world.url, "--out", out), "transfer-manifest refused"
    )
    nothing_written(out)
    assert state_of(world, transfer_id) == "available"


@pytest.mark.threat("T2")
def test_a_party_whose_key_was_never_enrolled(world, cli, batch: Path) -> None:
    world.add("lab-rogue", Role.LAB, enroll=False)
    refused(
        cli("send", batch, "--as", world.party_dir("lab-rogue"), "--server", world.url, "--to", "cnam"),
        "request signature refused",
    )
    assert world.stored() == []


@pytest.mark.threat("T3")
def test_a_directory_entry_not_signed_by_the_pinned_authority(world, cli, batch: Path) -> None:
    """A compromised relay swaps cnam's entry for one with its own age key: the lab refuses before sealing."""
    rogue_authority, attacker = SigningKey.generate(), AgeIdentity.generate()
    cnam = world.parties["cnam"]
    now = datetime.now(UTC)
    entry = PartyEntry(
        name="cnam",
        role=Role.RECIPIENT,
        region=None,
        age_recipient=attacker.recipient,
        signing_key=cnam.signing_public,
        not_before=now - timedelta(minutes=1),
        not_after=now + timedelta(days=30),
        issued_at=now,
        serial=new_id(),
    )
    forged = sign_envelope(entry.to_payload(), rogue_authority, AUTHORITY_KEYID)
    world.db("UPDATE parties SET envelope = :e WHERE name = 'cnam'", e=json.dumps(forged))
    lab = world.party_dir("lab-paris-01")
    refused(cli("send", batch, "--as", lab, "--server", world.url, "--to", "cnam"), "the pinned authority did not sign")
    assert world.db("SELECT count(*) FROM transfers")[0][0] == 0
    assert world.stored() == []
    assert not list((lab / "outbox").glob("*"))  # nothing was even encrypted
    refused(cli("directory", "--as", lab, "--server", world.url), "did not sign")

    # And the relay itself refuses to register an entry its pinned authority did not sign.
    with (
        RelayClient(world.url, "cnam", cnam.signing_key, SystemClock(), retries=0) as client,
        pytest.raises(Exception, match="party-entry refused"),
    ):
        client.register_entry(forged)


@pytest.mark.threat("T8")
def test_a_replayed_request(
    world, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], batch: Path, cli
) -> None:
    send_one(world, cli, batch)
    # The CLI's second request reuses its first request's nonce, as a replaying attacker would.
    monkeypatch.setattr(httpsig, "new_nonce", lambda: "replayed-nonce-0123456789abcdef")
    out = world.root / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["--quiet", "fetch", "--as", str(world.party_dir("cnam")), "--server", world.url, "--out", str(out)])
    assert exit_info.value.code == 3
    assert "replayed request" in capsys.readouterr().err
    assert not list(out.glob("*.csv"))


@pytest.mark.scaled("a request replayed to the other replica is refused (nonces shared in PostgreSQL)")
@pytest.mark.threat("T8")
def test_a_replayed_request_on_the_wire(world, cli, batch: Path) -> None:
    """The exact bytes of a signed receipt, sent twice: the second is refused and changes nothing."""
    transfer_id = send_one(world, cli, batch, to="ars-11")
    cnam_headers: dict[str, str] = {"Content-Type": "application/json"}
    url = f"{world.url}/v1/transfers?box=inbox"
    httpsig.sign_request(
        "GET",
        url,
        cnam_headers,
        None,
        keyid="ars-11",
        key=world.parties["ars-11"].signing_key,
        now=datetime.now(UTC),
        extra_components=("content-type",),
    )
    first = httpx.get(url, headers=cnam_headers)
    assert first.status_code == 200
    assert [t["transfer_id"] for t in first.json()["transfers"]] == [transfer_id]
    second = httpx.get(url, headers=cnam_headers)
    assert second.status_code == 401
    assert second.json()["code"] == "replay"
    events = [r[0] for r in world.db("SELECT event FROM audit_events ORDER BY seq")]
    assert "auth:replay" in events


@pytest.mark.scaled("a revocation registered through one replica holds on the other")
@pytest.mark.threat("T4")
def test_a_request_signed_by_a_revoked_party(world, cli, batch: Path) -> None:
    lab, cnam = world.party_dir("lab-paris-01"), world.party_dir("cnam")
    transfer_id = send_one(world, cli, batch)
    result = cli(
        "authority", "revoke", "cnam", "--authority", world.auth_dir, "--server", world.url, "--reason", "laptop stolen"
    )
    assert result.code == 0, str(result)
    out = world.root / "out"
    refused(cli("fetch", "--as", cnam, "--server", world.url, "--out", out), "revoked")
    nothing_written(out)
    assert state_of(world, transfer_id) == "available"
    # A lab no longer sends to a revoked recipient (its own directory check, before sealing).
    refused(cli("send", batch, "--as", lab, "--server", world.url, "--to", "cnam", "--again"), "revoked")

    assert cli("authority", "revoke", "lab-paris-01", "--authority", world.auth_dir, "--server", world.url).code == 0
    refused(cli("send", batch, "--as", lab, "--server", world.url, "--to", "ars-11", "--again"), "revoked")
    assert world.db("SELECT count(*) FROM transfers")[0][0] == 1


def test_only_the_authority_can_revoke(world) -> None:
    auth_key = world.authority.key
    envelope = world.authority.sign_revocation("cnam", "test", datetime.now(UTC))
    with world.client("lab-paris-01") as client, pytest.raises(PermissionDenied, match="only the directory authority"):
        client.register_revocation(envelope)
    with (
        RelayClient(world.url, AUTHORITY_KEYID, SigningKey.generate(), SystemClock(), retries=0) as client,
        pytest.raises(AuthenticationFailed),
    ):
        client.register_revocation(envelope)
    with world.client("cnam") as cnam:  # neither attempt revoked anyone
        assert cnam.transfers("inbox") == []
    with RelayClient(world.url, AUTHORITY_KEYID, auth_key, SystemClock(), retries=0) as client:
        client.register_revocation(envelope)
    with world.client("cnam") as cnam, pytest.raises(PartyRevoked, match="cnam is revoked"):
        cnam.transfers("inbox")


@pytest.mark.threat("T9")
def test_a_key_file_others_can_read(world, cli, batch: Path) -> None:
    key = world.party_dir("lab-paris-01") / "signing.key"
    key.chmod(0o644)
    refused(
        cli("send", batch, "--as", world.party_dir("lab-paris-01"), "--server", world.url, "--to", "cnam"), "chmod 600"
    )
    ident = world.party_dir("cnam") / "identity.txt"
    ident.chmod(0o640)
    refused(cli("fetch", "--as", world.party_dir("cnam"), "--server", world.url, "--out", world.root / "o"), "too open")
    (world.auth_dir / "authority.key").chmod(0o604)
    refused(cli("authority", "revoke", "cnam", "--authority", world.auth_dir, "--server", world.url), "too open")


def test_replay_detected_error_is_a_security_error() -> None:
    assert issubclass(ReplayDetected, AuthenticationFailed)
