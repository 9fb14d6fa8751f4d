"""A recipient's signed refusal, unparsed documents under the policy in force, and the relay's limits, against a
real relay (the embedded default, and the scaled deployment: PostgreSQL, S3, two replicas and a worker).

A payload its recipient's client refuses is never offered again, its sender's ``labrelay receipts`` shows the
verified refusal, and an operator is alerted; a refusal anyone else signs, or that does not match the manifest,
changes nothing; a relay that writes one itself is caught by the sender.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from labrelay.client.keystore import Party
from labrelay.crypto import age_stream
from labrelay.crypto.envelopes import sign_envelope
from labrelay.crypto.httpsig import sign_request
from labrelay.crypto.keys import SigningKey
from labrelay.domain.names import new_id
from labrelay.domain.transfers import Manifest, TransferRefusal
from labrelay.errors import IntegrityError, NotFound, PermissionDenied
from tests.support.alerting import Received, webhook
from tests.support.world import Scaled, World, make_world

MAX_TTL = timedelta(days=3)
DETAIL = "the payload's SHA-256 does not match the signed manifest of lab-paris-01"


@pytest.fixture
def hooked(tmp_path: Path, relay_factory, deployment: Scaled | None) -> Iterator[tuple[World, Received]]:
    """The usual world (a lab, cnam, ars-11, the shipped policy), its relay's alerts at a webhook and its longest
    time to live set to three days; on each deployment."""
    with webhook() as (hook, posts):
        settings = {"alert_webhook": f'"{hook}"', "max_ttl": '"3d"'}
        yield make_world(tmp_path / "world", relay_factory, settings=settings, scaled=deployment), posts


def send_letter(world: World) -> str:
    """A document sent unparsed to cnam, sealed and uploaded as a lab's client does (age, a signed manifest, tus)."""
    lab, cnam = world.parties["lab-paris-01"], world.parties["cnam"]
    sealed = io.BytesIO()
    size, sha = age_stream.encrypt(io.BytesIO(b"synthetic letter, no health data\n" * 20), sealed, [cnam.age_recipient])
    now = datetime.now(UTC).replace(microsecond=0)
    manifest = Manifest(
        transfer_id=new_id(),
        batch_id=new_id(),
        sender=lab.name,
        recipient=cnam.name,
        recipient_key=cnam.age_recipient,
        size=size,
        sha256=sha,
        record_count=None,
        media_type="text/plain",
        created=now,
        deadline=now + timedelta(days=1),
    )
    with world.client(lab.name) as client:
        client.create_transfer(lab.sign(manifest.to_payload()))
        client.upload(manifest.transfer_id, io.BytesIO(sealed.getvalue()), size, 1 << 20)
        assert client.transfer(manifest.transfer_id)["state"] == "available"
    return manifest.transfer_id


def refusal(signer: Party, manifest: dict, *, key: SigningKey | None = None, **over: object) -> dict:
    fields: dict[str, object] = {
        "transfer_id": manifest["transfer_id"],
        "sender": manifest["sender"],
        "recipient": manifest["recipient"],
        "sha256": manifest["sha256"],
        "size": manifest["size"],
        "reason": "integrity",
        "detail": DETAIL,
        "refused_at": datetime.now(UTC).replace(microsecond=0),
    }
    fields.update(over)
    payload = TransferRefusal(**fields).to_payload()  # type: ignore[arg-type]
    return sign_envelope(payload, key or signer.signing_key, signer.name)


def held(world: World, transfer_id: str) -> tuple[str, bool, bool]:
    """(state, quarantined, refusal kept) as the relay's database has them."""
    state, quarantined, kept = world.db(
        "SELECT state, quarantined_at, refusal_envelope FROM transfers WHERE id = :id", id=transfer_id
    )[0]
    return state, quarantined is not None, kept is not None


def inbox(world: World, name: str) -> list[str]:
    with world.client(name) as client:
        return [t["transfer_id"] for t in client.transfers("inbox")]


@pytest.mark.scaled("a refusal quarantines the S3 payload; the worker never serves it again")
@pytest.mark.threat("T24")
def test_a_refused_payload_is_never_offered_again_and_its_sender_sees_why(hooked, cli) -> None:
    world, alerts = hooked
    transfer_id = send_letter(world)
    kept = send_letter(world)
    cnam = world.parties["cnam"]
    with world.client("cnam") as client:
        listing = client.transfer(transfer_id)
        assert b"".join(client.download(transfer_id))  # downloaded; say its client's checks refuse it
        signed = refusal(cnam, listing["manifest"]["payload"])
        answer = client.send_refusal(transfer_id, signed)
        assert answer["refusal"] == signed
        assert client.send_refusal(transfer_id, signed)["refusal"] == signed  # a retry, answered the same
        with pytest.raises(NotFound):
            b"".join(client.download(transfer_id))
    assert held(world, transfer_id) == ("available", True, True)
    assert inbox(world, "cnam") == [kept]

    # The sender sees the refusal, verified against cnam's directory entry.
    receipts = cli("receipts", "--as", world.party_dir("lab-paris-01"), "--server", world.url)
    assert receipts.code == 0, str(receipts)
    [line] = [row for row in receipts.out.splitlines() if row.startswith(transfer_id)]
    assert f"refused by cnam at {signed['payload']['refused_at']}: integrity ({DETAIL})" in line
    with world.client("lab-paris-01") as client:
        assert client.transfer(transfer_id)["refusal"] == signed

    # An operator hears of it at once, with the reason code and never the detail.
    found = alerts.wait_for(lambda a: a["rule"] == "refused-payload", timeout=15)
    assert found is not None, "no alert for a refused payload"
    alert = found[1]
    assert alert["subject"] == "lab-paris-01"
    assert transfer_id in alert["summary"]
    assert "integrity" in alert["summary"]
    assert "SHA-256" not in json.dumps(alert)
    audited = world.db(
        "SELECT actor, reason, details FROM audit_events WHERE event = 'refusal:accept' AND transfer_id = :id",
        id=transfer_id,
    )
    assert len(audited) == 1
    assert audited[0][:2] == ("cnam", "integrity")
    assert "SHA-256" not in audited[0][2]


@pytest.mark.threat("T24")
def test_a_refusal_not_signed_by_the_recipient_or_not_matching_changes_nothing(hooked, cli) -> None:
    world, _ = hooked
    transfer_id = send_letter(world)
    cnam, ars, lab = (world.parties[n] for n in ("cnam", "ars-11", "lab-paris-01"))
    with world.client("cnam") as client:
        manifest = client.transfer(transfer_id)["manifest"]["payload"]
    attempts: list[tuple[str, dict, type[Exception]]] = [
        ("cnam", sign_envelope(refusal(cnam, manifest)["payload"], ars.signing_key, "ars-11"), IntegrityError),
        ("cnam", sign_envelope(refusal(cnam, manifest)["payload"], lab.signing_key, lab.name), IntegrityError),
        ("cnam", refusal(cnam, manifest, key=SigningKey.generate()), IntegrityError),
        ("ars-11", sign_envelope(refusal(cnam, manifest)["payload"], ars.signing_key, "ars-11"), NotFound),
        ("lab-paris-01", sign_envelope(refusal(cnam, manifest)["payload"], lab.signing_key, lab.name), NotFound),
        ("cnam", refusal(cnam, manifest, sha256="0" * 64), IntegrityError),
        ("cnam", refusal(cnam, manifest, size=manifest["size"] + 1), IntegrityError),
    ]
    for caller, signed, error in attempts:
        with world.client(caller) as client, pytest.raises(error):
            client.send_refusal(transfer_id, signed)
    assert held(world, transfer_id) == ("available", False, False)
    assert inbox(world, "cnam") == [transfer_id]
    refused = world.db("SELECT count(*) FROM audit_events WHERE event = 'refusal:refuse'")[0][0]
    assert refused == len(attempts)

    # A relay that writes a refusal itself (its operator, A2) cannot make the sender believe it: the sender
    # verifies every refusal against its recipient's directory entry.
    forged = refusal(cnam, manifest, key=SigningKey.generate())
    world.db("UPDATE transfers SET refusal_envelope = :r WHERE id = :id", r=json.dumps(forged), id=transfer_id)
    receipts = cli("receipts", "--as", world.party_dir("lab-paris-01"), "--server", world.url)
    assert receipts.code == 3, str(receipts)
    assert f"{transfer_id}: " in receipts.err
    assert "refused by" not in receipts.out


def post_manifest(world: World, envelope: dict) -> httpx.Response:
    """POST /v1/transfers as the lab would, signed, without the client's own checks."""
    url = world.url + "/v1/transfers"
    body = json.dumps(envelope).encode()
    headers = {"Content-Type": "application/json"}
    sign_request(
        "POST",
        url,
        headers,
        body,
        keyid="lab-paris-01",
        key=world.parties["lab-paris-01"].signing_key,
        now=datetime.now(UTC),
        extra_components=("content-type",),
    )
    return httpx.post(url, content=body, headers=headers, timeout=30)


@pytest.mark.threat("T25")
def test_an_unparsed_manifest_to_a_minimised_recipient_is_refused(hooked) -> None:
    world, _ = hooked
    lab = world.parties["lab-paris-01"]
    now = datetime.now(UTC).replace(microsecond=0)

    def unparsed_to(name: str) -> dict:
        manifest = Manifest(
            transfer_id=new_id(),
            batch_id=new_id(),
            sender=lab.name,
            recipient=name,
            recipient_key=world.parties[name].age_recipient,
            size=4096,
            sha256="a" * 64,
            record_count=None,
            media_type="application/pdf",
            created=now,
            deadline=now + timedelta(days=1),
        )
        assert manifest.unparsed
        return lab.sign(manifest.to_payload())

    to_ars = unparsed_to("ars-11")
    refused = post_manifest(world, to_ars)
    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == "permission-denied"
    assert "ars-11" in refused.json()["detail"]
    with world.client("lab-paris-01") as client, pytest.raises(PermissionDenied):
        client.create_transfer(unparsed_to("ars-11"))
    assert world.db("SELECT count(*) FROM transfers")[0][0] == 0
    audited = world.db("SELECT reason FROM audit_events WHERE event = 'transfer:refuse' AND actor = 'lab-paris-01'")
    assert [r[0] for r in audited] == ["permission-denied", "permission-denied"]

    accepted = post_manifest(world, unparsed_to("cnam"))
    assert accepted.status_code == 201, accepted.text
    assert world.db("SELECT recipient FROM transfers") == [("cnam",)]


def test_the_limits_are_the_relays_configured_terms(hooked) -> None:
    world, _ = hooked
    with world.client("lab-paris-01") as client:
        limits = client.limits()
    assert limits == {
        "max_ttl_seconds": int(MAX_TTL.total_seconds()),
        "max_payload_bytes": 4 * 1024**3,
        "clock_skew_seconds": 30,
    }
    with world.client("cnam") as client:  # any enrolled party
        assert client.limits() == limits
    unsigned = httpx.get(world.url + "/v1/limits", timeout=30)
    assert unsigned.status_code == 401
