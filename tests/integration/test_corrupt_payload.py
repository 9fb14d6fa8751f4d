"""A payload altered in the relay's storage (T39), against a real relay: the embedded default, and the scaled
deployment (PostgreSQL, S3, two replicas behind a balancer and a worker).

One flipped byte in a stored payload: the relay catches it with its at-rest check, serves it at most once (cut where
the bad record begins, or refused before the first byte), holds the transfer in its database at that first failure
(every replica agrees), alerts an operator, and answers the recipient's retry with ``payload-corrupt``; the
recipient's fetch reports an integrity refusal naming the transfer (exit 3) and still fetches the rest of its inbox;
the sender's ``labrelay receipts`` shows the transfer as not deliverable, so that it sends it again.

And a manifest declaring less than any age file (T40), which the relay refuses at creation, is refused by a recipient
a relay offers it to anyway.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from labrelay.crypto.envelopes import sign_envelope
from labrelay.domain.transfers import MIN_PAYLOAD_BYTES
from tests.support.alerting import Received, webhook
from tests.support.world import Scaled, World, make_world, sent_ids


@pytest.fixture
def hooked(tmp_path: Path, relay_factory, deployment: Scaled | None) -> Iterator[tuple[World, Received]]:
    """The usual world, its relay's alerts at a webhook; on each deployment."""
    with webhook() as (hook, posts):
        settings = {"alert_webhook": f'"{hook}"'}
        yield make_world(tmp_path / "world", relay_factory, settings=settings, scaled=deployment), posts


def count(world: World, event: str, transfer_id: str) -> int:
    query = "SELECT count(*) FROM audit_events WHERE event = :e AND transfer_id = :id"
    return int(world.db(query, e=event, id=transfer_id)[0][0])


def send(world: World, cli, source: Path, *extra: str) -> str:
    result = cli("send", source, "--as", world.party_dir("lab-paris-01"), "--server", world.url, "--to", "cnam", *extra)
    assert result.code == 0, str(result)
    return sent_ids(result.out)["cnam"]


@pytest.mark.scaled("the hold is in PostgreSQL: whichever replica the retry reaches refuses it; the worker alerts")
@pytest.mark.threat("T39")
def test_a_payload_altered_in_storage_is_held_at_the_first_failure_and_blocks_nothing_else(
    hooked, cli, batch: Path, tmp_path: Path
) -> None:
    world, alerts = hooked
    letter = tmp_path / "letter.txt"  # synthetic filler, several at-rest records long
    letter.write_text(base64.encodebytes(os.urandom(300_000)).decode("ascii"))
    corrupt = send(world, cli, letter, "--as-is")
    good = send(world, cli, batch)
    world.flip_stored_byte(corrupt)

    out = tmp_path / "out"
    cnam = world.party_dir("cnam")
    fetched = cli("fetch", "--as", cnam, "--server", world.url, "--out", out)
    assert fetched.code == 3, str(fetched)
    assert "Traceback" not in fetched.err
    [line] = [row for row in fetched.err.splitlines() if corrupt in row]
    assert line.startswith("labrelay: refused: "), line
    assert "integrity check" in line
    assert "download interrupted" not in fetched.err
    # The rest of the inbox came in the same run: decrypted, written, acknowledged.
    assert world.db("SELECT state FROM transfers WHERE id = :id", id=good) == [("delivered",)]
    assert len(list(out.glob("*.csv"))) == 1
    assert not [p for p in out.rglob("*") if p.is_file() and corrupt in p.name]  # not even a partial ciphertext

    # Served at most once (cut where the bad record begins, or refused before its first byte), caught once, held.
    served = count(world, "download:serve", corrupt)
    assert served <= 1
    assert count(world, "payload:corrupt", corrupt) == 1
    assert count(world, "download:refuse", corrupt) == served  # a cut's one retry, answered payload-corrupt
    held = world.db("SELECT state, quarantined_at, quarantine_reason FROM transfers WHERE id = :id", id=corrupt)
    assert [(state, reason) for state, _, reason in held] == [("available", "corrupt")]
    assert held[0][1] is not None

    # An operator is alerted: someone altered the relay's storage.
    found = alerts.wait_for(lambda a: a["rule"] == "corrupt-payload", timeout=15)
    assert found is not None, "no alert for a corrupt stored payload"
    assert found[1]["subject"] == "relay-storage"
    assert corrupt in found[1]["summary"]

    # Both parties read the hold and its reason; the recipient's next fetch has nothing more to do.
    for name in ("cnam", "lab-paris-01"):
        with world.client(name) as client:
            assert client.transfer(corrupt)["quarantine"]["reason"] == "corrupt"
    again = cli("fetch", "--as", cnam, "--server", world.url, "--out", out)
    assert again.code == 0, str(again)
    assert count(world, "payload:corrupt", corrupt) == 1

    # The sender sees that it cannot be delivered, and why.
    receipts = cli("receipts", "--as", world.party_dir("lab-paris-01"), "--server", world.url)
    assert receipts.code == 0, str(receipts)
    [row] = [row for row in receipts.out.splitlines() if row.startswith(corrupt)]
    assert "NOT DELIVERABLE" in row
    assert "integrity check" in row
    assert "send it again" in row


@pytest.mark.threat("T40")
def test_a_recipient_refuses_a_manifest_smaller_than_any_age_file(world: World, cli, batch: Path) -> None:
    """A relay that serves a manifest its own check would have refused (A2 rewrites one, signed by a key it stole)
    gets it refused by the recipient before any byte is downloaded."""
    transfer_id = send(world, cli, batch)
    envelope = json.loads(world.db("SELECT manifest FROM transfers WHERE id = :id", id=transfer_id)[0][0])
    lab = world.parties["lab-paris-01"]
    small = sign_envelope({**envelope["payload"], "size": MIN_PAYLOAD_BYTES - 1}, lab.signing_key, lab.name)
    world.db("UPDATE transfers SET manifest = :m WHERE id = :id", m=json.dumps(small), id=transfer_id)
    out = world.root / "out"
    result = cli("fetch", "--as", world.party_dir("cnam"), "--server", world.url, "--out", out)
    assert result.code == 3, str(result)
    assert f"transfer {transfer_id} declares {MIN_PAYLOAD_BYTES - 1} bytes, less than any age file" in result.err
    assert count(world, "download:serve", transfer_id) == 0
    written = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert written == []
