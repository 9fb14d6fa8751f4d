"""Retention with a real relay process: short deadlines, the reaper, a SIGKILL in the middle of its pass, the
retention check on a stopped relay, and recipient key rotation."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from labrelay.client.keystore import Party
from labrelay.client.rotation import rotate
from labrelay.client.send import seal, upload
from labrelay.client.trust import TrustedDirectory
from labrelay.clock import SystemClock
from labrelay.crypto import age_stream
from labrelay.crypto.keys import AgeIdentity
from labrelay.domain.parties import PartyEntry, Role, short_key
from labrelay.errors import IntegrityError, NotFound
from labrelay.operations import audit_summary
from tests.support.world import RelayServer, World, make_world, sent_ids

FAST_REAPER = {"reaper_interval": '"1s"'}


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def states(world: World) -> dict[str, str]:
    with sqlite3.connect(world.relay.data / "relay.db") as conn:
        return dict(conn.execute("SELECT id, state FROM transfers").fetchall())


def events(world: World, event: str) -> list[tuple[str | None, dict]]:
    with sqlite3.connect(world.relay.data / "relay.db") as conn:
        rows = conn.execute("SELECT transfer_id, details FROM audit_events WHERE event = ? ORDER BY seq", (event,))
        return [(tid, json.loads(details)) for tid, details in rows]


@pytest.mark.threat("T5")
def test_a_payload_past_its_deadline_cannot_be_fetched_and_nothing_of_it_remains(
    tmp_path: Path, relay_factory, cli, batch: Path
) -> None:
    world = make_world(tmp_path / "w", relay_factory, settings=FAST_REAPER)
    lab, cnam = world.party_dir("lab-paris-01"), world.party_dir("cnam")
    sent = cli("send", batch, "--as-is", "--to", "cnam", "--ttl", "3s", "--as", lab, "--server", world.url)
    assert sent.code == 0, str(sent)
    transfer_id = sent_ids(sent.out)["cnam"]
    time.sleep(5)

    out = tmp_path / "inbox"
    fetched = cli("fetch", "--as", cnam, "--server", world.url, "--out", out)
    assert fetched.code == 0, str(fetched)
    assert "nothing waiting" in fetched.out
    assert not out.exists() or not any(out.iterdir())
    with world.client("cnam") as client, pytest.raises(NotFound):
        b"".join(client.download(transfer_id))

    wait_for(lambda: not any(world.payload_dir.iterdir()), 10, "the reaper to delete the payload")
    assert states(world)[transfer_id] == "expired"
    assert (transfer_id, {"cause": "expired", "verified": True}) in events(world, "payload:delete")
    world.relay.stop()
    checked = cli("admin", "retention-check", "--data", world.relay.data)
    assert checked.code == 0, str(checked)
    assert "FAIL" not in checked.out

    # Planted bytes of that expired transfer, or of no transfer at all: the check fails and says why.
    planted = world.payload_dir / f"{transfer_id}.payload"
    planted.write_bytes(os.urandom(4096))
    checked = cli("admin", "retention-check", "--data", world.relay.data, "--json")
    assert checked.code == 3, str(checked)
    report = json.loads(checked.out)
    assert not report["ok"]
    assert [c["check"] for c in report["checks"] if not c["ok"]] == ["payloads of closed transfers"]
    planted.unlink()
    (world.payload_dir / "4b0c6f3e-8f5e-4d8e-9c59-2f8d8e0a1b2c.payload").write_bytes(b"x")
    checked = cli("admin", "retention-check", "--data", world.relay.data)
    assert checked.code == 3
    assert "FAIL orphaned payloads" in checked.out
    assert "retention check failed" in checked.err


@pytest.mark.threat("T16")
def test_killing_the_relay_in_the_middle_of_a_reaper_pass_leaves_nothing_behind(
    tmp_path: Path, relay_factory, cli
) -> None:
    """A hundred and fifty transfers past their deadline at once, a relay that starts and reaps them, SIGKILL in the
    middle of that pass; the next start leaves nothing past its deadline and no open transfer behind."""
    world = make_world(tmp_path / "w", relay_factory, settings={"reaper_interval": '"1h"'})
    lab = world.parties["lab-paris-01"]
    small = tmp_path / "small.csv"
    small.write_bytes(b"nir,nom\n" + os.urandom(300))
    count = 150
    with world.client("lab-paris-01") as client:
        directory = TrustedDirectory(lab.authority, client.directory(), SystemClock().now())
        entry = directory.require("cnam", {Role.RECIPIENT})
        for _ in range(count):
            [state] = seal(lab, small, [entry], timedelta(seconds=3), SystemClock())
            upload(lab, client, state)
    assert len(os.listdir(world.payload_dir)) == count
    world.relay.stop()
    time.sleep(3.5)  # every deadline has passed; no relay is running to reap

    env = {k: v for k, v in os.environ.items() if k != "LABRELAY_DEBUG"}
    ready = tmp_path / "ready.json"
    with (tmp_path / "killed.log").open("wb") as log:
        relay = subprocess.Popen(
            [sys.executable, "-m", "labrelay", "serve", "--data", str(world.relay.data), "--port", "0",
             "--ready-file", str(ready)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
        try:
            seen = count
            deadline = time.monotonic() + 60
            while seen == count and time.monotonic() < deadline:  # the start-up pass has begun once one is gone
                time.sleep(0.002)  # a pass over 150 payloads takes far longer; the relay keeps the cores
                seen = len(os.listdir(world.payload_dir))
            os.kill(relay.pid, signal.SIGKILL)
        finally:
            relay.wait(timeout=10)
    left = len(os.listdir(world.payload_dir))
    assert not ready.exists(), "the relay served before its start-up reaper pass ended"
    assert 0 < left < count, f"the kill did not land mid-pass ({left} of {count} payloads left)"

    restarted = RelayServer(world.relay.data)
    restarted.start()  # the relay reaps before it serves its first request
    restarted.stop()
    assert not any(world.payload_dir.iterdir())
    assert set(states(world).values()) == {"expired"}
    checked = cli("admin", "retention-check", "--data", world.relay.data)
    assert checked.code == 0, str(checked)
    summary = audit_summary(world.relay.data)
    assert summary["chain_ok"], summary
    # Every expiry is on record (the decision is written before the act); every deletion too, except at most
    # the one the kill interrupted between the unlink and its record, whose absence the check above proves.
    assert {tid for tid, _ in events(world, "transfer:expire")} == set(states(world))
    deleted = {tid for tid, d in events(world, "payload:delete") if d.get("verified")}
    assert len(set(states(world)) - deleted) <= 1


def age_decrypts(identity: Path, payload: Path) -> bool:
    """Whether the identity file opens the payload (hybrid keys: Debian's age 1.1.1 cannot read them; the age format
    itself is checked against the reference implementations in tests/integration/test_age_interop.py)."""
    try:
        with payload.open("rb") as src:
            age_stream.decrypt(src, io.BytesIO(), AgeIdentity.load_all(identity), expect=None)
    except IntegrityError:
        return False
    return True


def test_a_rotation_in_the_same_second_as_the_entry_it_replaces_is_in_force_at_once(world: World) -> None:
    """Entries carry whole seconds and the latest-issued valid one is in force: two rotations within one second
    (here, at the very same instant) must still leave the newest key the one senders seal to."""
    cnam = world.parties["cnam"]
    now = datetime.now(UTC)
    with world.client("cnam") as client:
        first = rotate(cnam, world.authority, client, now, timedelta(days=30))
        second = rotate(Party.load(cnam.path), world.authority, client, now, timedelta(days=30))
        directory = TrustedDirectory(cnam.authority, client.directory(), datetime.now(UTC))
    assert first.new_recipient != second.new_recipient
    assert directory.require("cnam", {Role.RECIPIENT}).age_recipient == second.new_recipient


@pytest.mark.threat("T17")
def test_a_rotated_key_is_kept_until_its_last_payload_expires_then_destroyed(world: World, cli, tmp_path: Path) -> None:
    lab, cnam = world.party_dir("lab-paris-01"), world.party_dir("cnam")
    old_recipient = world.parties["cnam"].age_recipient
    first = tmp_path / "first.txt"
    first.write_text("sealed to the old key\n")
    sent = cli("send", first, "--as-is", "--to", "cnam", "--ttl", "6s", "--as", lab, "--server", world.url)
    assert sent.code == 0, str(sent)
    sent_at = time.monotonic()
    old_id = sent_ids(sent.out)["cnam"]

    rotated = cli("party", "rotate", cnam, "--authority", world.auth_dir, "--server", world.url)
    assert rotated.code == 0, str(rotated)
    assert f"retired {short_key(old_recipient)}" in rotated.out
    new_recipient = json.loads((cnam / "party.json").read_text())["age_recipient"]
    assert new_recipient != old_recipient
    assert len(AgeIdentity.load_all(cnam / "identity.txt")) == 2

    second = tmp_path / "second.txt"
    second.write_text("sealed to the new key\n")
    sent = cli("send", second, "--as-is", "--to", "cnam", "--as", lab, "--server", world.url)
    assert sent.code == 0, str(sent)
    new_id = sent_ids(sent.out)["cnam"]
    with world.client("cnam") as client:
        assert client.transfer(new_id)["manifest"]["payload"]["recipient_key"] == new_recipient

    # A sender holding the old entry cannot seal to the old key any more: the relay refuses it.
    with world.client("lab-paris-01") as client:
        directory = TrustedDirectory(world.parties["lab-paris-01"].authority, client.directory(), SystemClock().now())
        current = directory.require("cnam", {Role.RECIPIENT})
        stale = PartyEntry.from_payload({**current.to_payload(), "age_recipient": old_recipient})
        [state] = seal(world.parties["lab-paris-01"], first, [stale], timedelta(hours=1), SystemClock())
        with pytest.raises(IntegrityError, match="not cnam's key"):
            upload(world.parties["lab-paris-01"], client, state)

    out = tmp_path / "raw"
    fetched = cli("fetch", "--as", cnam, "--server", world.url, "--out", out, "--raw", "--json")
    assert fetched.code == 0, str(fetched)
    files = {f["transfer_id"]: Path(f["file"]) for f in json.loads(fetched.out)["fetched"]}
    old_copy, new_copy = files[old_id], files[new_id]
    assert age_decrypts(cnam / "identity.txt", old_copy)
    assert age_decrypts(cnam / "identity.txt", new_copy)

    kept = cli("party", "retire", cnam, "--server", world.url)
    assert kept.code == 0, str(kept)
    assert f"kept {short_key(old_recipient)}" in kept.out  # its payload is still open on the relay
    assert len(AgeIdentity.load_all(cnam / "identity.txt")) == 2

    time.sleep(max(0.0, 6.5 - (time.monotonic() - sent_at)))
    retired = cli("party", "retire", cnam, "--server", world.url)
    assert retired.code == 0, str(retired)
    assert f"destroyed retired identity {short_key(old_recipient)}" in retired.out
    assert [i.recipient for i in AgeIdentity.load_all(cnam / "identity.txt")] == [new_recipient]
    assert not age_decrypts(cnam / "identity.txt", old_copy)  # a later theft of the machine opens nothing old
    assert age_decrypts(cnam / "identity.txt", new_copy)
    assert not list(cnam.glob(".identity.txt*"))  # no copy of the old identity left beside it
