"""The S3 payload store with its metadata in the relay's database (decision 0021), against moto_server: no LIST on
the way of an upload or a download, three requests for a small transfer, and the legacy store's promises kept (the
chain of acknowledged chunks, a chunk swapped after publication refused, deletion verified, ``kill -9`` at any
moment of a writer). The legacy layout is tests/unit/test_s3_store.py; what every store promises,
tests/unit/test_payload_stores.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import Engine

from labrelay.domain.names import new_id
from labrelay.errors import Conflict, IntegrityError, NotFound
from labrelay.storage import migrate
from labrelay.storage.keystore import FileKeyStore
from labrelay.storage.s3 import LedgeredS3PayloadStore, S3PayloadStore
from labrelay.storage.sql.engine import Database, sqlite_engine
from labrelay.storage.sql.payload_objects import SqlObjectLedger
from tests.support.payloads import DEADLINE, HOUR, finish, plaintext, upload
from tests.support.s3_crash import kill_a_writer_three_times

if TYPE_CHECKING:
    from tests.support.s3server import S3Server


@pytest.fixture
def keys(tmp_path: Path) -> FileKeyStore:
    return FileKeyStore(tmp_path / "keys")


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    made = sqlite_engine(tmp_path / "relay.db")
    migrate.upgrade(made)
    yield made
    made.dispose()


@pytest.fixture
def client(s3_server: S3Server) -> Iterator[Any]:
    made = s3_server.client()
    yield made
    made.close()


class Requests:
    """Every S3 operation the client sends (botocore's before-call event), in order."""

    def __init__(self, client: Any) -> None:
        self.sent: list[str] = []
        client.meta.events.register("before-call.s3.*", self._seen)

    def _seen(self, model: Any, **_: Any) -> None:
        self.sent.append(model.name)

    def take(self) -> list[str]:
        out, self.sent = self.sent, []
        return out


def ledgered(client: Any, bucket: str, keys: FileKeyStore, engine: Engine) -> LedgeredS3PayloadStore:
    return LedgeredS3PayloadStore(client, bucket, keys, HOUR, SqlObjectLedger(Database(engine)))


@pytest.fixture
def store(client: Any, s3_bucket: str, keys: FileKeyStore, engine: Engine) -> LedgeredS3PayloadStore:
    return ledgered(client, s3_bucket, keys, engine)


def keys_in(store: S3PayloadStore) -> list[str]:
    listing = store.client.list_object_versions(Bucket=store.bucket)
    return sorted(v["Key"] for v in listing.get("Versions", []) + listing.get("DeleteMarkers", []))


def chunk_key(transfer_id: str, start: int, end: int) -> str:
    return f"parts/{transfer_id}/{start:016d}-{end:016d}"


@pytest.mark.parametrize("versioned", [False, True])
def test_a_small_transfer_costs_three_requests_and_no_listing(
    s3_server: S3Server, client: Any, keys: FileKeyStore, engine: Engine, versioned: bool
) -> None:
    store = ledgered(client, s3_server.create_bucket(versioned=versioned), keys, engine)
    requests = Requests(client)
    plain = plaintext(222_000)
    tid = new_id()
    store.begin(tid, DEADLINE)
    assert store.uploaded(tid) == 0
    writer = store.writer(tid, 0)
    writer.write(plain)
    assert writer.commit() == len(plain)
    store.publish(tid)
    assert requests.take() == ["PutObject"]  # the upload: its one chunk; header, chain and index are in the database
    assert store.size(tid) == len(plain)
    assert b"".join(store.open(tid)) == plain
    assert requests.take() == ["GetObject"]
    assert store.delete(tid)  # verified without a listing: the ledger named the one version ever written
    assert requests.take() == ["DeleteObjects"]
    assert keys_in(store) == []  # no version, no delete marker left
    assert store.ledger.rows(tid) == []
    with pytest.raises(NotFound):
        store.size(tid)


def test_the_bucket_holds_only_sealed_chunks(store: LedgeredS3PayloadStore) -> None:
    plain = plaintext(200_000, b"a lab result")
    tid = upload(store, plain, [1, 70_000, 65_536, 64_463])
    assert keys_in(store) == sorted(
        chunk_key(tid, a, b) for a, b in [(0, 1), (1, 70_000 + 1), (70_001, 135_537), (135_537, 200_000)]
    )
    for key in keys_in(store):
        data = store.client.get_object(Bucket=store.bucket, Key=key)["Body"].read()
        for probe in range(0, len(plain) - 32, 4096):
            assert plain[probe : probe + 32] not in data
    assert b"".join(store.open(tid, 70_001)) == plain[70_001:]


def test_a_chunk_stored_but_never_acknowledged_is_discarded_by_the_next_writer(store: LedgeredS3PayloadStore) -> None:
    plain = plaintext(100_000)
    tid = upload(store, plain, [40_000, 30_000], publish=False)  # the second was never acknowledged
    writer = store.writer(tid, 40_000)
    assert chunk_key(tid, 40_000, 70_000) not in keys_in(store)
    writer.write(plain[40_000:])
    assert writer.commit() == 100_000
    store.publish(tid)
    assert b"".join(store.open(tid)) == plain
    with pytest.raises(Conflict):
        store.begin(tid, DEADLINE)
    with pytest.raises(NotFound, match="published"):
        store.writer(tid, 100_000)
    assert store.delete(tid)
    assert keys_in(store) == []


def test_a_replica_sees_what_another_wrote(store: LedgeredS3PayloadStore, client: Any, keys: FileKeyStore) -> None:
    plain = plaintext(90_000)
    tid = upload(store, plain, [30_000], publish=False)
    other = LedgeredS3PayloadStore(client, store.bucket, keys, HOUR, store.ledger)  # the same database
    assert other.uploaded(tid) == 30_000
    finish(other, tid, plain, 30_000)
    assert b"".join(store.open(tid)) == plain


def test_a_published_chunk_replaced_or_lost_is_refused_and_a_concurrent_delete_is_not_found(
    store: LedgeredS3PayloadStore,
) -> None:
    plain = plaintext(100_000)
    tid = upload(store, plain, [50_000, 50_000])
    other = upload(store, plain, [50_000, 50_000])
    moved = store.client.get_object(Bucket=store.bucket, Key=chunk_key(other, 0, 50_000))["Body"].read()
    store.client.put_object(Bucket=store.bucket, Key=chunk_key(tid, 0, 50_000), Body=moved)
    with pytest.raises(IntegrityError, match="changed"):  # its ETag is not the one recorded
        b"".join(store.open(tid))
    store.client.delete_object(Bucket=store.bucket, Key=chunk_key(other, 50_000, 100_000))
    with pytest.raises(IntegrityError, match="lost a chunk"):
        b"".join(store.open(other))
    tid = upload(store, plain, [50_000, 50_000])
    stream = store.open(tid)
    assert next(stream) == plain[:50_000]  # a download under way when the receipt deletes it
    assert store.delete(tid)
    with pytest.raises(NotFound, match="deleted while being read"):
        b"".join(stream)


def test_a_put_retried_after_its_answer_was_lost_is_deleted_by_listing_its_versions(
    s3_server: S3Server, client: Any, keys: FileKeyStore, engine: Engine
) -> None:
    """botocore resent a chunk whose answer it lost: a versioned bucket may hold two versions and the ledger names
    one. Deletion then lists the transfer's versions, as the legacy store always did, and is verified only when
    nothing is left."""
    store = ledgered(client, s3_server.create_bucket(versioned=True), keys, engine)
    lost: list[str] = []

    def lose_the_first_answer(response: Any, attempts: int, request_dict: dict[str, Any], **_: Any) -> int | None:
        if response is not None and response[0].status_code == 200 and attempts == 1 and not lost:
            lost.append(request_dict["url_path"])
            return 0
        return None

    client.meta.events.register("needs-retry.s3.PutObject", lose_the_first_answer)
    plain = plaintext(60_000)
    tid = upload(store, plain, [30_000, 30_000])
    assert len(lost) == 1
    assert len(keys_in(store)) == 3  # the first chunk twice
    assert [r.attempts for r in store.ledger.rows(tid) if r.name.startswith("0")] == [2, 1]
    requests = Requests(client)
    assert store.delete(tid)
    assert "ListObjectVersions" in requests.take()
    assert keys_in(store) == []
    assert store.ledger.rows(tid) == []


def test_versioning_enabled_after_the_upload_does_not_leave_the_ciphertext_behind_a_delete_marker(
    s3_server: S3Server, client: Any, keys: FileKeyStore, engine: Engine
) -> None:
    """Chunks PUT to an unversioned bucket have no version id; if the operator enables versioning before deletion,
    a delete by key only adds a delete marker and the ciphertext stays as a noncurrent version. Deletion must see
    the marker in the answer, list the transfer's versions and purge them, and be verified only when none is left."""
    bucket = s3_server.create_bucket(versioned=False)
    store = ledgered(client, bucket, keys, engine)
    tid = upload(store, plaintext(60_000), [30_000, 30_000])
    assert all(r.version is None for r in store.ledger.rows(tid) if r.name[0].isdigit())
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    requests = Requests(client)
    assert store.delete(tid)
    assert "ListObjectVersions" in requests.take()
    assert keys_in(store) == []  # no noncurrent version, no delete marker
    assert store.ledger.rows(tid) == []


def test_uploads_written_before_the_ledger_are_served_and_deleted_the_legacy_way(
    store: LedgeredS3PayloadStore, client: Any, keys: FileKeyStore
) -> None:
    legacy = S3PayloadStore(client, store.bucket, keys, HOUR)
    plain = plaintext(50_000)
    published = upload(legacy, plain, [50_000])
    pending = upload(legacy, plain, [20_000], publish=False)
    assert sorted(store.ids()) == sorted([published, pending])
    assert b"".join(store.open(published)) == plain
    assert store.uploaded(pending) == 20_000
    finish(store, pending, plain, 20_000)
    assert b"".join(store.open(pending)) == plain
    assert store.ledger.rows(pending) == []  # kept the legacy way to the end
    assert store.delete(published)
    assert store.delete(pending)
    assert keys_in(store) == []


def test_ids_and_has_bytes_cover_the_ledger_and_the_bucket(store: LedgeredS3PayloadStore) -> None:
    begun = new_id()
    store.begin(begun, DEADLINE)  # nothing in the bucket yet
    assert store.has_bytes(begun)
    orphan = new_id()
    store.client.put_object(Bucket=store.bucket, Key=chunk_key(orphan, 0, 10), Body=b"x")  # not in the ledger
    assert list(store.ids()) == sorted([begun, orphan])
    assert store.delete(orphan)  # listed, purged, listed again
    assert store.delete(begun)
    assert list(store.ids()) == []
    assert not store.has_bytes(begun)


def test_a_writer_killed_at_any_moment_loses_nothing_acknowledged(
    store: LedgeredS3PayloadStore, s3_server: S3Server, tmp_path: Path
) -> None:
    tid = kill_a_writer_three_times(store, s3_server.endpoint, tmp_path / "keys", tmp_path / "relay.db")
    assert store.delete(tid)
    assert keys_in(store) == []
    assert store.ledger.rows(tid) == []


def test_the_migration_refuses_to_drop_a_ledger_that_holds_payloads(engine: Engine, tmp_path: Path) -> None:
    from alembic import command  # noqa: PLC0415

    ledger = SqlObjectLedger(Database(engine))
    assert ledger.create(new_id(), "header", "aGVhZGVy")
    cfg = migrate._config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        with pytest.raises(RuntimeError, match="ledger holds"):
            command.downgrade(cfg, "0008")
    assert migrate.current_revision(engine) == "0009"
    ledger.remove(ledger.ids()[0])
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0008")
    assert migrate.current_revision(engine) == "0008"
