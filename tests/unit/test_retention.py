"""Retention on real storage with a manual clock: epoch keys, the reaper, the retention check, crashes.

Years of deadlines pass in milliseconds: the clock is an object the tests move.
"""

from __future__ import annotations

import io
import os
import random  # noqa: TID251 - a seeded test schedule, never keys
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from labrelay.clock import ManualClock
from labrelay.config import RelaySettings
from labrelay.crypto import age_stream, at_rest
from labrelay.crypto.keys import SigningKey
from labrelay.domain.names import new_id
from labrelay.domain.parties import Role
from labrelay.domain.policy import DEFAULT_POLICY_VALIDITY
from labrelay.domain.retention import epoch_end
from labrelay.domain.timeutil import to_epoch
from labrelay.domain.transfers import TransferState
from labrelay.errors import Conflict, EpochKeyGone, InsecureKeyFile, IntegrityError, NotFound, Unavailable, UsageError
from labrelay.operations import init_data_dir
from labrelay.relay.audit_check import verify_audit
from labrelay.relay.retention import RetentionReport, check_retention
from labrelay.runtime import limits_for, open_relay
from labrelay.storage.files import LocalPayloadStore
from labrelay.storage.keystore import LEFTOVER_AGE, FileKeyStore
from tests.support.relay_setup import T0, Setup, digest_of, read_all

HOUR = timedelta(hours=1)


def check(setup: Setup) -> RetentionReport:
    relay = setup.relay
    return check_retention(
        relay.sql.transfers,
        relay.payloads,
        relay.keys,
        setup.clock,
        limits_for(relay.settings),
        relay.settings.epoch_length,
    )


def failed(report: RetentionReport) -> set[str]:
    return {f.check for f in report.failures()}


# ------------------------------------------------------------------ the at-rest format


def test_epoch_arithmetic() -> None:
    hour = int(HOUR.total_seconds())
    on_boundary = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    assert epoch_end(on_boundary, HOUR) == to_epoch(on_boundary)  # a deadline on a boundary ends its epoch
    assert epoch_end(on_boundary + timedelta(seconds=1), HOUR) == to_epoch(on_boundary) + hour
    assert epoch_end(on_boundary - timedelta(seconds=1), HOUR) == to_epoch(on_boundary)
    assert epoch_end(on_boundary + timedelta(microseconds=1), HOUR) == to_epoch(on_boundary) + hour
    with pytest.raises(ValueError, match="positive"):
        epoch_end(on_boundary, timedelta(0))


def sealed_file(tmp_path: Path, plain: bytes, chunks: list[int]) -> tuple[LocalPayloadStore, str]:
    keys = FileKeyStore(tmp_path / "keys")
    store = LocalPayloadStore(tmp_path / "payloads", keys, HOUR)
    transfer_id = new_id()
    store.begin(transfer_id, T0 + timedelta(days=1))
    offset = 0
    for size in chunks:
        writer = store.writer(transfer_id, offset)
        writer.write(plain[offset : offset + size])
        offset = writer.commit()
    store.publish(transfer_id)
    return store, transfer_id


def test_the_payload_file_holds_sealed_segments_not_the_payload(tmp_path: Path) -> None:
    """The round trip and resumes are the contract both stores keep (tests/unit/test_payload_stores.py); here,
    what the directory store writes on disk."""
    plain = os.urandom(200_000)
    store, tid = sealed_file(tmp_path, plain, [1, 70_000, 65_536, 64_463])
    stored = (store.root / f"{tid}.payload").read_bytes()
    assert plain[:64] not in stored
    assert not (store.root / f"{tid}.upload").exists()  # published by a rename: no upload file left behind
    assert b"".join(store.open(tid)) == plain


def test_segments_are_bound_to_their_place_and_their_transfer(tmp_path: Path) -> None:
    plain = os.urandom(3 * at_rest.SEGMENT)
    store, tid = sealed_file(tmp_path, plain, [len(plain)])
    path = store.root / f"{tid}.payload"
    data = path.read_bytes()
    size = at_rest.SEGMENT_HEAD + at_rest.SEGMENT + at_rest.TAG_BYTES
    head, first, second = data[: at_rest.HEADER_BYTES], data[at_rest.HEADER_BYTES :][:size], data[-size:]
    middle = data[at_rest.HEADER_BYTES + size : -size]
    path.write_bytes(head + second + middle + first)  # segments swapped
    with pytest.raises(IntegrityError):
        b"".join(store.open(tid))
    other = new_id()
    (store.root / f"{other}.payload").write_bytes(data)  # the same bytes under another transfer's name
    with pytest.raises(IntegrityError):
        b"".join(store.open(other))


def test_a_torn_segment_at_the_end_is_not_counted_and_is_cut_on_resume(tmp_path: Path) -> None:
    keys = FileKeyStore(tmp_path / "keys")
    store = LocalPayloadStore(tmp_path / "payloads", keys, HOUR)
    tid = new_id()
    store.begin(tid, T0 + HOUR)
    writer = store.writer(tid, 0)
    writer.write(b"a" * 1000)
    assert writer.commit() == 1000
    with (store.root / f"{tid}.upload").open("ab") as fh:  # a crash in the middle of the next segment
        fh.write(b"\x00\x00\x03\xe8" + b"\x01" * 40)
    assert store.uploaded(tid) == 1000
    with pytest.raises(Conflict, match="ends at offset 999"):
        store.writer(tid, 999)
    writer = store.writer(tid, 1000)
    writer.write(b"b" * 500)
    assert writer.commit() == 1500
    store.publish(tid)
    assert b"".join(store.open(tid)) == b"a" * 1000 + b"b" * 500


def _at_once(calls: list[Callable[[], bytes]]) -> list[bytes | BaseException]:
    """Each call on a thread of its own, all released at the same moment; what each returned or raised."""
    barrier = threading.Barrier(len(calls))
    got: list[bytes | BaseException] = []

    def run(call: Callable[[], bytes]) -> None:
        barrier.wait()
        try:
            got.append(call())
        except Exception as exc:  # noqa: BLE001 - collected, the test says which
            got.append(exc)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return got


def test_epoch_keys_made_at_once_by_many_threads_and_two_stores_are_the_key_stored(tmp_path: Path) -> None:
    """The first transfers of a new epoch arrive together (a burst of labs; two replicas sharing the key directory):
    every caller must get the key that is stored, or the payloads it wraps never open again. A temporary file
    named by the process id alone let threads remove and replace each other's before the link (the load
    benchmark on S3: "its data key does not unwrap")."""
    stores = [FileKeyStore(tmp_path / "keys"), FileKeyStore(tmp_path / "keys")]  # two replicas, one directory
    callers = 12
    for epoch in range(3600, 3600 + 40 * 3600, 3600):
        got = _at_once([lambda store=stores[i % 2], epoch=epoch: store.create(epoch) for i in range(callers)])
        stored = stores[0].key(epoch)
        assert got == [stored] * callers, (epoch, [g if isinstance(g, bytes) else type(g).__name__ for g in got])
    assert stores[0].strays() == []  # no temporary file left behind


def test_a_temporary_key_file_linked_into_place_is_unlinked_never_overwritten(tmp_path: Path) -> None:
    """A create between its link and its cleanup leaves the key file under a second name (a hard link): the reaper
    removes that name and never overwrites its bytes, which are the key itself."""
    keys = FileKeyStore(tmp_path / "keys")
    key = keys.create(3600)
    linked = tmp_path / "keys" / f".epoch-3600.key.{os.getpid()}.{'0' * 16}.tmp"
    os.link(tmp_path / "keys" / "epoch-3600.key", linked)
    os.utime(linked, (time.time() - LEFTOVER_AGE - 1,) * 2)
    assert keys.remove_leftovers() == [linked.name]
    assert not linked.exists()
    assert keys.key(3600) == key  # not zeros
    (tmp_path / "keys" / "epoch-3600.key").write_bytes(bytes(32))  # had it been overwritten: refused, not used
    with pytest.raises(Unavailable, match="damaged"):
        keys.key(3600)


def test_key_store_creates_once_destroys_verifiably_and_refuses_loose_permissions(tmp_path: Path) -> None:
    keys = FileKeyStore(tmp_path / "keys")
    first = keys.create(3600)
    assert keys.create(3600) == first == keys.key(3600)
    assert keys.epochs() == [3600]
    assert (tmp_path / "keys" / "epoch-3600.key").stat().st_mode & 0o777 == 0o600
    crashed = tmp_path / "keys" / ".epoch-7200.key.99.tmp"
    crashed.write_bytes(b"k" * 32)  # a crash mid-create …
    assert keys.strays() == [crashed.name]
    assert keys.remove_leftovers() == []  # … or a create in progress in another process: not yet
    os.utime(crashed, (time.time() - LEFTOVER_AGE - 1,) * 2)
    assert keys.remove_leftovers() == [crashed.name]  # old enough: a crash's
    assert keys.strays() == []
    assert keys.destroy(3600)
    assert keys.key(3600) is None
    assert keys.epochs() == []
    assert keys.destroy(3600)  # already gone: still verifiably gone
    os.chmod(tmp_path / "keys", 0o755)  # noqa: S103 - the mistake the store must refuse
    with pytest.raises(InsecureKeyFile):
        FileKeyStore(tmp_path / "keys")


# ------------------------------------------------------------------ deadlines


@pytest.mark.threat("T5")
def test_no_request_can_exceed_the_maximum_even_with_a_future_creation_time(setup: Setup) -> None:
    lab, cnam = setup.member("lab-a", Role.LAB), setup.member("cnam", Role.RECIPIENT)
    skew = setup.clock.now() + timedelta(seconds=20)  # within the tolerated clock skew
    envelope, _ = setup.seal(lab, cnam, b"x", created=skew, deadline=skew + timedelta(days=30))
    with pytest.raises(UsageError, match="longer than the relay's maximum"):
        setup.relay.services.uploads.create(lab.caller, envelope)


# ------------------------------------------------------------------ the backup scenario


def age_tool() -> str:
    path = shutil.which("age")
    if path is None:
        pytest.fail("the age tool is required (./dev test installs it)")
    return path


@pytest.mark.threat("T15")
def test_a_backup_taken_before_the_deadline_is_unreadable_after_it(setup: Setup, tmp_path: Path) -> None:
    """A copy of the payloads and the database, taken while a payload waits, stays useless once the deadline's
    epoch has ended, even to someone who also holds the recipient's private key."""
    lab, cnam = setup.member("lab-a", Role.LAB), setup.member("cnam", Role.RECIPIENT)
    plain = b"nir,nom\n" + b"1790375111042xx,DUPONT\n" * 2000
    envelope, data = setup.seal(lab, cnam, plain, ttl=timedelta(days=2))
    assert setup.upload(lab, envelope, data) is TransferState.AVAILABLE
    tid = envelope["payload"]["transfer_id"]
    settings = setup.relay.settings

    backup = tmp_path / "backup"  # the thief's copy: payloads and database, taken before the deadline
    shutil.copytree(settings.payload_dir, backup / "payloads")
    shutil.copy2(settings.database_path, backup / "relay.db")
    stolen = backup / "payloads" / f"{tid}.payload"
    identity = tmp_path / "cnam-identity.txt"
    identity.write_text(cnam.identity.secret + "\n")
    identity.chmod(0o600)

    # Control: while the epoch key exists, the copy does open (so the assertions below can fail).
    copy_store = LocalPayloadStore(backup / "payloads", setup.relay.keys, settings.epoch_length)
    decrypted = io.BytesIO()
    age_stream.decrypt(io.BytesIO(b"".join(copy_store.open(tid))), decrypted, [cnam.identity], expect=None)
    assert decrypted.getvalue() == plain

    setup.clock.advance(timedelta(days=3))  # past the deadline and the end of its epoch
    result = setup.relay.services.reaper.run_once()
    assert result.expired == 1
    assert result.keys_destroyed

    with pytest.raises(EpochKeyGone):
        b"".join(copy_store.open(tid))
    with pytest.raises(EpochKeyGone):  # a second key store (another relay, say) has no such key either
        b"".join(LocalPayloadStore(backup / "payloads", FileKeyStore(tmp_path / "other-keys"), HOUR).open(tid))
    for start in range(2):
        with pytest.raises(Exception):  # noqa: B017, PT011 - whatever it raises, it must not decrypt
            age_stream.decrypt(io.BytesIO(stolen.read_bytes()[start:]), io.BytesIO(), [cnam.identity], expect=None)
    tool = subprocess.run([age_tool(), "--decrypt", "-i", str(identity), str(stolen)], capture_output=True, check=False)
    assert tool.returncode != 0
    assert plain[:32] not in tool.stdout
    assert not any(settings.payload_dir.iterdir())  # and the relay itself kept nothing


# ------------------------------------------------------------------ the reaper over years


@pytest.mark.threat("T16")
def test_years_of_deadlines_leave_nothing_past_its_time(setup: Setup) -> None:
    """Two simulated years of sends with random deadlines, receipts and reaper passes at random moments: after
    every pass, nothing is on the relay past its deadline, no key outlives its epoch, the check holds."""
    rng = random.Random(2021)
    lab, cnam = setup.member("lab-a", Role.LAB, days=1000), setup.member("cnam", Role.RECIPIENT, days=1000)
    delivery = setup.relay.services.delivery
    delivered = expired = 0
    end = setup.clock.now() + timedelta(days=730)
    issue, policy_end = 1, setup.clock.now() + DEFAULT_POLICY_VALIDITY
    while setup.clock.now() < end:
        if setup.clock.now() > policy_end - timedelta(days=30):  # the authority renews the policy before it ends
            issue += 1
            policy_end = setup.publish_policy(issue)
        for _ in range(rng.randint(0, 3)):
            ttl = timedelta(seconds=rng.randint(60, 30 * 86400))
            envelope, data = setup.seal(lab, cnam, os.urandom(rng.randint(1, 3000)), ttl=ttl)
            setup.upload(lab, envelope, data, chunk=rng.choice([500, 4096, 100_000]))
            if rng.random() < 0.5:
                delivery.accept_receipt(cnam.caller, envelope["payload"]["transfer_id"], setup.receipt(cnam, envelope))
                delivered += 1
        setup.clock.advance(timedelta(seconds=rng.randint(600, 6 * 86400)))
        expired += setup.relay.services.reaper.run_once().expired
        report = check(setup)
        assert report.ok, report.as_dict()
        now = setup.clock.now()
        assert all(e > to_epoch(now) for e in setup.relay.keys.epochs())
        assert not setup.relay.sql.transfers.open_past(now)
    assert delivered > 50
    assert expired > 50
    # Two years: the audit log's retention (365 days) pruned the oldest segments; what remains still verifies,
    # from the anchor the relay signed.
    anchor = setup.relay.sql.audit.checkpoint("anchor")
    assert anchor is not None
    assert anchor.seq > 1
    audit = verify_audit(setup.relay.sql.audit, setup.relay.services.auditor.relay_public, now=setup.clock.now())
    assert audit.ok, audit.as_dict()
    assert audit.first_seq == anchor.seq + 1


@pytest.mark.threat("T16")
def test_a_reaper_pass_cut_short_is_finished_by_the_next_one(setup: Setup, tmp_path: Path) -> None:
    """A crash in the middle of a pass (after some transfers were marked expired, before their bytes went):
    nothing is served meanwhile, and the next relay's start finishes the job."""
    lab, cnam = setup.member("lab-a", Role.LAB), setup.member("cnam", Role.RECIPIENT)
    ids = []
    for _ in range(12):
        envelope, data = setup.seal(lab, cnam, os.urandom(2000), ttl=HOUR)
        setup.upload(lab, envelope, data)
        ids.append(envelope["payload"]["transfer_id"])
    setup.clock.advance(2 * HOUR)

    class Crash(BaseException):
        pass

    store = setup.relay.payloads
    real_delete, calls = store.delete, []

    def dying_delete(transfer_id: str) -> bool:
        calls.append(transfer_id)
        if len(calls) == 5:
            raise Crash  # the process dies here: state changed, bytes not deleted
        return real_delete(transfer_id)

    store.delete = dying_delete  # type: ignore[method-assign]
    with pytest.raises(Crash):
        setup.relay.services.reaper.run_once()
    assert any(setup.relay.sql.transfers.get(i).state is TransferState.EXPIRED for i in ids)  # type: ignore[union-attr]
    assert len(list(store.ids())) > 0
    for transfer_id in ids:  # nothing is served meanwhile: deadlines are checked at read time
        with pytest.raises(NotFound):
            read_all(setup, cnam, transfer_id)
    assert failed(check(setup)) >= {"payloads of closed transfers"}

    settings = setup.relay.settings
    setup.relay.close()
    restarted = open_relay(settings, setup.clock)  # a new process on the same data directory
    try:
        restarted.services.reaper.run_once()  # what the relay does before serving its first request
        report = check_retention(
            restarted.sql.transfers,
            restarted.payloads,
            restarted.keys,
            setup.clock,
            limits_for(settings),
            settings.epoch_length,
        )
        assert report.ok, report.as_dict()
        assert list(restarted.payloads.ids()) == []
        assert not restarted.sql.transfers.open_past(setup.clock.now())
        assert all(restarted.sql.transfers.get(i).state is TransferState.EXPIRED for i in ids)  # type: ignore[union-attr]
    finally:
        restarted.close()


def test_an_upload_whose_bytes_vanished_restarts_and_a_lost_payload_is_closed(setup: Setup) -> None:
    lab, cnam = setup.member("lab-a", Role.LAB), setup.member("cnam", Role.RECIPIENT)
    uploads = setup.relay.services.uploads
    recovery = setup.relay.services.recovery
    up_env, up_data = setup.seal(lab, cnam, os.urandom(9000))
    transfer, _ = uploads.create(lab.caller, up_env)
    uploads.append(lab.caller, transfer.transfer_id, 0, 4000, digest_of(up_data[:4000]), [up_data[:4000]])
    done_env, done_data = setup.seal(lab, cnam, os.urandom(3000))
    setup.upload(lab, done_env, done_data)
    for tid in (transfer.transfer_id, done_env["payload"]["transfer_id"]):
        setup.relay.payloads.delete(tid)  # a disk lost them
    recovery.recover()
    assert uploads.upload_status(lab.caller, transfer.transfer_id).uploaded == 4000  # too recent to touch yet
    setup.clock.advance(timedelta(minutes=2))
    recovery.recover()
    assert uploads.upload_status(lab.caller, transfer.transfer_id).uploaded == 0  # the sender starts again
    status = uploads.append(lab.caller, transfer.transfer_id, 0, len(up_data), digest_of(up_data), [up_data])
    assert status.state is TransferState.AVAILABLE
    assert setup.relay.sql.transfers.get(done_env["payload"]["transfer_id"]).state is TransferState.EXPIRED  # type: ignore[union-attr]
    assert check(setup).ok


# ------------------------------------------------------------------ the retention check


@pytest.mark.threat("T16")
def test_the_retention_check_fails_on_each_kind_of_leftover(setup: Setup) -> None:
    lab, cnam = setup.member("lab-a", Role.LAB), setup.member("cnam", Role.RECIPIENT)
    envelope, data = setup.seal(lab, cnam, b"x" * 5000, ttl=HOUR)
    setup.upload(lab, envelope, data)
    tid = envelope["payload"]["transfer_id"]
    assert check(setup).ok
    root, keys = setup.relay.payloads.root, setup.relay.keys

    setup.clock.advance(2 * HOUR)  # a stopped relay: nobody reaped
    assert failed(check(setup)) == {
        "payloads past their deadline",
        "transfers open past their deadline",
        "epoch keys past their epoch",
    }
    setup.relay.services.reaper.run_once()
    assert check(setup).ok

    (root / f"{tid}.payload").write_bytes(b"planted")  # bytes of a transfer that is over
    assert failed(check(setup)) == {"payloads of closed transfers"}
    (root / f"{tid}.payload").unlink()
    (root / f"{new_id()}.payload").write_bytes(b"planted")  # bytes of no transfer at all
    assert failed(check(setup)) == {"orphaned payloads"}
    setup.relay.services.reaper.run_once()
    (root / "copy-of-results.csv").write_bytes(b"nir,nom\n")  # anything else in the store
    assert failed(check(setup)) == {"other files in the payload store"}
    (root / "copy-of-results.csv").unlink()
    keys.create(to_epoch(setup.clock.now()) - 3600)  # a key whose epoch has ended
    assert failed(check(setup)) == {"epoch keys past their epoch"}
    setup.relay.services.reaper.run_once()
    assert check(setup).ok


def test_the_retention_check_reports_the_oldest_payload_and_missing_keys(setup: Setup) -> None:
    lab, cnam = setup.member("lab-a", Role.LAB), setup.member("cnam", Role.RECIPIENT)
    first, data = setup.seal(lab, cnam, b"a" * 100, ttl=timedelta(days=5))
    setup.upload(lab, first, data)
    setup.clock.advance(HOUR)
    second, data = setup.seal(lab, cnam, b"b" * 100, ttl=timedelta(days=1))
    setup.upload(lab, second, data)
    report = check(setup)
    assert report.ok
    assert report.payloads == 2
    assert report.oldest is not None
    assert report.oldest["transfer_id"] == first["payload"]["transfer_id"]
    assert report.oldest["age"] == "1h"
    for epoch in setup.relay.keys.epochs():
        setup.relay.keys.destroy(epoch)  # keys lost before their time: payloads unreadable
    assert "epoch keys of open transfers" in failed(check(setup))


def test_a_fresh_data_dir_has_a_private_key_store(tmp_path: Path) -> None:
    (tmp_path / "a.pub").write_bytes(SigningKey.generate().public.to_pem())
    settings = init_data_dir(tmp_path / "relay", tmp_path / "a.pub")
    assert settings.key_dir == settings.data_dir / "keys"
    assert settings.key_dir.stat().st_mode & 0o777 == 0o700
    relay = open_relay(RelaySettings(data_dir=settings.data_dir), ManualClock(T0))
    relay.close()
