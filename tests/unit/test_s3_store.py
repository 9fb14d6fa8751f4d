"""The S3 payload store against a real S3-compatible server (moto_server in a child process, tests/support/s3server.py).

The same promises as the local store (tests/unit/test_retention.py): sealed at rest under epoch keys, resumable
at any chunk boundary, visible only once published, deleted verifiably; plus what an object store adds: several
replicas, ``kill -9`` at any moment, and a service that goes away.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from labrelay.crypto import at_rest
from labrelay.domain.names import new_id
from labrelay.errors import Conflict, IntegrityError, NotFound, Unavailable
from labrelay.storage.keystore import FileKeyStore
from labrelay.storage.s3 import S3PayloadStore
from tests.support.payloads import DEADLINE, HOUR, finish, plaintext, upload
from tests.support.s3_crash import kill_a_writer_three_times

if TYPE_CHECKING:
    from tests.support.s3server import S3Server


@pytest.fixture
def keys(tmp_path: Path) -> FileKeyStore:
    return FileKeyStore(tmp_path / "keys")


@pytest.fixture
def client(s3_server: S3Server) -> Iterator[Any]:
    made = s3_server.client()
    yield made
    made.close()


@pytest.fixture
def store(client: Any, s3_bucket: str, keys: FileKeyStore) -> S3PayloadStore:
    return S3PayloadStore(client, s3_bucket, keys, HOUR)


def objects(store: S3PayloadStore, prefix: str = "") -> dict[str, bytes]:
    """Every current object in the bucket (whatever its prefix), read raw."""
    out = {}
    listing = store.client.list_objects_v2(Bucket=store.bucket, Prefix=prefix)
    for item in listing.get("Contents", []):
        body = store.client.get_object(Bucket=store.bucket, Key=item["Key"])["Body"]
        with body:
            out[item["Key"]] = body.read()
    return out


def versions(store: S3PayloadStore) -> list[str]:
    listing = store.client.list_object_versions(Bucket=store.bucket)
    return [v["Key"] for v in listing.get("Versions", []) + listing.get("DeleteMarkers", [])]


def chunk_key(transfer_id: str, start: int, end: int) -> str:
    return f"parts/{transfer_id}/{start:016d}-{end:016d}"


# ------------------------------------------------------------------ round trip and resume (the object layout)
# What both stores promise through the port is tests/unit/test_payload_stores.py; here, how S3 keeps it.


def test_the_bucket_holds_a_header_one_object_per_chunk_and_an_index(store: S3PayloadStore) -> None:
    plain = plaintext(200_000)
    tid = upload(store, plain, [1, 70_000, 65_536, 64_463])
    assert sorted(objects(store)) == sorted(
        [f"parts/{tid}/header", f"published/{tid}"]
        + [chunk_key(tid, a, b) for a, b in [(0, 1), (1, 70_001), (70_001, 135_537), (135_537, 200_000)]]
    )
    pending = upload(store, plain, [40_000], publish=False)
    writer = store.writer(pending, 40_000)
    writer.write(b"x" * 30_000)
    writer.abort()  # the request died: no object of it is stored
    assert sorted(objects(store, f"parts/{pending}/")) == [chunk_key(pending, 0, 40_000), f"parts/{pending}/header"]
    assert store.delete(tid)
    assert not any(key.endswith(tid) or f"/{tid}/" in key for key in objects(store))


def test_the_bytes_in_the_bucket_never_contain_the_plaintext(store: S3PayloadStore) -> None:
    plain = plaintext(150_000, b"a lab result")
    tid = upload(store, plain, [100_000, 50_000], publish=False)
    writer = store.writer(tid, 150_000)
    writer.write(b"NIR 1 84 12 75 123 456 78 " * 100)  # spooled, never committed
    writer.abort()
    store.publish(tid)
    stored = objects(store)
    assert len(stored) == 4  # header, two chunks, index
    for data in stored.values():
        for probe in range(0, len(plain) - 32, 4096):
            assert plain[probe : probe + 32] not in data
        assert b"NIR 1 84" not in data
    assert b"".join(store.open(tid)) == plain


def test_a_chunk_stored_but_never_acknowledged_is_discarded_by_the_next_writer(store: S3PayloadStore) -> None:
    """A replica killed after its PUT landed but before ``commit`` returned: the sender was told 40 000, resends
    from there with other chunk sizes, and the orphan must not survive or split the chain."""
    plain = plaintext(100_000)
    tid = upload(store, plain, [40_000, 30_000], publish=False)  # the second was never acknowledged
    assert store.uploaded(tid) == 70_000  # the store cannot know; the relay's metadata says 40 000
    writer = store.writer(tid, 40_000)  # the sender resumes where it was acknowledged
    assert chunk_key(tid, 40_000, 70_000) not in objects(store)
    writer.write(plain[40_000:])
    assert writer.commit() == 100_000
    store.publish(tid)
    assert b"".join(store.open(tid)) == plain
    assert chunk_key(tid, 40_000, 100_000) in objects(store)


def test_a_restart_from_zero_discards_everything_but_the_header(store: S3PayloadStore) -> None:
    plain = plaintext(50_000)
    tid = upload(store, plain, [20_000, 20_000], publish=False)
    writer = store.writer(tid, 0)
    assert sorted(objects(store)) == [f"parts/{tid}/header"]
    writer.write(plain)
    assert writer.commit() == 50_000
    assert store.upload_digest(tid) == (50_000, hashlib.sha256(plain).hexdigest())


def test_a_replica_sees_what_another_wrote(store: S3PayloadStore, client: Any, keys: FileKeyStore) -> None:
    """Stateless replicas: nothing is kept in the store object, everything is in the bucket."""
    plain = plaintext(90_000)
    tid = upload(store, plain, [30_000], publish=False)
    other = S3PayloadStore(client, store.bucket, keys, HOUR)
    assert other.uploaded(tid) == 30_000
    finish(other, tid, plain, 30_000)
    assert b"".join(store.open(tid)) == plain


# ------------------------------------------------------------------ keys and integrity


def test_a_tampered_chunk_fails_its_integrity_check(store: S3PayloadStore) -> None:
    plain = plaintext(3 * at_rest.SEGMENT)
    tid = upload(store, plain, [len(plain)], publish=False)
    key = chunk_key(tid, 0, len(plain))
    data = bytearray(objects(store)[key])
    data[at_rest.SEGMENT_HEAD + 100] ^= 1
    store.client.put_object(Bucket=store.bucket, Key=key, Body=bytes(data))
    with pytest.raises(IntegrityError):
        store.upload_digest(tid)
    store.publish(tid)  # the relay would have refused it (digest); the store must still not serve it
    stream = store.open(tid)
    with pytest.raises(IntegrityError):
        b"".join(stream)


def test_segments_are_bound_to_their_place_and_their_transfer(store: S3PayloadStore) -> None:
    plain = plaintext(3 * at_rest.SEGMENT)
    tid = upload(store, plain, [len(plain)], publish=False)
    key = chunk_key(tid, 0, len(plain))
    data = objects(store)[key]
    size = at_rest.SEGMENT_HEAD + at_rest.SEGMENT + at_rest.TAG_BYTES
    swapped = data[size : 2 * size] + data[:size] + data[2 * size :]
    store.client.put_object(Bucket=store.bucket, Key=key, Body=swapped)  # segments swapped
    with pytest.raises(IntegrityError):
        store.upload_digest(tid)
    store.client.put_object(Bucket=store.bucket, Key=key, Body=data)
    other = upload(store, plain[:10], [10], publish=False)
    store.client.put_object(Bucket=store.bucket, Key=chunk_key(other, 0, len(plain)), Body=data)  # moved
    writer = store.writer(other, len(plain))
    writer.commit()
    with pytest.raises(IntegrityError):
        store.upload_digest(other)


def test_a_published_chunk_replaced_even_validly_sealed_is_refused(store: S3PayloadStore) -> None:
    first, second = plaintext(50_000, b"one"), plaintext(50_000, b"two")
    tid = upload(store, first, [50_000])
    key = chunk_key(tid, 0, 50_000)
    original = objects(store)[key]
    # An attacker with write access to the bucket only; re-sealing needs the data key, so let the store do it.
    header = objects(store)[f"parts/{tid}/header"]
    dek = at_rest.open_header(tid, header, store.keys.key)
    sink = io.BytesIO()
    segments = at_rest.SegmentWriter(sink, dek, tid, 0)
    segments.write(second)
    segments.finish()
    store.client.put_object(Bucket=store.bucket, Key=key, Body=sink.getvalue())
    with pytest.raises(IntegrityError, match="changed"):
        b"".join(store.open(tid))
    store.client.put_object(Bucket=store.bucket, Key=key, Body=original)  # same bytes, same ETag: served again
    assert b"".join(store.open(tid)) == first


def test_a_lost_chunk_is_integrity_but_a_concurrent_delete_is_not_found(store: S3PayloadStore) -> None:
    plain = plaintext(100_000)
    tid = upload(store, plain, [50_000, 50_000])
    store.client.delete_object(Bucket=store.bucket, Key=chunk_key(tid, 50_000, 100_000))
    with pytest.raises(IntegrityError, match="lost a chunk"):
        b"".join(store.open(tid))
    tid = upload(store, plain, [50_000, 50_000])
    stream = store.open(tid)
    assert next(stream) == plain[:50_000]  # a download under way when the receipt deletes it
    assert store.delete(tid)
    with pytest.raises(NotFound, match="deleted while being read"):
        b"".join(stream)


def test_a_malformed_index_is_refused(store: S3PayloadStore) -> None:
    plain = plaintext(1000)
    tid = upload(store, plain, [500, 500])
    index = objects(store)[f"published/{tid}"]
    truncated = index.replace(b'"size":1000', b'"size":500')  # chunks and size disagree
    assert truncated != index
    for body in (b"not json", truncated, index.replace(tid.encode(), new_id().encode())):
        store.client.put_object(Bucket=store.bucket, Key=f"published/{tid}", Body=body)
        with pytest.raises(IntegrityError, match="malformed"):
            store.size(tid)


def test_read_segments_refuses_short_long_and_oversized_streams() -> None:
    dek, tid = at_rest.new_key(), new_id()
    sink = io.BytesIO()
    segments = at_rest.SegmentWriter(sink, dek, tid, 100)
    segments.write(plaintext(at_rest.SEGMENT + 10))
    segments.finish()
    sealed = sink.getvalue()
    end = 100 + at_rest.SEGMENT + 10
    assert b"".join(at_rest.read_segments(io.BytesIO(sealed).read, dek, tid, 100, end)) == plaintext(
        at_rest.SEGMENT + 10
    )
    assert (
        b"".join(at_rest.read_segments(io.BytesIO(sealed).read, dek, tid, 100, end, 100 + at_rest.SEGMENT + 4))
        == (plaintext(at_rest.SEGMENT + 10)[-6:])
    )
    bad = {
        "short": (sealed[:-1], end),
        "cut after a segment": (sealed[: at_rest.SEGMENT_HEAD + at_rest.SEGMENT + at_rest.TAG_BYTES], end),
        "trailing bytes": (sealed + b"\x00", end),
        "fewer bytes than the range": (sealed, end + 1),
        "more bytes than the range": (sealed, end - 1),
    }
    for data, until in bad.values():
        with pytest.raises(IntegrityError):
            b"".join(at_rest.read_segments(io.BytesIO(data).read, dek, tid, 100, until))
    with pytest.raises(IntegrityError):  # the right bytes at the wrong offset
        b"".join(at_rest.read_segments(io.BytesIO(sealed).read, dek, tid, 0, end - 100))


# ------------------------------------------------------------------ housekeeping


def test_delete_leaves_no_old_version_in_a_versioned_bucket(
    s3_server: S3Server, client: Any, keys: FileKeyStore
) -> None:
    store = S3PayloadStore(client, s3_server.create_bucket(versioned=True), keys, HOUR)
    plain = plaintext(60_000)
    tid = upload(store, plain, [20_000, 20_000], publish=False)
    writer = store.writer(tid, 20_000)  # discards 20 000..40 000: no old version of it stays behind either
    assert all(not key.endswith(f"{20_000:016d}-{40_000:016d}") for key in versions(store))
    writer.write(plain[20_000:])
    writer.commit()
    store.publish(tid)
    assert b"".join(store.open(tid)) == plain
    assert list(store.ids()) == [tid]
    assert store.delete(tid)
    assert versions(store) == []  # no version, no delete marker: nothing to restore
    assert list(store.ids()) == []


def test_ids_has_bytes_and_strays(client: Any, s3_bucket: str, keys: FileKeyStore) -> None:
    store = S3PayloadStore(client, s3_bucket, keys, HOUR, prefix="relay-a/")
    neighbour = S3PayloadStore(client, s3_bucket, keys, HOUR, prefix="relay-b/")
    plain = plaintext(5000)
    published = upload(store, plain, [5000])
    pending = upload(store, plain, [2000], publish=False)
    foreign = upload(neighbour, plain, [5000])
    assert list(store.ids()) == sorted([published, pending])
    assert list(neighbour.ids()) == [foreign]
    assert store.has_bytes(published)
    assert store.has_bytes(pending)
    assert not store.has_bytes(foreign)
    assert store.strays() == []
    assert neighbour.strays() == []
    odd = [
        "relay-a/notes.txt",
        f"relay-a/parts/{pending}/junk",
        f"relay-a/parts/{pending}/{2000:016d}-{1000:016d}",  # a chunk that ends before it starts
        "relay-a/parts/not-an-id/header",
        "relay-a/published/not-an-id",
        f"relay-a/published/{published}/extra",
        f"relay-a/other/{published}",
    ]
    for key in odd:
        client.put_object(Bucket=s3_bucket, Key=key, Body=b"?")
    client.put_object(Bucket=s3_bucket, Key="outside-any-prefix", Body=b"?")
    assert store.strays() == sorted(odd)
    assert neighbour.strays() == []
    assert list(store.ids()) == sorted([published, pending])  # strays name no transfer
    assert store.uploaded(pending) == 2000  # nor do they disturb one
    orphan = new_id()  # a delete cut short by a crash: chunks left without header or index
    client.put_object(Bucket=s3_bucket, Key=f"relay-a/{chunk_key(orphan, 0, 10)}", Body=b"?")
    assert orphan in list(store.ids())
    assert store.has_bytes(orphan)
    with pytest.raises(Conflict):
        store.begin(orphan, DEADLINE)  # a new upload must not inherit another data key's chunks
    assert store.delete(orphan)
    assert orphan not in list(store.ids())
    store.begin(orphan, DEADLINE)
    assert store.uploaded(orphan) == 0


# ------------------------------------------------------------------ faults


def test_an_unreachable_store_is_unavailable_fast_and_recovers(own_s3_server: S3Server, keys: FileKeyStore) -> None:
    server = own_s3_server
    client = server.client(timeout=2)
    try:
        bucket = server.create_bucket()
        store = S3PayloadStore(client, bucket, keys, HOUR)
        plain = plaintext(2 * at_rest.SEGMENT + 100)
        tid = upload(store, plain, [at_rest.SEGMENT, at_rest.SEGMENT + 100])
        stream = store.open(tid)
        assert next(stream) == plain[: at_rest.SEGMENT]
        server.stop()
        calls = [
            lambda: b"".join(stream),  # a download under way
            lambda: store.size(tid),
            lambda: store.begin(new_id(), DEADLINE),
            lambda: store.writer(tid, 0),
            lambda: store.delete(tid),
            lambda: list(store.ids()),
            lambda: store.has_bytes(tid),
            store.strays,
        ]
        # Fast by construction (how fast is a benchmark's business, not a test's): short timeouts, few attempts.
        config = client.meta.config
        assert (config.connect_timeout, config.read_timeout) == (2, 2)
        assert config.retries["total_max_attempts"] == 2  # two attempts in all, as the adapter promises
        for call in calls:
            with pytest.raises(Unavailable) as caught:
                call()
            message = str(caught.value)
            assert "payload storage" in message
            assert "unavailable" in message
            assert "retry" in message
            assert plain[:8].hex() not in message
        server.start()  # moto starts empty: the bucket must be made again
        server.create_bucket(bucket)
        again = upload(store, plain, [len(plain)])
        assert b"".join(store.open(again)) == plain
    finally:
        client.close()


def test_every_put_retried_after_its_answer_was_lost_still_succeeds(
    client: Any, s3_bucket: str, keys: FileKeyStore
) -> None:
    """botocore retries a PUT whose answer it did not get: the object may already be there. The conditional
    creations (header, index) must then recognise their own object rather than report a conflict."""
    store = S3PayloadStore(client, s3_bucket, keys, HOUR)
    lost: list[str] = []

    def lose_the_first_answer(response: Any, attempts: int, request_dict: dict[str, Any], **_: Any) -> int | None:
        if response is not None and response[0].status_code == 200 and attempts == 1:
            lost.append(request_dict["url_path"])
            return 0  # retry at once, as after a connection reset
        return None

    client.meta.events.register("needs-retry.s3.PutObject", lose_the_first_answer)
    plain = plaintext(100_000)
    tid = upload(store, plain, [60_000, 40_000])
    assert len(lost) == 4  # header, two chunks, index: each stored twice
    assert b"".join(store.open(tid)) == plain
    with pytest.raises(Conflict):
        store.begin(tid, DEADLINE)  # a different header is still a conflict


def test_a_missing_bucket_is_unavailable_not_a_missing_payload(client: Any, keys: FileKeyStore) -> None:
    """Recovery closes transfers whose bytes are gone: a vanished bucket must not look like that."""
    store = S3PayloadStore(client, "no-such-bucket-here", keys, HOUR)
    tid = new_id()
    for call in (store.size, store.uploaded, store.has_bytes, store.delete):
        with pytest.raises(Unavailable, match="NoSuchBucket"):
            call(tid)


def test_a_writer_killed_at_any_moment_loses_nothing_acknowledged(
    store: S3PayloadStore, s3_server: S3Server, tmp_path: Path
) -> None:
    """A replica writing chunk after chunk is killed (SIGKILL) at three moments: every chunk it acknowledged is
    there, the next writer resumes exactly there, and the payload is whole in the end."""
    kill_a_writer_three_times(store, s3_server.endpoint, tmp_path / "keys", None)
