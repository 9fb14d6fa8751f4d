"""Ciphertext payloads in an S3-compatible bucket, for a relay run as several stateless replicas.

Two stores: ``LedgeredS3PayloadStore`` (what the relay runs, decision 0021) keeps only the chunk objects in the
bucket and the header, the chunk chain and the published index in the relay's database, so that uploads and
downloads never list the bucket; ``S3PayloadStore``, described below, is the layout before migration 0009, which
the ledgered store still reads and deletes for transfers stored that way.

The semantics are those of ``labrelay.storage.files`` (read it first): what is stored is the payload sealed in the
at-rest format of ``labrelay.crypto.at_rest`` under a data key wrapped under the key of the deadline's epoch (from
the ``KeyStore``); offsets and sizes are the payload's own. Only the layout differs, because an object store has no
append, no rename and no fsync. Under the store's ``prefix``::

    parts/<id>/header                       the at-rest header (epoch, wrapped data key): the upload exists
    parts/<id>/<start:016d>-<end:016d>      one committed chunk: the sealed segments of payload bytes start..end
    published/<id>                          the index (JSON: header, then each chunk's range, stored size and
                                            ETag, in order); the payload exists iff this object does

Why it survives ``kill -9`` of any replica at any moment:

- Every write is one PUT of a whole object, which S3 shows whole or not at all and acknowledges once durable. A
  chunk is spooled (already sealed: never plaintext) to a ``SpooledTemporaryFile`` and PUT only by ``commit``, so a
  writer's ``commit`` returning means the chunk is stored. No multipart upload: a killed one leaves parts that no
  listing shows and that ``delete`` could not prove gone; chunks are bounded by the relay's ``max_chunk_bytes``
  (64 MiB), far below the 5 GiB of a single PUT. Chunk PUTs carry Content-MD5 so that the service refuses a body
  damaged on the way rather than acknowledging it.
- Chunks are never rewritten in place. A chunk whose PUT landed but whose ``commit`` never returned (a crash, a
  timeout) was not acknowledged: the next ``writer(id, offset)`` deletes every chunk that is not on the chain of
  chunks from 0 to ``offset`` before it writes anything (the transfer lock of ``labrelay.ports.TransferLocks``
  serialises writers across replicas). ``uploaded`` is the farthest end of a chain of chunks from 0.
- ``publish`` is one PUT of the index (``If-None-Match: *``). Before it nothing can be read as a payload; after it
  the upload is gone as far as the port is concerned (``uploaded``, ``writer``, ``upload_digest`` and ``publish``
  answer ``NotFound``, as with the local store once renamed), so no writer can touch a published chunk. ``open``
  reads each chunk with ``If-Match`` its published ETag: a chunk swapped after publication fails as
  ``IntegrityError`` even if it is validly sealed. Segments authenticate the transfer id and their absolute offset,
  so chunks cannot be moved, swapped or spliced either; a published chunk that vanished while its index remains is
  ``IntegrityError`` too, but one deleted with its index while being read (a receipt, the reaper) is ``NotFound``.
- ``delete`` removes the index first (the payload stops being served at once), then every version and delete
  marker of every object of the transfer, so that a versioned bucket keeps no older copy, and lists versions again:
  True only when nothing at all is left. A crash half-way leaves objects that ``ids`` still reports, for recovery.
- ``begin`` and ``publish`` create their object with ``If-None-Match: *``; when botocore retried such a PUT whose
  answer was lost, the object found is compared with the one sent: the same bytes are this very PUT (success),
  other bytes are a conflict.
- ``open`` streams: the index is read first (``NotFound``, ``EpochKeyGone`` at once, as the local store does), then
  each chunk's body is parsed segment by segment (``at_rest.read_segments``), never loaded whole.

Errors: a missing object is ``NotFound``; a connection failure, timeout, 5xx, throttling or any other refusal of
the service (a missing bucket, bad credentials) is ``Unavailable`` saying the payload storage is unavailable and to
retry, and never holds payload bytes. Existence is never asked with HEAD, whose bodiless 404 cannot tell a missing
object from a missing bucket (a vanished bucket must not read as "bytes lost", which recovery would act on).

Assumptions: strong read-after-write and list-after-write consistency (AWS S3 since 2020, MinIO, Ceph RGW).
``If-None-Match``/``If-Match`` are used where the service has them; one that answers NotImplemented to a
conditional PUT gets a plain PUT after the existence check (the transfer lock makes that enough). The credentials
need s3:GetObject, s3:PutObject, s3:DeleteObject, s3:DeleteObjectVersion, s3:ListBucket and s3:ListBucketVersions
on the prefix (a service without ListObjectVersions falls back to plain listings). The bucket must hold nothing
else under ``prefix`` (``strays`` reports, by full key, anything that is not ours) and should have no object
lock; add a lifecycle rule aborting incomplete multipart uploads if anything else writes to the bucket. A chunk
being written is held in memory up to 8 MiB, then in a temporary file (``TMPDIR``), sealed.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from labrelay.crypto.at_rest import HEADER_BYTES, SegmentWriter, make_header, open_header, read_segments
from labrelay.domain.names import check_transfer_id, is_transfer_id
from labrelay.domain.retention import epoch_end
from labrelay.errors import Conflict, IntegrityError, NotFound, StorageFull, TooLarge, Unavailable
from labrelay.ports import KeyStore
from labrelay.storage.ledger import LedgerRow, ObjectLedger

SPOOL_BYTES = 8 * 1024**2
"""A chunk being written stays in memory up to this size, then goes to a temporary file (sealed bytes only)."""
MAX_PUT_BYTES = 5 * 1024**3
"""The largest object one S3 PUT may create."""
READ_BLOCK = 1 << 20
INDEX_FORMAT = "labrelay-s3-index-v1"
_CHUNK = re.compile(r"([0-9]{16})-([0-9]{16})")
_HEADER = "header"
_DELETE_BATCH = 1000


def s3_client(
    endpoint_url: str,
    region: str,
    access_key: str,
    secret_key: str,
    timeout: float = 5.0,
    max_connections: int = 64,
) -> Any:
    """A boto3 S3 client that fails fast when the service is unreachable: ``timeout`` seconds per read, at most
    2 s to connect, two attempts in all (a refused connection fails in milliseconds, a silent one in about 5 s).
    Path-style addressing, and checksums only where the API requires them, for S3-compatible services (MinIO,
    Ceph) as well as AWS. Empty ``endpoint_url`` means AWS; empty credentials, boto3's default chain
    (environment, instance role). ``max_connections``: concurrent requests (a download holds one while it
    streams)."""
    config = Config(
        connect_timeout=min(timeout, 2.0),
        read_timeout=timeout,
        retries={"total_max_attempts": 2, "mode": "standard"},  # botocore: max_attempts counts retries only
        s3={"addressing_style": "path"},
        signature_version="s3v4",
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=max_connections,
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url or None,
        region_name=region or None,
        aws_access_key_id=access_key or None,
        aws_secret_access_key=secret_key or None,
        config=config,
    )


# ------------------------------------------------------------------ errors


class _Missing(Exception):
    """The object does not exist (S3 NoSuchKey)."""


class _Precondition(Exception):
    """A conditional request's condition failed (HTTP 412)."""


class _NotImplemented(Exception):
    """The service does not implement this request or one of its headers (HTTP 501)."""


def _code(exc: ClientError) -> tuple[str, int]:
    error = exc.response.get("Error", {}) or {}
    status = (exc.response.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode", 0)
    return str(error.get("Code", "")), int(status or 0)


def _unavailable(what: str, reason: str) -> Unavailable:
    return Unavailable(f"the payload storage (S3) is unavailable while {what} ({reason}); retry later")


def _translate(exc: Exception, what: str) -> Exception:
    """What a botocore failure means to the port. Messages name the operation and the service's error code only,
    never a body."""
    if isinstance(exc, ClientError):
        code, status = _code(exc)
        if code == "NoSuchKey":
            return _Missing(what)
        if code == "PreconditionFailed" or status == 412:
            return _Precondition(what)
        if code == "NotImplemented" or status == 501:
            return _NotImplemented(what)
        return _unavailable(what, f"{code or 'error'}, HTTP {status}")
    return _unavailable(what, type(exc).__name__)


def _spool_error(exc: OSError) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull("no space left to spool an upload chunk before sending it to the payload storage")
    return Unavailable(f"spooling an upload chunk failed: {os.strerror(exc.errno or 0)}; retry later")


# ------------------------------------------------------------------ layout


@dataclass(frozen=True, slots=True)
class _Chunk:
    start: int
    end: int
    stored: int  # bytes of the object
    etag: str

    def name(self) -> str:
        return f"{self.start:016d}-{self.end:016d}"


@dataclass(frozen=True, slots=True)
class _Entry:
    """One object version (or delete marker) as a listing shows it."""

    key: str
    version: str | None  # None: the service has no versions API, delete the key itself
    latest: bool
    marker: bool
    size: int
    etag: str


def _chain(chunks: list[_Chunk], target: int | None = None) -> list[_Chunk] | None:
    """The chunks from 0 to ``target`` one after another (to the farthest reachable end when ``target`` is None);
    None if ``target`` cannot be reached. Deterministic: a position is reached through the first chunk found."""
    by_start: dict[int, list[_Chunk]] = {}
    for chunk in sorted(chunks, key=lambda c: (c.start, c.end)):
        by_start.setdefault(chunk.start, []).append(chunk)
    came: dict[int, _Chunk | None] = {0: None}
    for start in sorted(by_start):  # chunks only go forward: ascending starts see every way in first
        if start not in came:
            continue
        for chunk in by_start[start]:
            came.setdefault(chunk.end, chunk)
    end = max(came) if target is None else target
    if end not in came:
        return None
    path: list[_Chunk] = []
    step = came[end]
    while step is not None:
        path.append(step)
        step = came[step.start]
    return path[::-1]


class _S3Writer:
    """Seals what it is given into a spooled chunk; ``commit`` PUTs it as one object, ``abort`` drops it."""

    def __init__(
        self,
        store: S3PayloadStore,
        transfer_id: str,
        dek: bytes,
        offset: int,
        put: Callable[[str, int, int, IO[bytes], int], None] | None = None,
    ) -> None:
        self._store = store
        self._put = put or store._put_chunk
        self._id = transfer_id
        self._offset = offset
        self._spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES, mode="w+b")  # noqa: SIM115 - closed by commit or abort
        self._segments = SegmentWriter(self._spool, dek, transfer_id, offset)
        self._closed = False

    def write(self, data: bytes) -> None:
        try:
            self._segments.write(data)
        except OSError as exc:
            self.abort()
            raise _spool_error(exc) from exc

    def commit(self) -> int:
        try:
            end = self._segments.finish()
            stored = self._spool.tell()
            if end > self._offset:
                if stored > MAX_PUT_BYTES:
                    raise TooLarge(f"an upload chunk of {end - self._offset} bytes is too large for one S3 PUT")
                self._spool.seek(0)
                self._put(self._id, self._offset, end, self._spool, stored)
        except OSError as exc:
            raise _spool_error(exc) from exc
        finally:
            self.abort()
        return end

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            self._spool.close()


class S3PayloadStore:
    """``labrelay.ports.PayloadStore`` on an S3-compatible bucket, sealing under epoch keys from ``keys``.

    ``client`` is a boto3 S3 client (``s3_client``); boto3 clients are thread-safe, so one store serves every
    request of a replica. ``prefix`` (e.g. ``"relay-1/"``) scopes every key the store reads, writes or lists."""

    def __init__(self, client: Any, bucket: str, keys: KeyStore, epoch_length: timedelta, prefix: str = "") -> None:
        if not bucket:
            raise ValueError("an S3 payload store needs a bucket")
        self.client = client
        self.bucket = bucket
        self.keys = keys
        self.epoch_length = epoch_length
        self.prefix = prefix
        self._conditional_puts = True
        self._versions_api = True

    # -------------------------------------------------------------- keys

    def _parts(self, transfer_id: str) -> str:
        return f"{self.prefix}parts/{check_transfer_id(transfer_id)}/"

    def _index_key(self, transfer_id: str) -> str:
        return f"{self.prefix}published/{check_transfer_id(transfer_id)}"

    # -------------------------------------------------------------- requests

    def _call(self, what: str, operation: str, **kwargs: Any) -> Any:
        try:
            return getattr(self.client, operation)(Bucket=self.bucket, **kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise _translate(exc, what) from exc

    def _put(self, what: str, key: str, body: IO[bytes] | bytes, length: int, md5: str, *, exclusive: bool) -> str:
        """PUT one whole object; with ``exclusive``, ``_Precondition`` if it exists. Returns its ETag."""
        args: dict[str, Any] = {"Key": key, "Body": body, "ContentLength": length, "ContentMD5": md5}
        if exclusive and self._conditional_puts:
            try:
                return str(self._call(what, "put_object", IfNoneMatch="*", **args)["ETag"])
            except _NotImplemented:
                self._conditional_puts = False  # the caller checked existence first; the transfer lock does the rest
                if not isinstance(body, bytes):
                    body.seek(0)
        try:
            return str(self._call(what, "put_object", **args)["ETag"])
        except _NotImplemented as exc:
            raise _unavailable(what, "NotImplemented") from exc

    def _create(self, what: str, key: str, data: bytes) -> bool:
        """PUT a small object unless ``key`` exists: False if another object is there. An identical one counts as
        created: it is this very PUT, retried by botocore after its answer was lost."""
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")
        try:
            self._put(what, key, data, len(data), md5, exclusive=True)
        except _Precondition:
            try:
                return self._read_small(what, key, len(data)) == data
            except (_Missing, IntegrityError):
                return False
        return True

    def _get(self, what: str, key: str, etag: str | None = None) -> Any:
        """The GetObject response (its ``Body`` streams); ``_Missing``, or ``_Precondition`` when not ``etag``."""
        return self._call(what, "get_object", Key=key, **({"IfMatch": etag} if etag else {}))

    def _read_small(self, what: str, key: str, limit: int) -> bytes:
        response = self._get(what, key)
        body = response["Body"]
        try:
            if int(response.get("ContentLength", 0)) > limit:
                raise IntegrityError(f"stored object {key} is larger than it can be")
            data: bytes = body.read()
        except (BotoCoreError, ClientError) as exc:
            raise _translate(exc, what) from exc
        finally:
            body.close()
        return data

    def _pages(self, what: str, operation: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        try:
            yield from self.client.get_paginator(operation).paginate(Bucket=self.bucket, **kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise _translate(exc, what) from exc

    def _entries(self, what: str, prefix: str) -> list[_Entry]:
        """Every object version and delete marker under ``prefix`` (the current objects only, with no versions
        API); ETags are kept with their quotes, as If-Match wants them."""
        if self._versions_api:
            try:
                out: list[_Entry] = []
                for page in self._pages(what, "list_object_versions", Prefix=prefix):
                    for item in page.get("Versions", []):
                        out.append(
                            _Entry(item["Key"], item.get("VersionId"), bool(item.get("IsLatest")), False,
                                   int(item.get("Size", 0)), str(item.get("ETag", "")))
                        )  # fmt: skip
                    for item in page.get("DeleteMarkers", []):
                        out.append(_Entry(item["Key"], item.get("VersionId"), bool(item.get("IsLatest")), True, 0, ""))
                return out
            except _NotImplemented:
                self._versions_api = False
        try:
            return [
                _Entry(item["Key"], None, True, False, int(item.get("Size", 0)), str(item.get("ETag", "")))
                for page in self._pages(what, "list_objects_v2", Prefix=prefix)
                for item in page.get("Contents", [])
            ]
        except _NotImplemented as exc:
            raise _unavailable(what, "NotImplemented") from exc

    def _exists(self, what: str, key: str) -> bool:
        """Whether the current object ``key`` exists, by listing (a listing tells a missing bucket from a missing
        object; a HEAD's bodiless 404 does not)."""
        try:
            page = self._call(what, "list_objects_v2", Prefix=key, MaxKeys=1)
        except _NotImplemented as exc:
            raise _unavailable(what, "NotImplemented") from exc
        return any(item["Key"] == key for item in page.get("Contents", []))

    def _any_under(self, what: str, prefix: str) -> bool:
        try:
            page = self._call(what, "list_objects_v2", Prefix=prefix, MaxKeys=1)
        except _NotImplemented as exc:
            raise _unavailable(what, "NotImplemented") from exc
        return bool(page.get("Contents"))

    def _purge(self, what: str, entries: list[_Entry]) -> None:
        """Delete these versions (or keys); errors on single objects are left for the caller's listing to find."""
        objects = [{"Key": e.key, **({"VersionId": e.version} if e.version is not None else {})} for e in entries]
        for i in range(0, len(objects), _DELETE_BATCH):
            try:
                self._call(what, "delete_objects", Delete={"Objects": objects[i : i + _DELETE_BATCH], "Quiet": True})
            except (_Missing, _Precondition, _NotImplemented) as exc:
                raise _unavailable(what, type(exc).__name__.strip("_")) from exc

    # -------------------------------------------------------------- the upload

    def _chunks(self, transfer_id: str, entries: list[_Entry]) -> list[_Chunk]:
        parts = self._parts(transfer_id)
        out = []
        for entry in entries:
            name = entry.key[len(parts) :]
            if entry.key.startswith(parts) and _is_chunk(name) and entry.latest and not entry.marker:
                start, _, end = name.partition("-")
                out.append(_Chunk(int(start), int(end), entry.size, entry.etag))
        return out

    def _upload(self, transfer_id: str, what: str, missing: str = "upload in progress") -> tuple[bytes, bytes]:
        """(header, data key) of the unpublished upload: ``NotFound`` when there is none (never begun, deleted or
        published), ``EpochKeyGone`` when its epoch key was destroyed."""
        if self._exists(what, self._index_key(transfer_id)):
            raise NotFound(f"no {missing} for {transfer_id}: it was published")
        try:
            header = self._read_small(what, self._parts(transfer_id) + _HEADER, HEADER_BYTES)
        except _Missing:
            raise NotFound(f"no {missing} for {transfer_id}") from None
        return header, open_header(transfer_id, header, self.keys.key)

    def begin(self, transfer_id: str, deadline: datetime) -> None:
        what = "creating an upload"
        if self.has_bytes(transfer_id):
            raise Conflict(f"an upload for {transfer_id} already exists")
        epoch = epoch_end(deadline, self.epoch_length)
        header, _ = make_header(transfer_id, epoch, self.keys.create(epoch))
        if not self._create(what, self._parts(transfer_id) + _HEADER, header):
            raise Conflict(f"an upload for {transfer_id} already exists")

    def uploaded(self, transfer_id: str) -> int:
        self._upload(transfer_id, "reading an upload's size")
        chain = _chain(self._chunks(transfer_id, self._entries("reading an upload's size", self._parts(transfer_id))))
        return chain[-1].end if chain else 0

    def writer(self, transfer_id: str, offset: int) -> _S3Writer:
        what = "resuming an upload"
        _, dek = self._upload(transfer_id, what)
        entries = self._entries(what, self._parts(transfer_id))
        kept = _chain(self._chunks(transfer_id, entries), offset) if offset >= 0 else None
        if kept is None:
            raise Conflict(f"no stored chunk of {transfer_id} ends at offset {offset}")
        # Everything else was never acknowledged: chunks past the offset or off the chain, and older versions.
        keep = {self._parts(transfer_id) + c.name() for c in kept}
        drop = [
            e
            for e in entries
            if _is_chunk(e.key.rpartition("/")[2]) and not (e.key in keep and e.latest and not e.marker)
        ]
        if drop:
            self._purge(what, drop)
        return _S3Writer(self, transfer_id, dek, offset)

    def _put_chunk(self, transfer_id: str, start: int, end: int, body: IO[bytes], stored: int) -> None:
        md5 = hashlib.md5(usedforsecurity=False)
        for block in iter(lambda: body.read(READ_BLOCK), b""):
            md5.update(block)
        body.seek(0)
        digest = base64.b64encode(md5.digest()).decode("ascii")
        key = f"{self._parts(transfer_id)}{start:016d}-{end:016d}"
        try:
            self._put("saving an upload chunk", key, body, stored, digest, exclusive=False)
        except (_Missing, _Precondition) as exc:
            raise _unavailable("saving an upload chunk", type(exc).__name__.strip("_")) from exc

    def upload_digest(self, transfer_id: str) -> tuple[int, str]:
        what = "reading back an upload"
        _, dek = self._upload(transfer_id, what)
        chain = _chain(self._chunks(transfer_id, self._entries(what, self._parts(transfer_id)))) or []
        return self._digest(transfer_id, dek, chain, what)

    def _digest(self, transfer_id: str, dek: bytes, chain: list[_Chunk], what: str) -> tuple[int, str]:
        """The size and SHA-256 of an upload's bytes, read back chunk by chunk along ``chain``."""
        digest = hashlib.sha256()
        size = 0
        for block in self._stream(transfer_id, dek, chain, 0, what, published=False):
            digest.update(block)
            size += len(block)
        return size, digest.hexdigest()

    def publish(self, transfer_id: str) -> None:
        what = "publishing a payload"
        header, _ = self._upload(transfer_id, what, "upload to publish")
        chain = _chain(self._chunks(transfer_id, self._entries(what, self._parts(transfer_id)))) or []
        body = _index_body(transfer_id, header, chain)
        if not self._create(what, self._index_key(transfer_id), body):
            raise NotFound(f"no upload to publish for {transfer_id}: it was published")

    # -------------------------------------------------------------- the payload

    def _index(self, transfer_id: str, what: str) -> tuple[bytes, list[_Chunk], int]:
        """(data key, chunks, size) of the published payload; ``NotFound``, ``EpochKeyGone`` or ``IntegrityError``
        for an index that does not describe a whole payload from 0."""
        try:
            raw = self._read_small(what, self._index_key(transfer_id), 16 * 1024**2)
        except _Missing:
            raise NotFound(f"no stored payload for {transfer_id}") from None
        header, chunks, size = _parse_index(transfer_id, raw)
        return open_header(transfer_id, header, self.keys.key), chunks, size

    def open(self, transfer_id: str, start: int = 0) -> Iterator[bytes]:
        dek, chunks, _ = self._index(transfer_id, "opening a payload")
        return self._stream(transfer_id, dek, chunks, start, "reading a payload", published=True)

    def _stream(
        self, transfer_id: str, dek: bytes, chunks: list[_Chunk], start: int, what: str, *, published: bool
    ) -> Iterator[bytes]:
        for chunk in chunks:
            if chunk.end <= start:
                continue
            key = self._parts(transfer_id) + chunk.name()
            try:
                response = self._get(what, key, chunk.etag or None)
            except _Missing:
                if published and not self._still_published(transfer_id, what):
                    raise NotFound(f"payload {transfer_id} was deleted while being read") from None
                raise IntegrityError(f"stored payload {transfer_id} has lost a chunk") from None
            except _Precondition:
                raise IntegrityError(f"a stored chunk of payload {transfer_id} changed after it was written") from None
            body = response["Body"]
            try:
                if int(response.get("ContentLength", chunk.stored)) != chunk.stored:
                    raise IntegrityError(f"a stored chunk of payload {transfer_id} has the wrong size")
                yield from read_segments(body.read, dek, transfer_id, chunk.start, chunk.end, start)
            except (BotoCoreError, ClientError) as exc:
                raise _translate(exc, what) from exc
            finally:
                body.close()

    def _still_published(self, transfer_id: str, what: str) -> bool:
        return self._exists(what, self._index_key(transfer_id))

    def size(self, transfer_id: str) -> int:
        _, _, size = self._index(transfer_id, "reading a payload's size")
        return size

    # -------------------------------------------------------------- housekeeping

    def delete(self, transfer_id: str) -> bool:
        what = "deleting a payload"
        index, parts = self._index_key(transfer_id), self._parts(transfer_id)
        published = [e for e in self._entries(what, index) if e.key == index]
        if published:
            self._purge(what, published)  # first: the payload stops being served at once
        upload = self._entries(what, parts)
        if upload:
            self._purge(what, upload)
        left = [e for e in self._entries(what, index) if e.key == index] + self._entries(what, parts)
        return not left

    def ids(self) -> Iterator[str]:
        """Every transfer with any object (or object version) in the store, published or not, sorted."""
        found: set[str] = set()
        for entry in self._entries("listing payloads", self.prefix):
            kind, _, rest = entry.key[len(self.prefix) :].partition("/")
            name = rest.partition("/")[0] if kind == "parts" else rest
            if kind in ("parts", "published") and is_transfer_id(name):
                found.add(name)
        yield from sorted(found)

    def has_bytes(self, transfer_id: str) -> bool:
        what = "looking for a payload"
        return self._any_under(what, self._parts(transfer_id)) or self._exists(what, self._index_key(transfer_id))

    def strays(self) -> list[str]:
        """Keys under the prefix that are neither an upload's header or chunk nor a payload's index of a
        well-formed transfer id (counting old versions too), sorted."""
        out: set[str] = set()
        for entry in self._entries("listing payloads", self.prefix):
            kind, _, rest = entry.key[len(self.prefix) :].partition("/")
            transfer_id, slash, name = rest.partition("/")
            if kind == "published" and is_transfer_id(rest):
                continue
            if kind == "parts" and is_transfer_id(transfer_id) and slash and (name == _HEADER or _is_chunk(name)):
                continue
            out.add(entry.key)
        return sorted(out)


def _index_body(transfer_id: str, header: bytes, chain: list[_Chunk]) -> bytes:
    index = {
        "format": INDEX_FORMAT,
        "transfer_id": transfer_id,
        "header": base64.b64encode(header).decode("ascii"),
        "size": chain[-1].end if chain else 0,
        "chunks": [{"start": c.start, "end": c.end, "stored": c.stored, "etag": c.etag} for c in chain],
    }
    return json.dumps(index, separators=(",", ":"), sort_keys=True).encode("ascii")


def _parse_index(transfer_id: str, raw: bytes) -> tuple[bytes, list[_Chunk], int]:
    """(header, chunks, size) of an index; ``IntegrityError`` unless it describes a whole payload from 0."""
    try:
        index = json.loads(raw)
        header = base64.b64decode(index["header"], validate=True)
        chunks = [_Chunk(int(c["start"]), int(c["end"]), int(c["stored"]), str(c["etag"])) for c in index["chunks"]]
        size = int(index["size"])
        sound = index["format"] == INDEX_FORMAT and index["transfer_id"] == transfer_id
        sound = sound and all(0 <= c.start < c.end and c.stored > 0 for c in chunks)
    except (ValueError, KeyError, TypeError, binascii.Error):
        sound = False
    if not sound or _chain(chunks, size) != chunks:
        raise IntegrityError(f"the stored index of payload {transfer_id} is malformed")
    return header, chunks, size


def _is_chunk(name: str) -> bool:
    """``<start:016d>-<end:016d>`` with start < end."""
    match = _CHUNK.fullmatch(name)
    return match is not None and int(match[1]) < int(match[2])


# ------------------------------------------------------------------ the ledger (decision 0021)


_LEDGER_HEADER = "header"
_LEDGER_PUBLISHED = "published"


class LedgeredS3PayloadStore(S3PayloadStore):
    """The S3 payload store with its metadata in the relay's database: no LIST, no header or index object, on the
    way of an upload or a download (decision 0021). The bucket holds only the chunk objects,
    ``parts/<id>/<start:016d>-<end:016d>``, written as before (one PUT each, Content-MD5, sealed). The ledger holds:

    - ``header``: the upload's at-rest header (the data key wrapped under its epoch key), written by ``begin``;
    - each chunk: recorded *pending* before its PUT, *stored* with its ETag and version after it; the chain from 0
      is read from these rows, so ``uploaded`` and ``writer`` make no request, and a chunk that was PUT but never
      acknowledged is known by name and deleted by the next writer;
    - ``published``: the index (the same JSON the legacy store PUT as ``published/<id>``), written by ``publish``;
      ``open`` and ``size`` read it, and each chunk is then fetched with If-Match its recorded ETag.

    Deletion first removes the publication (nothing is served any more), then deletes every chunk version the
    ledger names in one DeleteObjects. It is *verified* without a listing when each chunk was PUT once and its
    version (or, unversioned, its key) was deleted without error: the ledger named every object before it was
    written, so nothing else of the transfer can exist. Otherwise (a PUT retried or lost, a deletion error) it
    lists the transfer's versions as the legacy store always did, and is verified only when nothing is left. The
    reaper's pass lists the whole prefix (``ids``) and deletes anything of a transfer that is over, whatever wrote
    it. Transfers written before migration 0009 (no ledger rows) are served and deleted the legacy way."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        keys: KeyStore,
        epoch_length: timedelta,
        ledger: ObjectLedger,
        prefix: str = "",
    ) -> None:
        super().__init__(client, bucket, keys, epoch_length, prefix)
        self.ledger = ledger

    @staticmethod
    def _row(rows: list[LedgerRow], name: str) -> LedgerRow | None:
        return next((r for r in rows if r.name == name), None)

    @staticmethod
    def _stored_chunks(rows: list[LedgerRow]) -> list[_Chunk]:
        return [
            _Chunk(int(r.start or 0), int(r.end or 0), int(r.stored or 0), r.etag or "")
            for r in rows
            if _is_chunk(r.name) and r.state == "stored"
        ]

    def _ledger_upload(self, transfer_id: str, rows: list[LedgerRow], missing: str) -> tuple[bytes, bytes]:
        """(header, data key) of an unpublished upload of the ledger."""
        header = self._row(rows, _LEDGER_HEADER)
        if header is None or header.body is None:
            raise NotFound(f"no {missing} for {transfer_id}")
        if self._row(rows, _LEDGER_PUBLISHED) is not None:
            raise NotFound(f"no {missing} for {transfer_id}: it was published")
        raw = base64.b64decode(header.body)
        return raw, open_header(transfer_id, raw, self.keys.key)

    # -------------------------------------------------------------- the upload

    def begin(self, transfer_id: str, deadline: datetime) -> None:
        if self.ledger.rows(check_transfer_id(transfer_id)):
            raise Conflict(f"an upload for {transfer_id} already exists")
        epoch = epoch_end(deadline, self.epoch_length)
        header, _ = make_header(transfer_id, epoch, self.keys.create(epoch))
        if not self.ledger.create(transfer_id, _LEDGER_HEADER, base64.b64encode(header).decode("ascii")):
            raise Conflict(f"an upload for {transfer_id} already exists")

    def uploaded(self, transfer_id: str) -> int:
        rows = self.ledger.rows(check_transfer_id(transfer_id))
        if not rows:
            return super().uploaded(transfer_id)
        self._ledger_upload(transfer_id, rows, "upload in progress")
        chain = _chain(self._stored_chunks(rows))
        return chain[-1].end if chain else 0

    def writer(self, transfer_id: str, offset: int) -> _S3Writer:
        what = "resuming an upload"
        rows = self.ledger.rows(check_transfer_id(transfer_id))
        if not rows:
            return super().writer(transfer_id, offset)
        _, dek = self._ledger_upload(transfer_id, rows, "upload in progress")
        kept = _chain(self._stored_chunks(rows), offset) if offset >= 0 else None
        if kept is None:
            raise Conflict(f"no stored chunk of {transfer_id} ends at offset {offset}")
        keep = {c.name() for c in kept}
        drop = [r for r in rows if _is_chunk(r.name) and r.name not in keep and r.state != "dropped"]
        if drop:  # never acknowledged: past the offset, off the chain, or a PUT whose outcome is unknown
            self._drop(transfer_id, drop, what)
        return _S3Writer(self, transfer_id, dek, offset, self._put_ledgered)

    def _drop(self, transfer_id: str, rows: list[LedgerRow], what: str) -> None:
        """Delete these chunk objects; a row whose every version is now proven gone leaves the ledger, any other
        stays as *dropped* (the final deletion lists the transfer's versions because of it)."""
        errors = self._delete_known(transfer_id, rows, what)
        proven = [r.name for r in rows if _exact(r) and r.name not in errors]
        if proven:
            self.ledger.remove(transfer_id, proven)
        unsure = [r.name for r in rows if r.name not in proven]
        if unsure:
            self.ledger.mark(transfer_id, unsure, "dropped")

    def _delete_known(self, transfer_id: str, rows: list[LedgerRow], what: str) -> set[str]:
        """One DeleteObjects (per 1,000) for these chunk objects, by version where known; the names not surely gone.
        Not quiet: an object is gone only if the answer lists it deleted without a delete marker. A delete by key in a
        bucket whose versioning was enabled since the PUT only adds a marker (the ciphertext survives as a
        noncurrent version); that, an error, or a name the answer does not mention leaves the name to the listing."""
        parts = self._parts(transfer_id)
        objects = [{"Key": parts + r.name, **({"VersionId": r.version} if r.version else {})} for r in rows]
        failed: set[str] = set()
        for i in range(0, len(objects), _DELETE_BATCH):
            batch = objects[i : i + _DELETE_BATCH]
            try:
                answer = self._call(what, "delete_objects", Delete={"Objects": batch, "Quiet": False})
            except (_Missing, _Precondition, _NotImplemented) as exc:
                raise _unavailable(what, type(exc).__name__.strip("_")) from exc
            gone = {str(d.get("Key", "")) for d in answer.get("Deleted", []) or [] if not d.get("DeleteMarker")}
            failed.update(str(o["Key"])[len(parts) :] for o in batch if o["Key"] not in gone)
        return failed

    def _put_ledgered(self, transfer_id: str, start: int, end: int, body: IO[bytes], stored: int) -> None:
        what = "saving an upload chunk"
        name = f"{start:016d}-{end:016d}"
        md5 = hashlib.md5(usedforsecurity=False)
        for block in iter(lambda: body.read(READ_BLOCK), b""):
            md5.update(block)
        body.seek(0)
        digest = base64.b64encode(md5.digest()).decode("ascii")
        self.ledger.pending(transfer_id, name, start, end)  # before the PUT: whatever lands is known
        try:
            answer = self._call(
                what, "put_object", Key=self._parts(transfer_id) + name, Body=body, ContentLength=stored,
                ContentMD5=digest,
            )  # fmt: skip
        except (_Missing, _Precondition, _NotImplemented) as exc:
            raise _unavailable(what, type(exc).__name__.strip("_")) from exc
        retried = int((answer.get("ResponseMetadata", {}) or {}).get("RetryAttempts", 0) or 0) > 0
        version = answer.get("VersionId")
        self.ledger.stored(transfer_id, name, stored, str(answer["ETag"]), str(version) if version else None, retried)

    def upload_digest(self, transfer_id: str) -> tuple[int, str]:
        what = "reading back an upload"
        rows = self.ledger.rows(check_transfer_id(transfer_id))
        if not rows:
            return super().upload_digest(transfer_id)
        _, dek = self._ledger_upload(transfer_id, rows, "upload in progress")
        return self._digest(transfer_id, dek, _chain(self._stored_chunks(rows)) or [], what)

    def publish(self, transfer_id: str) -> None:
        rows = self.ledger.rows(check_transfer_id(transfer_id))
        if not rows:
            super().publish(transfer_id)
            return
        header, _ = self._ledger_upload(transfer_id, rows, "upload to publish")
        chain = _chain(self._stored_chunks(rows)) or []
        body = _index_body(transfer_id, header, chain).decode("ascii")
        if not self.ledger.create(transfer_id, _LEDGER_PUBLISHED, body, chain[-1].end if chain else 0):
            raise NotFound(f"no upload to publish for {transfer_id}: it was published")

    # -------------------------------------------------------------- the payload

    def _index(self, transfer_id: str, what: str) -> tuple[bytes, list[_Chunk], int]:
        rows = self.ledger.rows(check_transfer_id(transfer_id))
        if not rows:
            return super()._index(transfer_id, what)
        published = self._row(rows, _LEDGER_PUBLISHED)
        if published is None or published.body is None:
            raise NotFound(f"no stored payload for {transfer_id}")
        header, chunks, size = _parse_index(transfer_id, published.body.encode("ascii"))
        return open_header(transfer_id, header, self.keys.key), chunks, size

    def _still_published(self, transfer_id: str, what: str) -> bool:
        rows = self.ledger.rows(transfer_id)
        if not rows:
            return super()._still_published(transfer_id, what)
        return self._row(rows, _LEDGER_PUBLISHED) is not None

    # -------------------------------------------------------------- housekeeping

    def delete(self, transfer_id: str) -> bool:
        what = "deleting a payload"
        rows = self.ledger.rows(check_transfer_id(transfer_id))
        if not rows:
            return super().delete(transfer_id)
        if self._row(rows, _LEDGER_PUBLISHED) is not None:
            self.ledger.remove(transfer_id, [_LEDGER_PUBLISHED])  # first: the payload stops being served at once
        chunks = [r for r in rows if _is_chunk(r.name)]
        failed = self._delete_known(transfer_id, chunks, what) if chunks else set()
        gone = not failed and all(_exact(r) for r in chunks)
        if not gone:  # something the ledger cannot vouch for: list the transfer's versions, purge, list again
            gone = super().delete(transfer_id)
        if gone:
            self.ledger.remove(transfer_id)
        return gone

    def ids(self) -> Iterator[str]:
        """Every transfer with an object in the bucket (a listing: the reaper's pass) or a row in the ledger."""
        yield from sorted(set(super().ids()) | set(self.ledger.ids()))

    def has_bytes(self, transfer_id: str) -> bool:
        if self.ledger.rows(check_transfer_id(transfer_id)):
            return True
        return super().has_bytes(transfer_id)


def _exact(row: LedgerRow) -> bool:
    """Whether the ledger names every version of this chunk object: PUT once, its answer received."""
    return row.state == "stored" and row.attempts == 1
