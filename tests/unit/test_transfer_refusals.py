"""A recipient's signed refusal of a payload, and unparsed documents under the policy in force: the domain object,
and the relay's service on real storage (SQLite, a payload directory) with a manual clock.

Every check is tried with an input that must be refused, and each refusal must leave the transfer as it was.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from labrelay.clock import ManualClock
from labrelay.config import RelaySettings
from labrelay.crypto.envelopes import sign_envelope
from labrelay.crypto.keys import SigningKey
from labrelay.domain.audit import AuditEvent, Outcome
from labrelay.domain.names import AUTHORITY_KEYID, new_id
from labrelay.domain.parties import Role
from labrelay.domain.policy import policy_payload
from labrelay.domain.transfers import (
    MAX_REFUSAL_DETAIL,
    Manifest,
    TransferRefusal,
    TransferState,
    refusal_detail,
)
from labrelay.errors import Conflict, IntegrityError, NotFound, PermissionDenied, UsageError
from labrelay.http.models import TransferOut
from labrelay.operations import init_data_dir
from labrelay.relay.detector import REFUSED_PAYLOAD
from labrelay.runtime import open_relay
from tests.support.relay_setup import T0, Member, Setup, read_all

POLICY = "fr-covid-2026.3"


def refusal_of(setup: Setup, signer: Member, envelope: dict, *, reason: str = "integrity", **over: object) -> dict:
    """``signer``'s signed refusal of the transfer ``envelope`` describes (fields overridden by ``over``)."""
    payload = envelope["payload"]
    fields: dict[str, object] = {
        "transfer_id": payload["transfer_id"],
        "sender": payload["sender"],
        "recipient": payload["recipient"],
        "sha256": payload["sha256"],
        "size": payload["size"],
        "reason": reason,
        "detail": f"payload of {payload['transfer_id']} does not match its signed manifest",
        "refused_at": setup.clock.now(),
    }
    fields.update(over)
    return sign_envelope(TransferRefusal(**fields).to_payload(), signer.signing, signer.name)  # type: ignore[arg-type]


def events(setup: Setup, event: AuditEvent) -> list:
    return [r.entry for r in setup.relay.sql.audit.links() if r.entry.event is event]


def sent(setup: Setup, lab: Member, to: Member, plain: bytes = b"x" * 3000, **over: object) -> tuple[dict, str]:
    envelope, data = setup.seal(lab, to, plain, **over)
    assert setup.upload(lab, envelope, data) is TransferState.AVAILABLE
    return envelope, envelope["payload"]["transfer_id"]


# ------------------------------------------------------------------ the signed object


def a_refusal(**over: object) -> TransferRefusal:
    fields: dict[str, object] = {
        "transfer_id": new_id(),
        "sender": "lab-a",
        "recipient": "cnam",
        "sha256": "a" * 64,
        "size": 10,
        "reason": "integrity",
        "detail": "payload does not match its signed manifest",
        "refused_at": T0,
    }
    fields.update(over)
    return TransferRefusal(**fields)  # type: ignore[arg-type]


def test_a_refusal_round_trips_and_matches_only_its_manifest() -> None:
    refusal = a_refusal()
    payload = refusal.to_payload()
    assert payload["type"] == "transfer-refusal"
    assert payload["v"] == 1
    assert payload["refused_at"] == "2026-11-28T09:00:00Z"
    assert TransferRefusal.from_payload(payload) == refusal
    manifest = Manifest(
        transfer_id=refusal.transfer_id,
        batch_id=new_id(),
        sender="lab-a",
        recipient="cnam",
        recipient_key="age1" + "q" * 58,
        size=10,
        sha256="a" * 64,
        record_count=None,
        media_type="text/csv",
        created=T0,
        deadline=T0 + timedelta(days=1),
    )
    refusal.check_against(manifest)  # its own manifest: no error
    for field, value in (
        ("transfer_id", new_id()),
        ("sender", "lab-b"),
        ("recipient", "ars-11"),
        ("sha256", "b" * 64),
        ("size", 11),
    ):
        with pytest.raises(IntegrityError, match=f"different {field}"):
            a_refusal(**{"transfer_id": refusal.transfer_id, field: value}).check_against(manifest)


@pytest.mark.threat("T24")
def test_a_malformed_refusal_is_refused() -> None:
    """A refusal carries a short code and one line of at most 300 characters, nothing else: it is shown to the
    sender's operator as it is, and must neither smuggle data nor rewrite a terminal."""
    good = a_refusal().to_payload()
    bad: list[dict] = [
        {**good, "type": "transfer-receipt"},
        {**good, "v": 2},
        {**good, "reason": "Integrity"},
        {**good, "reason": "integrity 1"},
        {**good, "reason": "x" * 41},
        {**good, "reason": ""},
        {**good, "detail": "x" * (MAX_REFUSAL_DETAIL + 1)},
        {**good, "detail": "two\nlines"},
        {**good, "detail": "escape \x1b[2J"},
        {**good, "detail": "bidi \u202e override"},
        {**good, "detail": "line\u2028separator"},
        {**good, "detail": None},
        {**good, "size": True},
        {**good, "size": -1},
        {**good, "sha256": "A" * 64},
        {**good, "refused_at": "yesterday"},
        {**good, "sender": "../etc"},
        {**good, "notes": "anything else at all"},
        {k: v for k, v in good.items() if k != "detail"},
    ]
    for payload in bad:
        with pytest.raises(IntegrityError):
            TransferRefusal.from_payload(payload)
    assert TransferRefusal.from_payload({**good, "detail": ""}).detail == ""
    assert TransferRefusal.from_payload({**good, "detail": "é" * MAX_REFUSAL_DETAIL}).detail == "é" * 300


def test_refusal_detail_makes_any_message_one_short_line() -> None:
    assert refusal_detail("bad hash\n in  file\x1b[31m\u202eX") == "bad hash in file [31m X"
    long = refusal_detail("y" * 1000)
    assert len(long) == MAX_REFUSAL_DETAIL
    assert long.endswith("…")
    a_refusal(detail=refusal_detail("any \x00 text\r\n" * 100))  # always acceptable


# ------------------------------------------------------------------ the relay


@pytest.mark.threat("T24")
def test_a_recipients_refusal_holds_the_transfer_and_tells_its_sender(setup: Setup) -> None:
    lab, cnam = setup.member("lab-a", Role.LAB), setup.member("cnam", Role.RECIPIENT)
    delivery = setup.relay.services.delivery
    recovery = setup.relay.services.recovery
    envelope, transfer_id = sent(setup, lab, cnam)
    _, other_id = sent(setup, lab, cnam)
    read_all(setup, cnam, transfer_id)  # downloaded; the client's checks refuse it
    refusal = refusal_of(setup, cnam, envelope, reason="integrity")

    transfer = delivery.refuse(cnam.caller, transfer_id, refusal)
    assert transfer.refusal_envelope == refusal
    assert transfer.quarantined_at == setup.clock.now()
    assert transfer.state is TransferState.AVAILABLE
    # Never offered again: not listed, not served, not acknowledged; other transfers are untouched.
    assert [r.transfer_id for r in delivery.inbox(cnam.caller)] == [other_id]
    with pytest.raises(NotFound):
        delivery.open_payload(cnam.caller, transfer_id)
    assert events(setup, AuditEvent.DOWNLOAD_REFUSE)[-1].reason == "refused"
    with pytest.raises(Conflict, match="refused by its recipient"):
        delivery.accept_receipt(cnam.caller, transfer_id, setup.receipt(cnam, envelope))
    # The sender reads it, verbatim as signed.
    [mine] = [r for r in delivery.outbox(lab.caller) if r.transfer_id == transfer_id]
    assert mine.refusal_envelope == refusal
    assert TransferOut.of(mine).refusal == refusal
    assert TransferOut.of(delivery.describe(lab.caller, transfer_id)).refusal == refusal
    # Audited with the reason code, never the detail; an operator is alerted.
    [accepted] = events(setup, AuditEvent.REFUSAL_ACCEPT)
    assert (accepted.actor, accepted.transfer_id, accepted.reason) == ("cnam", transfer_id, "integrity")
    assert accepted.details == {"sender": "lab-a"}
    [alert] = [a for a in setup.relay.detector.raised if a.rule == REFUSED_PAYLOAD]
    assert alert.subject == "lab-a"
    assert transfer_id in alert.summary
    assert "integrity" in alert.summary
    assert "manifest" not in alert.summary  # the detail stays out of alerts
    [raised] = [e for e in events(setup, AuditEvent.ALERT_RAISE) if e.reason == REFUSED_PAYLOAD]
    assert raised.transfer_id == transfer_id
    assert raised.details["recipient"] == "cnam"
    assert raised.details["code"] == "integrity"
    assert "manifest" not in str(raised.details)

    # A retried refusal (its answer was lost) changes nothing and alerts no one again; another one is refused.
    assert delivery.refuse(cnam.caller, transfer_id, refusal).refusal_envelope == refusal
    assert len(events(setup, AuditEvent.REFUSAL_ACCEPT)) == 1
    assert len([a for a in setup.relay.detector.raised if a.rule == REFUSED_PAYLOAD]) == 1
    with pytest.raises(Conflict, match="already refused"):
        delivery.refuse(cnam.caller, transfer_id, refusal_of(setup, cnam, envelope, reason="revoked"))
    # Quarantine never extends retention: deleted at its deadline.
    setup.clock.advance(timedelta(days=7))
    assert recovery.expire_due() == 2
    assert list(setup.relay.payloads.ids()) == []
    assert setup.relay.sql.transfers.get(transfer_id).refusal_envelope == refusal


@pytest.mark.threat("T24")
def test_a_refusal_that_is_not_the_recipients_own_changes_nothing(setup: Setup) -> None:
    """Refusals signed by another party, by the sender, or with a key that is not the recipient's, sent by
    someone other than the recipient, or not matching the manifest, are refused; the payload stays served."""
    lab, cnam = setup.member("lab-a", Role.LAB), setup.member("cnam", Role.RECIPIENT)
    ars = setup.member("ars-11", Role.RECIPIENT)
    delivery = setup.relay.services.delivery
    envelope, transfer_id = sent(setup, lab, cnam)
    good = refusal_of(setup, cnam, envelope)
    payload = good["payload"]
    attempts: list[tuple[Member, dict, type[Exception]]] = [
        # signed by another recipient, by the sender, by a key that is not cnam's registered key
        (cnam, sign_envelope(payload, ars.signing, ars.name), IntegrityError),
        (cnam, sign_envelope(payload, lab.signing, lab.name), IntegrityError),
        (cnam, sign_envelope(payload, SigningKey.generate(), cnam.name), IntegrityError),
        # cnam's signature, but naming another signer (the signature does not cover the name)
        (cnam, {**good, "signer": ars.name}, IntegrityError),
        # sent by another party, or by the sender, each signing it itself: not theirs to refuse
        (ars, sign_envelope(payload, ars.signing, ars.name), NotFound),
        (lab, sign_envelope(payload, lab.signing, lab.name), NotFound),
        # cnam's own, but for another ciphertext, sender, size or transfer
        (cnam, refusal_of(setup, cnam, envelope, sha256="0" * 64), IntegrityError),
        (cnam, refusal_of(setup, cnam, envelope, sender="lab-b"), IntegrityError),
        (cnam, refusal_of(setup, cnam, envelope, size=payload["size"] + 1), IntegrityError),
        (cnam, refusal_of(setup, cnam, envelope, transfer_id=new_id()), IntegrityError),
        # another kind of signed object, and a malformed one
        (cnam, setup.receipt(cnam, envelope), IntegrityError),
        (cnam, sign_envelope({**payload, "detail": "a\nb"}, cnam.signing, cnam.name), IntegrityError),
    ]
    for caller, refusal, error in attempts:
        with pytest.raises(error):
            delivery.refuse(caller.caller, transfer_id, refusal)
    with pytest.raises(UsageError):
        delivery.refuse(cnam.caller, "../" + transfer_id, good)
    transfer = setup.relay.sql.transfers.get(transfer_id)
    assert (transfer.state, transfer.quarantined_at, transfer.refusal_envelope) == (TransferState.AVAILABLE, None, None)
    assert [r.transfer_id for r in delivery.inbox(cnam.caller)] == [transfer_id]
    refused = events(setup, AuditEvent.REFUSAL_REFUSE)
    assert len(refused) == len(attempts) + 1
    assert all(e.outcome is Outcome.REFUSED for e in refused)
    assert refused[-1].transfer_id is None  # a malformed id is not written to the trail
    assert events(setup, AuditEvent.REFUSAL_ACCEPT) == []
    assert not [a for a in setup.relay.detector.raised if a.rule == REFUSED_PAYLOAD]
    assert read_all(setup, cnam, transfer_id)  # still served to its recipient


@pytest.mark.threat("T24")
def test_only_an_available_transfer_can_be_refused(setup: Setup) -> None:
    lab, cnam = setup.member("lab-a", Role.LAB), setup.member("cnam", Role.RECIPIENT)
    uploads = setup.relay.services.uploads
    delivery = setup.relay.services.delivery
    # acknowledged already: the recipient said it had it
    delivered, delivered_id = sent(setup, lab, cnam)
    delivery.accept_receipt(cnam.caller, delivered_id, setup.receipt(cnam, delivered))
    with pytest.raises(Conflict, match="acknowledged"):
        delivery.refuse(cnam.caller, delivered_id, refusal_of(setup, cnam, delivered))
    # still uploading: the recipient cannot have had it
    uploading, _ = setup.seal(lab, cnam, b"u" * 100)
    uploads.create(lab.caller, uploading)
    with pytest.raises(NotFound):
        delivery.refuse(cnam.caller, uploading["payload"]["transfer_id"], refusal_of(setup, cnam, uploading))
    # past its deadline (even before the reaper closed it)
    late, late_id = sent(setup, lab, cnam, ttl=timedelta(hours=1))
    setup.clock.advance(timedelta(hours=1))
    with pytest.raises(NotFound):
        delivery.refuse(cnam.caller, late_id, refusal_of(setup, cnam, late))
    assert all(setup.relay.sql.transfers.get(t).refusal_envelope is None for t in (delivered_id, late_id))
    # quarantined by an administrator before the recipient refused it: the refusal is still kept for the sender
    held, held_id = sent(setup, lab, cnam)
    setup.relay.sql.transfers.quarantine([held_id], setup.clock.now())
    quarantined_at = setup.relay.sql.transfers.get(held_id).quarantined_at
    setup.clock.advance(timedelta(minutes=1))
    transfer = delivery.refuse(cnam.caller, held_id, refusal_of(setup, cnam, held))
    assert transfer.refusal_envelope is not None
    assert transfer.quarantined_at == quarantined_at


# ------------------------------------------------------------------ unparsed documents


@pytest.mark.threat("T25")
def test_unparsed_documents_go_only_to_recipients_the_policy_allows(setup: Setup) -> None:
    """Under the shipped policy only cnam may receive a document sent unparsed (every field it holds); an ARS,
    SpF and a recipient the policy does not name are refused before anything is stored."""
    lab, cnam = setup.member("lab-a", Role.LAB), setup.member("cnam", Role.RECIPIENT)
    ars, spf = setup.member("ars-11", Role.RECIPIENT), setup.member("spf", Role.RECIPIENT)
    other = setup.member("labo-municipal", Role.RECIPIENT)
    uploads = setup.relay.services.uploads
    delivery = setup.relay.services.delivery
    for recipient, words in ((ars, "only the records and fields"), (spf, "pseudonymised"), (other, "not a recipient")):
        envelope, _ = setup.seal(lab, recipient, b"x")
        with pytest.raises(PermissionDenied, match=words) as info:
            uploads.create(lab.caller, envelope)
        assert POLICY in info.value.message
        assert "\n" not in info.value.message
    refused = [e for e in events(setup, AuditEvent.TRANSFER_REFUSE) if e.reason == "permission-denied"]
    assert [e.actor for e in refused] == ["lab-a"] * 3
    assert setup.relay.sql.transfers.for_sender("lab-a") == []
    # To cnam, unparsed: accepted. To the ARS, routed under the policy: accepted.
    _, to_cnam = sent(setup, lab, cnam)
    _, routed = sent(setup, lab, ars, policy_version=POLICY, record_count=3)
    assert {r.transfer_id for r in delivery.outbox(lab.caller)} == {to_cnam, routed}


@pytest.mark.threat("T25")
def test_the_policy_in_force_decides_and_none_means_nobody(setup: Setup, tmp_path: Path) -> None:
    lab, cnam = setup.member("lab-a", Role.LAB), setup.member("cnam", Role.RECIPIENT)
    ars = setup.member("ars-11", Role.RECIPIENT)
    uploads = setup.relay.services.uploads
    # A newer policy that takes unparsed documents away from cnam and gives them to every ARS.
    text = (
        'version = "test-2"\nloinc = ["94500-6"]\n'
        '[[recipients]]\nname = "cnam"\nselect = "positive"\nfields = ["nir", "nom", "resultat"]\n'
        '[[recipients]]\nname = "ars-{region}"\nby_region = true\nfields = ["nom", "resultat"]\nunparsed = true\n'
    )
    payload = policy_payload(text, T0, issue=2, not_after=T0 + timedelta(days=365))
    signed = sign_envelope(payload, setup.authority, AUTHORITY_KEYID)
    setup.relay.services.policies.register(signed, AUTHORITY_KEYID)
    to_cnam, _ = setup.seal(lab, cnam, b"x")
    with pytest.raises(PermissionDenied, match="policy test-2 gives cnam"):
        uploads.create(lab.caller, to_cnam)
    to_ars, data = setup.seal(lab, ars, b"x")
    assert setup.upload(lab, to_ars, data) is TransferState.AVAILABLE

    # A relay with no policy registered at all: nobody may be sent an unparsed document (fail closed).
    authority = SigningKey.generate()
    (tmp_path / "bare.pub").write_bytes(authority.public.to_pem())
    init_data_dir(tmp_path / "bare", tmp_path / "bare.pub")
    clock = ManualClock(T0)
    bare = open_relay(RelaySettings(data_dir=(tmp_path / "bare").resolve()), clock)
    try:
        bare_setup = Setup(bare, clock, authority)
        lab_b, cnam_b = bare_setup.member("lab-a", Role.LAB), bare_setup.member("cnam", Role.RECIPIENT)
        envelope, _ = bare_setup.seal(lab_b, cnam_b, b"x")
        with pytest.raises(PermissionDenied, match="no routing policy is registered"):
            bare.services.uploads.create(lab_b.caller, envelope)
        assert bare.sql.transfers.for_sender("lab-a") == []
    finally:
        bare.close()
