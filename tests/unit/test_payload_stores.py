"""What every payload store promises through the port (labrelay.ports.PayloadStore), tried on each: the local
directory of the embedded default and S3 (a real ``moto_server``). Sealed at rest under epoch keys, resumable at any
chunk boundary, visible only once published, unreadable once its epoch key is destroyed, deleted verifiably.

How each keeps it (files and renames; objects, an index and versioned buckets) is tested beside it:
tests/unit/test_retention.py for the directory, tests/unit/test_s3_store.py for S3.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from labrelay.domain.names import new_id
from labrelay.domain.retention import epoch_end
from labrelay.errors import Conflict, EpochKeyGone, NotFound, UsageError
from labrelay.ports import PayloadStore
from labrelay.storage import migrate
from labrelay.storage.files import LocalPayloadStore
from labrelay.storage.keystore import FileKeyStore
from labrelay.storage.s3 import LedgeredS3PayloadStore, S3PayloadStore
from labrelay.storage.sql.engine import Database, sqlite_engine
from labrelay.storage.sql.payload_objects import SqlObjectLedger
from tests.support.payloads import DEADLINE, HOUR, plaintext, upload


@pytest.fixture
def keys(tmp_path: Path) -> FileKeyStore:
    return FileKeyStore(tmp_path / "keys")


@pytest.fixture(params=["local", "s3", "s3-ledger"])
def store(request: pytest.FixtureRequest, tmp_path: Path, keys: FileKeyStore) -> Iterator[PayloadStore]:
    if request.param == "local":
        yield LocalPayloadStore(tmp_path / "payloads", keys, HOUR)
        return
    server = request.getfixturevalue("s3_server")
    client = server.client()
    engine = sqlite_engine(tmp_path / "relay.db")
    try:
        if request.param == "s3":  # the legacy layout: what was written before migration 0009
            yield S3PayloadStore(client, request.getfixturevalue("s3_bucket"), keys, HOUR)
        else:
            migrate.upgrade(engine)
            ledger = SqlObjectLedger(Database(engine))
            yield LedgeredS3PayloadStore(client, request.getfixturevalue("s3_bucket"), keys, HOUR, ledger)
    finally:
        client.close()
        engine.dispose()


def test_sealed_payloads_round_trip_and_resume_at_any_chunk_boundary(store: PayloadStore) -> None:
    plain = plaintext(200_000)
    tid = upload(store, plain, [1, 70_000, 65_536, 64_463])
    assert store.size(tid) == len(plain)
    assert b"".join(store.open(tid)) == plain
    for start in (0, 1, 2, 65_535, 65_537, 70_001, 135_537, 199_999, 200_000):
        assert b"".join(store.open(tid, start)) == plain[start:], start


def test_an_empty_payload_and_an_empty_commit(store: PayloadStore) -> None:
    tid = new_id()
    store.begin(tid, DEADLINE)
    writer = store.writer(tid, 0)
    assert writer.commit() == 0  # nothing written: nothing stored, nothing acknowledged past 0
    assert store.upload_digest(tid) == (0, hashlib.sha256(b"").hexdigest())
    store.publish(tid)
    assert store.size(tid) == 0
    assert list(store.open(tid)) == []


def test_resume_at_a_chunk_boundary_after_an_aborted_writer(store: PayloadStore) -> None:
    plain = plaintext(100_000)
    tid = upload(store, plain, [40_000], publish=False)
    writer = store.writer(tid, 40_000)
    writer.write(b"x" * 30_000)
    writer.abort()  # the request died: nothing of it is stored
    assert store.uploaded(tid) == 40_000
    writer = store.writer(tid, 40_000)
    writer.write(plain[40_000:])
    assert writer.commit() == 100_000
    assert store.uploaded(tid) == 100_000
    assert store.upload_digest(tid) == (100_000, hashlib.sha256(plain).hexdigest())
    store.publish(tid)
    assert b"".join(store.open(tid)) == plain


def test_refused_offsets_and_unknown_uploads(store: PayloadStore) -> None:
    plain = plaintext(3000)
    tid = upload(store, plain, [1000, 1000], publish=False)
    for offset in (999, 1500, 2001, 5000, -1):
        with pytest.raises(Conflict, match=f"ends at offset {offset}"):
            store.writer(tid, offset)
    assert store.uploaded(tid) == 2000  # a refused writer discards nothing
    with pytest.raises(Conflict, match="already exists"):
        store.begin(tid, DEADLINE)
    other = new_id()
    for call in (store.uploaded, store.upload_digest, store.publish, store.size):
        with pytest.raises(NotFound):
            call(other)
    with pytest.raises(NotFound):
        store.writer(other, 0)
    with pytest.raises(NotFound):
        store.open(other)
    with pytest.raises(UsageError):
        store.uploaded("../../etc/passwd")


def test_a_payload_exists_only_once_published(store: PayloadStore) -> None:
    plain = plaintext(70_000)
    tid = upload(store, plain, [70_000], publish=False)
    with pytest.raises(NotFound):
        store.size(tid)
    with pytest.raises(NotFound):
        store.open(tid)
    assert store.has_bytes(tid)
    assert list(store.ids()) == [tid]
    store.publish(tid)
    assert store.size(tid) == 70_000
    assert b"".join(store.open(tid)) == plain
    # Once published, the upload is gone as far as the port goes (as after the local store's rename): no writer
    # can delete a published chunk, and publishing again is refused.
    for call in (store.uploaded, store.upload_digest, store.publish):
        with pytest.raises(NotFound):  # the message is each store's own
            call(tid)
    with pytest.raises(NotFound):
        store.writer(tid, 70_000)
    with pytest.raises(NotFound):
        store.writer(tid, 0)
    assert b"".join(store.open(tid)) == plain


def test_a_destroyed_epoch_key_makes_the_payload_unreadable(store: PayloadStore, keys: FileKeyStore) -> None:
    plain = plaintext(10_000)
    published = upload(store, plain, [10_000])
    pending = upload(store, plain, [5_000], publish=False)
    assert keys.destroy(epoch_end(DEADLINE, HOUR))
    with pytest.raises(EpochKeyGone):
        store.open(published)
    with pytest.raises(EpochKeyGone):
        store.size(published)
    with pytest.raises(EpochKeyGone):
        store.uploaded(pending)
    with pytest.raises(EpochKeyGone):
        store.writer(pending, 5_000)
    assert store.delete(published)
    assert store.delete(pending)


def test_delete_removes_everything_and_says_so(store: PayloadStore) -> None:
    plain = plaintext(80_000)
    published = upload(store, plain, [40_000, 40_000])
    pending = upload(store, plain, [40_000], publish=False)
    assert store.delete(published)
    assert not store.has_bytes(published)
    with pytest.raises(NotFound):
        store.open(published)
    assert store.delete(pending)
    assert not store.has_bytes(pending)
    assert list(store.ids()) == []
    assert store.delete(new_id())  # nothing to delete is verifiably gone too


@pytest.mark.parametrize("chunks", [[1], [65_536], [65_537], [10, 65_526, 65_536, 1]])
def test_chunks_of_any_size_read_back_from_any_offset(store: PayloadStore, chunks: list[int]) -> None:
    plain = plaintext(sum(chunks), str(chunks).encode())
    tid = upload(store, plain, chunks)
    for start in sorted({0, 1, len(plain) // 2, len(plain) - 1, len(plain)}):
        assert b"".join(store.open(tid, start)) == plain[start:]


def test_a_local_replica_resumes_only_where_the_file_really_ends(tmp_path: Path, keys: FileKeyStore) -> None:
    """Each process remembers where its last chunk ended so that the next one needs no scan of the file; another
    process writing to the same directory (replicas sharing it) changes the file, and the memory is not used."""
    one = LocalPayloadStore(tmp_path / "payloads", keys, HOUR)
    two = LocalPayloadStore(tmp_path / "payloads", keys, HOUR)
    plain = plaintext(300_000)
    tid = upload(one, plain, [100_000], publish=False)
    writer = two.writer(tid, 100_000)
    writer.write(plain[100_000:200_000])
    assert writer.commit() == 200_000
    writer = one.writer(tid, 200_000)  # one's memory says 100 000: it reads the file instead
    writer.write(plain[200_000:250_000])
    assert writer.commit() == 250_000
    writer = two.writer(tid, 100_000)  # the sender was told 100 000 (a lost answer): what follows is discarded
    writer.abort()
    writer = one.writer(tid, 100_000)
    writer.write(plain[100_000:])
    assert writer.commit() == 300_000
    assert one.upload_digest(tid) == (300_000, hashlib.sha256(plain).hexdigest())
    with pytest.raises(Conflict):
        one.writer(tid, 250_000)  # no chunk ends there any more, whatever one remembered
    one.publish(tid)
    assert b"".join(two.open(tid)) == plain
