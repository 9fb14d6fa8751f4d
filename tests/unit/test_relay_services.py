"""Relay use cases on real storage (SQLite in WAL mode, a payload directory) with a manual clock.

Each security decision the relay takes is tried here with an input that must be refused.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from labrelay.crypto.envelopes import sign_envelope
from labrelay.crypto.keys import AgeIdentity, SigningKey
from labrelay.domain.audit import AuditEvent, Outcome, verify_chain
from labrelay.domain.names import AUTHORITY_KEYID, new_id
from labrelay.domain.parties import Revocation, Role
from labrelay.domain.transfers import TransferState
from labrelay.errors import (
    AuthenticationFailed,
    Conflict,
    IntegrityError,
    NotCiphertext,
    NotFound,
    PartyRevoked,
    PermissionDenied,
    ReplayDetected,
    TooLarge,
    UntrustedEntry,
    UsageError,
)
from labrelay.relay.uploads import RunningHashes
from tests.support.relay_setup import T0, Setup, digest_of, read_all, request

# ------------------------------------------------------------------ the happy path, then each refusal


def test_upload_serve_receipt_delete(setup: Setup) -> None:
    lab, cnam = setup.member("lab-a", Role.LAB), setup.member("cnam", Role.RECIPIENT)
    envelope, data = setup.seal(lab, cnam, b"nir,nom\n1,X\n" * 1000)
    assert setup.upload(lab, envelope, data) is TransferState.AVAILABLE
    transfer_id = envelope["payload"]["transfer_id"]
    assert [r.transfer_id for r in setup.relay.services.delivery.inbox(cnam.caller)] == [transfer_id]
    assert read_all(setup, cnam, transfer_id) == data
    setup.relay.services.delivery.accept_receipt(cnam.caller, transfer_id, setup.receipt(cnam, envelope))
    assert list(setup.relay.payloads.ids()) == []
    assert setup.relay.services.delivery.inbox(cnam.caller) == []
    with pytest.raises(NotFound):
        setup.relay.services.delivery.open_payload(cnam.caller, transfer_id)
    outbox = setup.relay.services.delivery.outbox(lab.caller)
    assert outbox[0].state is TransferState.DELIVERED
    assert outbox[0].receipt_envelope is not None
    assert verify_chain(setup.relay.sql.audit.links()).ok


@pytest.mark.threat("T5")
def test_nothing_served_past_the_deadline_even_without_cleanup(setup: Setup) -> None:
    lab, cnam = setup.member("lab-a", Role.LAB), setup.member("cnam", Role.RECIPIENT)
    envelope, data = setup.seal(lab, cnam, b"x" * 5000, ttl=timedelta(hours=1))
    setup.upload(lab, envelope, data)
    transfer_id = envelope["payload"]["transfer_id"]
    setup.clock.advance(timedelta(minutes=59, seconds=59))
    assert read_all(setup, cnam, transfer_id) == data
    setup.clock.advance(timedelta(seconds=1))
    assert setup.relay.services.delivery.inbox(cnam.caller) == []
    with pytest.raises(NotFound):
        setup.relay.services.delivery.open_payload(cnam.caller, transfer_id)
    refusals = [r for r in setup.relay.sql.audit.links() if r.entry.event is AuditEvent.DOWNLOAD_REFUSE]
    assert refusals[-1].entry.reason == "expired"


@pytest.mark.threat("T5")
def test_deadline_beyond_the_relays_maximum_refused(setup: Setup) -> None:
    lab, cnam = setup.member("lab-a", Role.LAB), setup.member("cnam", Role.RECIPIENT)
    envelope, _ = setup.seal(lab, cnam, b"x", ttl=timedelta(days=31))
    with pytest.raises(UsageError, match="maximum of 30d"):
        setup.relay.services.uploads.create(lab.caller, envelope)


@pytest.mark.threat("T6")
def test_foreign_and_unknown_transfers_look_the_same(setup: Setup) -> None:
    lab, cnam, ars = (
        setup.member("lab-a", Role.LAB),
        setup.member("cnam", Role.RECIPIENT),
        setup.member("ars-11", Role.RECIPIENT),
    )
    envelope, data = setup.seal(lab, cnam, b"x" * 100)
    setup.upload(lab, envelope, data)
    transfer_id = envelope["payload"]["transfer_id"]
    delivery = setup.relay.services.delivery
    errors = []
    for caller, tid in ((ars.caller, transfer_id), (ars.caller, new_id()), (lab.caller, transfer_id)):
        with pytest.raises(NotFound) as info:
            delivery.open_payload(caller, tid)
        errors.append(info.value.message.replace(tid, "ID").replace(caller.name, "WHO"))
    assert len(set(errors)) == 1  # no oracle: foreign, unknown and sender's own all read the same
    with pytest.raises(NotFound):
        delivery.describe(ars.caller, transfer_id)
    with pytest.raises(NotFound):
        delivery.accept_receipt(ars.caller, transfer_id, setup.receipt(ars, envelope))


@pytest.mark.threat("T7")
def test_bytes_that_do_not_match_the_manifest_are_discarded(setup: Setup) -> None:
    lab, cnam = setup.member("lab-a", Role.LAB), setup.member("cnam", Role.RECIPIENT)
    envelope, data = setup.seal(lab, cnam, b"x" * 20000)
    tampered = bytearray(data)
    tampered[5000] ^= 0xFF
    with pytest.raises(IntegrityError, match="do not match the signed manifest"):
        setup.upload(lab, envelope, bytes(tampered))
    transfer_id = envelope["payload"]["transfer_id"]
    assert setup.relay.sql.transfers.get(transfer_id).state is TransferState.REJECTED
    assert list(setup.relay.payloads.ids()) == []
    assert setup.relay.services.delivery.inbox(cnam.caller) == []


@pytest.mark.threat("T7")
def test_the_whole_upload_is_hashed_as_it_arrives_and_read_back_only_without_that_state(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SHA-256 checked against the manifest is kept as the chunks arrive: the upload is not read back. Without
    that state (a restart, another replica's chunk, an upload moved since), it is read back, never skipped; and a
    tampered byte is refused either way."""
    lab, cnam = setup.member("lab-a", Role.LAB), setup.member("cnam", Role.RECIPIENT)
    store = setup.relay.payloads
    read_back: list[str] = []
    real = store.upload_digest

    def counted(transfer_id: str) -> tuple[int, str]:
        read_back.append(transfer_id)
        return real(transfer_id)

    monkeypatch.setattr(store, "upload_digest", counted)
    envelope, data = setup.seal(lab, cnam, b"x" * 30000)
    assert setup.upload(lab, envelope, data) is TransferState.AVAILABLE
    assert read_back == []

    envelope, data = setup.seal(lab, cnam, b"y" * 30000)
    tampered = bytearray(data)
    tampered[20000] ^= 0xFF
    with pytest.raises(IntegrityError, match="do not match the signed manifest"):
        setup.upload(lab, envelope, bytes(tampered))
    assert read_back == []

    uploads = setup.relay.services.uploads
    for lost in ("restart", "moved"):
        envelope, data = setup.seal(lab, cnam, lost.encode() * 10000)
        transfer, _ = uploads.create(lab.caller, envelope)
        tid = transfer.transfer_id
        uploads.append(lab.caller, tid, 0, 1000, digest_of(data[:1000]), [data[:1000]])
        if lost == "restart":
            uploads.hashes.forget(tid)
        else:  # someone else recorded this offset meanwhile: the entry no longer matches the transfer
            setup.relay.sql.transfers.set_uploaded(tid, 1000, setup.clock.now() + timedelta(seconds=5))
        uploads.append(lab.caller, tid, 1000, len(data) - 1000, digest_of(data[1000:]), [data[1000:]])
        assert read_back[-1] == tid
        assert read_all(setup, cnam, tid) == data


@pytest.mark.threat("T7")
def test_a_running_hash_is_not_continued_over_an_upload_rewritten_to_the_same_offset_in_the_same_second(
    setup: Setup,
) -> None:
    """Recovery restarts an upload from zero and another replica writes it up to the same offset again, within the
    same second: this replica's running hash is of bytes no longer stored. It must not be continued (the upload is
    read back and the rewritten bytes refused), whatever the clock says."""
    lab, cnam = setup.member("lab-a", Role.LAB), setup.member("cnam", Role.RECIPIENT)
    uploads, store, transfers = setup.relay.services.uploads, setup.relay.payloads, setup.relay.sql.transfers
    other = copy.copy(uploads)  # another replica: the same database and store, its own running hashes
    other.hashes = RunningHashes()
    envelope, data = setup.seal(lab, cnam, b"z" * 30000)
    transfer, _ = uploads.create(lab.caller, envelope)
    tid = transfer.transfer_id
    uploads.append(lab.caller, tid, 0, 1000, digest_of(data[:1000]), [data[:1000]])
    store.delete(tid)  # the bytes are lost; recovery restarts the upload from zero (same second: the clock stands)
    store.begin(tid, transfer.deadline)
    transfers.set_uploaded(tid, 0, setup.clock.now())
    rewritten = data[:900] + bytes(b ^ 0xFF for b in data[900:1000])  # past the age header
    other.append(lab.caller, tid, 0, 1000, digest_of(rewritten), [rewritten])
    with pytest.raises(IntegrityError, match="do not match the signed manifest"):
        uploads.append(lab.caller, tid, 1000, len(data) - 1000, digest_of(data[1000:]), [data[1000:]])
    assert transfers.get(tid).state is TransferState.REJECTED


@pytest.mark.threat("T7")
def test_chunk_that_does_not_match_its_digest_is_not_kept(setup: Setup) -> None:
    lab, cnam = setup.member("lab-a", Role.LAB), setup.member("cnam", Role.RECIPIENT)
    envelope, data = setup.seal(lab, cnam, b"x" * 20000)
    transfer, _ = setup.relay.services.uploads.create(lab.caller, envelope)
    with pytest.raises(IntegrityError):
        setup.relay.services.uploads.append(
            lab.caller, transfer.transfer_id, 0, 100, digest_of(data[:100]), [data[100:200]]
        )
    assert setup.relay.services.uploads.upload_status(lab.caller, transfer.transfer_id).uploaded == 0
    assert setup.relay.payloads.uploaded(transfer.transfer_id) == 0


@pytest.mark.threat("T41")
def test_an_upload_that_is_not_age_ciphertext_is_refused_at_its_first_chunk(setup: Setup) -> None:
    """The relay keeps age ciphertext and nothing else: a payload sent in the clear, under a manifest that matches it
    (its size, its SHA-256), is refused at its first chunk, no byte of it kept, and the refusal is audited. A chunk
    that covers only part of the age header is held to that part; ciphertext in small chunks goes through."""
    lab, cnam = setup.member("lab-a", Role.LAB), setup.member("cnam", Role.RECIPIENT)
    uploads = setup.relay.services.uploads
    plain = b"nir,nom\n1850175123456,DUPONT\n" * 60  # more than the smallest hybrid age file
    in_clear, _ = setup.seal(lab, cnam, b"", size=len(plain), sha256=hashlib.sha256(plain).hexdigest())
    transfer, _ = uploads.create(lab.caller, in_clear)
    for offset, chunk in ((0, plain), (0, b"age-encryption.org/v2\n" + plain[22:]), (0, plain[:5])):
        with pytest.raises(NotCiphertext, match="age header"):
            uploads.append(lab.caller, transfer.transfer_id, offset, len(chunk), digest_of(chunk), [chunk])
        assert uploads.upload_status(lab.caller, transfer.transfer_id).uploaded == 0
        assert setup.relay.payloads.uploaded(transfer.transfer_id) == 0
    refused = [
        r.entry
        for r in setup.relay.sql.audit.links()
        if r.entry.event is AuditEvent.UPLOAD_CHUNK and r.entry.transfer_id == transfer.transfer_id
    ]
    assert [(e.outcome, e.reason, e.actor) for e in refused] == [(Outcome.REFUSED, "not-ciphertext", "lab-a")] * 3

    envelope, data = setup.seal(lab, cnam, b"nir,nom\n1850175123456,DUPONT\n" * 20)
    transfer, _ = uploads.create(lab.caller, envelope)
    uploads.append(lab.caller, transfer.transfer_id, 0, 10, digest_of(data[:10]), [data[:10]])
    forged = b"X" + data[11:40]
    with pytest.raises(NotCiphertext):  # the rest of the header, rewritten
        uploads.append(lab.caller, transfer.transfer_id, 10, len(forged), digest_of(forged), [forged])
    for start, end in ((10, 21), (21, 40), (40, len(data))):
        uploads.append(
            lab.caller, transfer.transfer_id, start, end - start, digest_of(data[start:end]), [data[start:end]]
        )
    assert setup.relay.sql.transfers.get(transfer.transfer_id).state is TransferState.AVAILABLE
    assert read_all(setup, cnam, transfer.transfer_id) == data


@pytest.mark.threat("T3")
def test_manifest_checks_fail_closed(setup: Setup) -> None:
    lab, cnam = setup.member("lab-a", Role.LAB), setup.member("cnam", Role.RECIPIENT)
    other_lab = setup.member("lab-b", Role.LAB)
    uploads = setup.relay.services.uploads
    # signed by a key that is not the sender's registered key
    envelope, _ = setup.seal(lab, cnam, b"x")
    forged = sign_envelope(envelope["payload"], SigningKey.generate(), lab.name)
    with pytest.raises(IntegrityError):
        uploads.create(lab.caller, forged)
    # signed by another (registered) lab, presented by this one
    envelope_b, _ = setup.seal(other_lab, cnam, b"x")
    with pytest.raises(IntegrityError):
        uploads.create(lab.caller, envelope_b)
    # sealed to a key that is not the recipient's directory key
    env_wrong_key, _ = setup.seal(lab, cnam, b"x", recipient_key=AgeIdentity.generate().recipient)
    with pytest.raises(IntegrityError, match="not cnam's key"):
        uploads.create(lab.caller, env_wrong_key)
    # a recipient may not send; a lab may not receive
    with pytest.raises(PermissionDenied):
        uploads.create(cnam.caller, sign_envelope(envelope["payload"], cnam.signing, cnam.name))
    env_to_lab, _ = setup.seal(lab, other_lab, b"x")
    with pytest.raises(PermissionDenied):
        uploads.create(lab.caller, env_to_lab)
    # unknown recipient
    ghost = setup.member("ghost", Role.RECIPIENT, register=False)
    env_ghost, _ = setup.seal(lab, ghost, b"x")
    with pytest.raises(NotFound):
        uploads.create(lab.caller, env_ghost)
    # too large
    env_big, _ = setup.seal(lab, cnam, b"x", size=setup.relay.settings.max_payload_bytes + 1)
    with pytest.raises(TooLarge):
        uploads.create(lab.caller, env_big)
    assert setup.relay.sql.transfers.for_sender("lab-a") == setup.relay.sql.transfers.for_sender("lab-b") == []


@pytest.mark.threat("T4")
def test_revoked_recipient_gets_nothing_new(setup: Setup) -> None:
    lab, cnam = setup.member("lab-a", Role.LAB), setup.member("cnam", Role.RECIPIENT)
    setup.clock.advance(timedelta(minutes=1))
    setup.revoke("cnam")
    envelope, _ = setup.seal(lab, cnam, b"x")
    with pytest.raises(PartyRevoked):
        setup.relay.services.uploads.create(lab.caller, envelope)


def test_upload_offsets_and_resume(setup: Setup) -> None:
    lab, cnam = setup.member("lab-a", Role.LAB), setup.member("cnam", Role.RECIPIENT)
    envelope, data = setup.seal(lab, cnam, b"y" * 30000)
    uploads = setup.relay.services.uploads
    delivery = setup.relay.services.delivery
    transfer, new = uploads.create(lab.caller, envelope)
    assert new
    again, new_again = uploads.create(lab.caller, envelope)  # a retried creation is idempotent
    assert not new_again
    assert again.transfer_id == transfer.transfer_id

    uploads.append(lab.caller, transfer.transfer_id, 0, 1000, digest_of(data[:1000]), [data[:1000]])
    with pytest.raises(Conflict, match="offset is 1000"):
        uploads.append(lab.caller, transfer.transfer_id, 0, 1000, digest_of(data[:1000]), [data[:1000]])
    with pytest.raises(UsageError, match="ended after"):  # a body cut short is discarded
        uploads.append(lab.caller, transfer.transfer_id, 1000, 2000, digest_of(data[1000:3000]), [data[1000:2000]])
    assert uploads.upload_status(lab.caller, transfer.transfer_id).uploaded == 1000
    with pytest.raises(TooLarge):
        uploads.append(lab.caller, transfer.transfer_id, 1000, len(data), digest_of(b""), [b""])
    status = uploads.append(
        lab.caller, transfer.transfer_id, 1000, len(data) - 1000, digest_of(data[1000:]), [data[1000:]]
    )
    assert status.state is TransferState.AVAILABLE
    assert read_all(setup, cnam, transfer.transfer_id) == data
    assert b"".join(delivery.open_payload(cnam.caller, transfer.transfer_id, 29000).chunks) == data[29000:]


def test_receipt_checks(setup: Setup) -> None:
    lab, cnam = setup.member("lab-a", Role.LAB), setup.member("cnam", Role.RECIPIENT)
    envelope, data = setup.seal(lab, cnam, b"z" * 3000)
    setup.upload(lab, envelope, data)
    transfer_id = envelope["payload"]["transfer_id"]
    delivery = setup.relay.services.delivery
    good = setup.receipt(cnam, envelope)
    with pytest.raises(IntegrityError):  # signed by another key
        delivery.accept_receipt(
            cnam.caller, transfer_id, sign_envelope(good["payload"], SigningKey.generate(), cnam.name)
        )
    wrong_hash = sign_envelope({**good["payload"], "sha256": "0" * 64}, cnam.signing, cnam.name)
    with pytest.raises(IntegrityError):
        delivery.accept_receipt(cnam.caller, transfer_id, wrong_hash)
    assert setup.relay.sql.transfers.get(transfer_id).state is TransferState.AVAILABLE
    delivery.accept_receipt(cnam.caller, transfer_id, good)
    delivery.accept_receipt(cnam.caller, transfer_id, good)  # a retried receipt is harmless
    assert setup.relay.sql.transfers.get(transfer_id).state is TransferState.DELIVERED


def test_concurrent_audit_appends_keep_one_chain(setup: Setup) -> None:
    def burst() -> None:
        for _ in range(50):
            setup.relay.services.auditor.record(AuditEvent.TRANSFER_LIST, actor="lab-a")

    threads = [threading.Thread(target=burst) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = verify_chain(setup.relay.sql.audit.links())
    assert report.ok
    assert report.links >= 300


def test_audit_appends_arriving_together_share_a_transaction_each_with_its_signed_head(setup: Setup) -> None:
    """Group commit: appends that queue behind a transaction are written in the next one together; each still
    gets its own link and a signed head naming that link, returns only once committed, and the stored head is
    checked against the log before every transaction (a link removed behind the relay's back fails them all,
    writing none)."""
    from sqlalchemy import event, text  # noqa: PLC0415

    auditor, log = setup.relay.services.auditor, setup.relay.sql.audit
    commits: list[int] = []
    event.listen(setup.relay.sql.db.engine, "commit", lambda _conn: commits.append(1))
    results: list[tuple[int, int, bool]] = []
    gate = threading.Barrier(8)

    def burst() -> None:
        gate.wait()
        for _ in range(25):
            rec = auditor.record(AuditEvent.TRANSFER_LIST, actor="lab-a")
            head = log.checkpoint("head")
            assert head is not None
            results.append((rec.seq, head.seq, log.hash_at(rec.seq) == rec.hash))

    threads = [threading.Thread(target=burst) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 200
    assert all(head >= seq and stored for seq, head, stored in results)  # committed before record returned
    assert len({seq for seq, _, _ in results}) == 200
    assert verify_chain(log.links()).ok
    assert len(commits) < 200  # fewer transactions than appends (on 2 busy cores, by a wide margin)

    last = log.checkpoint("head")
    assert last is not None
    with setup.relay.sql.db.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE seq = :s"), {"s": last.seq})
    errors: list[BaseException] = []

    def tampered() -> None:
        try:
            auditor.record(AuditEvent.TRANSFER_LIST, actor="lab-a")
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=tampered) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 4
    assert all(type(e).__name__ == "AuditTampered" for e in errors)
    assert log.hash_at(last.seq + 1) is None


@pytest.mark.threat("T8")
def test_a_nonce_presented_many_times_at_once_is_accepted_once(setup: Setup) -> None:
    """Nonces arriving together are remembered in one transaction: a replay within that same transaction is still
    a replay."""
    nonces = setup.relay.sql.nonces
    now = setup.clock.now()
    gate = threading.Barrier(12)
    answers: list[tuple[str, bool]] = []

    def present(nonce: str) -> None:
        gate.wait()
        answers.append((nonce, nonces.remember("lab-a", nonce, now)))

    threads = [threading.Thread(target=present, args=(f"n{i % 3}",)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(n for n, fresh in answers if fresh) == ["n0", "n1", "n2"]
    assert sum(1 for _, fresh in answers if not fresh) == 9
    assert not nonces.remember("lab-a", "n0", now)
    assert nonces.remember("lab-b", "n0", now)  # the nonce is the signer's own


# ------------------------------------------------------------------ authentication


@pytest.mark.threat("T4")
@pytest.mark.threat("T8")
def test_authentication_fails_closed(setup: Setup) -> None:
    auth = setup.relay.services.auth
    lab = setup.member("lab-a", Role.LAB)
    now = setup.clock.now()
    assert auth.authenticate(request(lab, lab.signing, now), has_body=False).name == "lab-a"
    view = request(lab, lab.signing, now)
    auth.authenticate(view, has_body=False)
    with pytest.raises(ReplayDetected):
        auth.authenticate(view, has_body=False)
    ghost = setup.member("ghost", Role.LAB, register=False)
    with pytest.raises(AuthenticationFailed, match="request signature refused"):
        auth.authenticate(request(ghost, ghost.signing, now), has_body=False)
    with pytest.raises(AuthenticationFailed):  # right name, wrong key
        auth.authenticate(request(lab, SigningKey.generate(), now), has_body=False)
    with pytest.raises(AuthenticationFailed):  # stale
        auth.authenticate(request(lab, lab.signing, now - timedelta(minutes=10)), has_body=False)
    with pytest.raises(AuthenticationFailed):  # claims to be the authority without its key
        auth.authenticate(request(None, lab.signing, now, keyid=AUTHORITY_KEYID), has_body=False)
    assert auth.authenticate(request(None, setup.authority, now, keyid=AUTHORITY_KEYID), has_body=False).is_authority
    short = setup.member("short", Role.LAB, days=1)
    setup.clock.advance(timedelta(days=2))
    with pytest.raises(AuthenticationFailed, match="expired"):
        auth.authenticate(request(short, short.signing, setup.clock.now()), has_body=False)
    setup.revoke("lab-a")
    with pytest.raises(PartyRevoked):
        auth.authenticate(request(lab, lab.signing, setup.clock.now()), has_body=False)
    events = [r.entry for r in setup.relay.sql.audit.links()]
    assert any(e.event is AuditEvent.AUTH_REPLAY for e in events)
    assert sum(e.event is AuditEvent.AUTH_FAILURE for e in events) >= 5


@pytest.mark.threat("T3")
def test_directory_refuses_what_the_authority_did_not_sign(setup: Setup) -> None:
    directory = setup.relay.services.directory
    cnam = setup.member("cnam", Role.RECIPIENT, register=False)
    rogue = SigningKey.generate()
    with pytest.raises(UntrustedEntry):
        directory.register(sign_envelope(cnam.entry.to_payload(), rogue, AUTHORITY_KEYID), "cnam")
    payload = dict(cnam.envelope["payload"])
    payload["age_recipient"] = AgeIdentity.generate().recipient
    with pytest.raises(UntrustedEntry):
        directory.register({**cnam.envelope, "payload": payload}, "cnam")
    with pytest.raises(UntrustedEntry):
        directory.revoke(
            sign_envelope(
                Revocation(name="cnam", revoked_at=T0, reason="x", serial=new_id()).to_payload(), rogue, AUTHORITY_KEYID
            ),
            "x",
        )
    assert directory.resolve("cnam").entry is None
    expired = setup.member("old", Role.RECIPIENT, register=False, days=1)
    setup.clock.advance(timedelta(days=2))
    with pytest.raises(UntrustedEntry, match="expired"):
        directory.register(expired.envelope, "old")


@pytest.mark.threat("T6")
def test_another_senders_transfer_id_is_refused_without_saying_it_exists(setup: Setup) -> None:
    lab, other, cnam = (
        setup.member("lab-a", Role.LAB),
        setup.member("lab-b", Role.LAB),
        setup.member("cnam", Role.RECIPIENT),
    )
    envelope, data = setup.seal(lab, cnam, b"x" * 100)
    setup.upload(lab, envelope, data)
    taken = envelope["payload"]["transfer_id"]
    squat, _ = setup.seal(other, cnam, b"y", transfer_id=taken)
    with pytest.raises(Conflict) as foreign:
        setup.relay.services.uploads.create(other.caller, squat)
    own_again, _ = setup.seal(lab, cnam, b"z", transfer_id=taken)
    with pytest.raises(Conflict) as own:
        setup.relay.services.uploads.create(lab.caller, own_again)
    assert foreign.value.message == own.value.message
    assert "exist" not in foreign.value.message
    flagged = [r.entry for r in setup.relay.sql.audit.links() if r.entry.reason == "id-collision"]
    assert [e.actor for e in flagged] == ["lab-b"]
    assert setup.relay.sql.transfers.get(taken).sender == "lab-a"


def test_only_the_signed_parts_of_an_envelope_are_stored(setup: Setup) -> None:
    lab, cnam = setup.member("lab-a", Role.LAB), setup.member("cnam", Role.RECIPIENT)
    envelope, _ = setup.seal(lab, cnam, b"x" * 100)
    padded = {**envelope, "smuggled": "A" * 10_000}
    transfer, _ = setup.relay.services.uploads.create(lab.caller, padded)
    assert set(transfer.manifest_envelope) == {"payload", "signer", "alg", "sig"}
    assert "smuggled" not in json.dumps(setup.relay.sql.transfers.get(transfer.transfer_id).manifest_envelope)


@pytest.mark.threat("T5")
def test_restart_deletes_ciphertext_a_crash_left_behind(setup: Setup, tmp_path: Path) -> None:
    """The 2021 failure was a file nobody deleted. After a crash between 'delivered' and the deletion, or of
    bytes with no transfer at all, the relay deletes them when it starts, and says so in the audit trail."""
    lab, cnam = setup.member("lab-a", Role.LAB), setup.member("cnam", Role.RECIPIENT)
    envelope, data = setup.seal(lab, cnam, b"x" * 5000)
    setup.upload(lab, envelope, data)
    delivered = envelope["payload"]["transfer_id"]
    setup.relay.sql.transfers.transition(
        delivered, [TransferState.AVAILABLE], TransferState.DELIVERED, setup.clock.now()
    )
    orphan = new_id()
    (setup.relay.payloads.root / f"{orphan}.payload").write_bytes(b"age-encryption.org/v1\n...")
    waiting_env, waiting_data = setup.seal(lab, cnam, b"keep me" * 100)
    setup.upload(lab, waiting_env, waiting_data)
    repaired = setup.relay.services.recovery.recover()
    assert repaired == 2
    assert sorted(setup.relay.payloads.ids()) == [waiting_env["payload"]["transfer_id"]]
    causes = {
        r.entry.details.get("cause")
        for r in setup.relay.sql.audit.links()
        if r.entry.event is AuditEvent.PAYLOAD_DELETE
    }
    assert {"recovery-orphan", "recovery-delivered"} <= causes


@pytest.mark.parametrize("finisher", ["sender-asks", "restart"])
@pytest.mark.threat("T21")
def test_an_upload_cut_after_its_last_chunk_is_finished_not_stranded(setup: Setup, finisher: str) -> None:
    """The relay stored the last chunk and recorded the offset, then died before checking and publishing: the
    sender's next HEAD (or the next start) finishes the job. Without it the sender, told that nothing is missing,
    would stop, and the payload would never be delivered."""
    lab, cnam = setup.member("lab-a", Role.LAB), setup.member("cnam", Role.RECIPIENT)
    envelope, data = setup.seal(lab, cnam, b"whole" * 2000)
    uploads = setup.relay.services.uploads
    delivery = setup.relay.services.delivery
    recovery = setup.relay.services.recovery
    transfer, _ = uploads.create(lab.caller, envelope)
    writer = setup.relay.payloads.writer(transfer.transfer_id, 0)  # what _append does, up to the crash
    writer.write(data)
    setup.relay.sql.transfers.set_uploaded(transfer.transfer_id, writer.commit(), setup.clock.now())
    assert setup.relay.sql.transfers.get(transfer.transfer_id).state is TransferState.UPLOADING
    assert transfer.transfer_id not in [r.transfer_id for r in delivery.inbox(cnam.caller)]
    if finisher == "sender-asks":
        status = uploads.upload_status(lab.caller, transfer.transfer_id)
        assert status.state is TransferState.AVAILABLE
    else:
        assert recovery.recover() >= 1
    assert setup.relay.sql.transfers.get(transfer.transfer_id).state is TransferState.AVAILABLE
    assert b"".join(setup.relay.payloads.open(transfer.transfer_id)) == data


@pytest.mark.threat("T21")
def test_a_publication_cut_before_its_state_is_recorded_on_restart(setup: Setup) -> None:
    """The relay checked and published an upload, then died before marking it available: the next start marks it
    and records its upload:complete, which breach scope reads to know the payload was stored."""
    lab, cnam = setup.member("lab-a", Role.LAB), setup.member("cnam", Role.RECIPIENT)
    envelope, data = setup.seal(lab, cnam, b"whole" * 2000)
    transfer, _ = setup.relay.services.uploads.create(lab.caller, envelope)
    writer = setup.relay.payloads.writer(transfer.transfer_id, 0)  # what _append and publish do, up to the crash
    writer.write(data)
    setup.relay.sql.transfers.set_uploaded(transfer.transfer_id, writer.commit(), setup.clock.now())
    setup.relay.payloads.publish(transfer.transfer_id)
    assert setup.relay.services.recovery.recover() >= 1
    assert setup.relay.sql.transfers.get(transfer.transfer_id).state is TransferState.AVAILABLE
    completed = [
        link.entry.transfer_id
        for link in setup.relay.sql.audit.links()
        if link.entry.event is AuditEvent.UPLOAD_COMPLETE
    ]
    assert completed == [transfer.transfer_id]
