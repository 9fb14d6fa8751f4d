"""Ciphertext payloads in a local directory (the embedded default), wrapped under epoch keys.

Layout under the store's root (``DATA_DIR/payloads``, mode 0700)::

    <transfer-id>.upload    an upload in progress (never served)
    <transfer-id>.payload   a whole upload whose hash matched its signed manifest (published by rename)

Each file holds the payload (the sender's age ciphertext) sealed once more in the at-rest format of
``labrelay.crypto.at_rest``: a header naming the epoch of the transfer's deadline and the transfer's data key
wrapped under that epoch's key (from the ``KeyStore``), then sealed segments. Offsets and sizes the port speaks of
are the payload's own (what the sender uploaded and the recipient downloads), never the stored file's.

Every path is built from a validated transfer id and checked to resolve inside the root, so no caller string can
name a file elsewhere (SecureDrop's ``Storage`` habit). Writes are fsync'd before they are acknowledged, and
publication is an atomic rename followed by an fsync of the directory.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO, Literal

from labrelay.crypto.at_rest import HEADER_BYTES, SegmentSpan, SegmentWriter, make_header, open_header, read_plain, scan
from labrelay.domain.names import check_transfer_id, is_transfer_id
from labrelay.domain.retention import epoch_end
from labrelay.errors import Conflict, NotFound, StorageFull, Unavailable
from labrelay.ports import KeyStore
from labrelay.storage.fs import fsync_dir

_UPLOAD = ".upload"
_PAYLOAD = ".payload"


def _io_error(exc: OSError, what: str) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"no space left on the relay's payload disk while {what}; retry later")
    return Unavailable(f"payload storage failed while {what}: {os.strerror(exc.errno or 0)}")


class _SealingWriter:
    """Seals what it is given into segments after the acknowledged offset; nothing counts until ``commit``."""

    def __init__(
        self,
        handle: BinaryIO,
        segments: SegmentWriter,
        position: int,
        path: Path,
        on_commit: Callable[[int, os.stat_result], None] | None = None,
    ) -> None:
        self._fh = handle
        self._segments = segments
        self._position = position  # where the acknowledged part of the stored file ends
        self._path = path
        self._on_commit = on_commit
        self._closed = False

    def write(self, data: bytes) -> None:
        try:
            self._segments.write(data)
        except OSError as exc:
            self.abort()
            raise _io_error(exc, "writing an upload") from exc

    def commit(self) -> int:
        try:
            size = self._segments.finish()
            self._fh.flush()
            os.fsync(self._fh.fileno())
            stat = os.fstat(self._fh.fileno())
        except OSError as exc:
            self.abort()
            raise _io_error(exc, "saving an upload") from exc
        if self._on_commit is not None:
            self._on_commit(size, stat)
        self._fh.close()
        self._closed = True
        return size

    def abort(self) -> None:
        """Cut the file back to the acknowledged offset. On a full disk the file object's buffer cannot be
        flushed (and closing it tries to): truncate through the descriptor, close, then truncate once more in case
        the close flushed anything past the acknowledged offset."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError, ValueError):
            os.ftruncate(self._fh.fileno(), self._position)
        with contextlib.suppress(OSError, ValueError):
            self._fh.close()
        try:
            fd = os.open(self._path, os.O_WRONLY)
        except OSError:
            return  # deleted meanwhile; the metadata offset is what counts, and the next writer truncates to it
        try:
            os.ftruncate(fd, self._position)
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


_KNOWN_ENDS = 10_000


def _identity(stat: os.stat_result) -> tuple[int, int, int, int]:
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


class LocalPayloadStore:
    """``labrelay.ports.PayloadStore`` on a local directory, sealing under epoch keys from ``keys``."""

    def __init__(self, root: Path, keys: KeyStore, epoch_length: timedelta) -> None:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root = root.resolve()
        self.keys = keys
        self.epoch_length = epoch_length
        # Where each upload this process last committed ends, offset and file position, with the file's identity
        # then (device, inode, size, mtime): the next chunk resumes there without scanning the file's segments.
        self._ends: dict[str, tuple[tuple[int, int, int, int], int, int]] = {}
        self._ends_lock = threading.Lock()

    def _path(self, transfer_id: str, suffix: str) -> Path:
        check_transfer_id(transfer_id)
        path = (self.root / f"{transfer_id}{suffix}").resolve()
        if path.parent != self.root:
            raise Unavailable("refusing a payload path outside the store")
        return path

    def _open(self, transfer_id: str, suffix: str, mode: Literal["rb", "r+b"] = "rb") -> BinaryIO:
        try:
            handle: BinaryIO = self._path(transfer_id, suffix).open(mode)
        except FileNotFoundError:
            what = "upload in progress" if suffix == _UPLOAD else "stored payload"
            raise NotFound(f"no {what} for {transfer_id}") from None
        return handle

    def _layout(self, transfer_id: str, fh: BinaryIO) -> tuple[bytes, list[SegmentSpan], int]:
        """(data key, whole segments, where they end): the data key needs the epoch key, or ``EpochKeyGone``."""
        fh.seek(0)
        dek = open_header(transfer_id, fh.read(HEADER_BYTES), self.keys.key)
        spans, end = scan(fh, os.fstat(fh.fileno()).st_size)
        return dek, spans, end

    def begin(self, transfer_id: str, deadline: datetime) -> None:
        path = self._path(transfer_id, _UPLOAD)
        epoch = epoch_end(deadline, self.epoch_length)
        header, _ = make_header(transfer_id, epoch, self.keys.create(epoch))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, header)
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_dir(self.root)
        except FileExistsError:
            raise Conflict(f"an upload for {transfer_id} already exists") from None
        except OSError as exc:
            raise _io_error(exc, "creating an upload") from exc

    def uploaded(self, transfer_id: str) -> int:
        with self._open(transfer_id, _UPLOAD) as fh:
            _, spans, _ = self._layout(transfer_id, fh)
        return spans[-1].end if spans else 0

    def writer(self, transfer_id: str, offset: int) -> _SealingWriter:
        fh = self._open(transfer_id, _UPLOAD, "r+b")
        try:
            fh.seek(0)
            dek = open_header(transfer_id, fh.read(HEADER_BYTES), self.keys.key)
            position = HEADER_BYTES if offset == 0 else self._known_end(transfer_id, offset, os.fstat(fh.fileno()))
            if position is None:  # not the end this process committed last (another replica, a restart): scan
                _, spans, _ = self._layout(transfer_id, fh)
                position = next((s.position + s.stored for s in spans if s.end == offset), None)
            if position is None:
                raise Conflict(f"no stored chunk of {transfer_id} ends at offset {offset}")
            fh.truncate(position)  # bytes past the acknowledged offset were never acknowledged
            fh.seek(position)
        except OSError as exc:
            fh.close()
            raise _io_error(exc, "resuming an upload") from exc
        except BaseException:
            fh.close()
            raise
        with self._ends_lock:
            self._ends.pop(transfer_id, None)  # until this writer commits, the file may change under it

        def committed(end: int, stat: os.stat_result) -> None:
            with self._ends_lock:
                self._ends[transfer_id] = (_identity(stat), end, stat.st_size)
                while len(self._ends) > _KNOWN_ENDS:
                    del self._ends[next(iter(self._ends))]

        return _SealingWriter(
            fh, SegmentWriter(fh, dek, transfer_id, offset), position, self._path(transfer_id, _UPLOAD), committed
        )

    def _known_end(self, transfer_id: str, offset: int, stat: os.stat_result) -> int | None:
        """The file position where ``offset`` ends, if this process committed exactly there and the file has not
        changed since (same device, inode, size and modification time); None otherwise."""
        with self._ends_lock:
            known = self._ends.get(transfer_id)
        if known is None or known[0] != _identity(stat) or known[1] != offset or known[2] != stat.st_size:
            return None
        return known[2]

    def upload_digest(self, transfer_id: str) -> tuple[int, str]:
        digest = hashlib.sha256()
        size = 0
        with self._open(transfer_id, _UPLOAD) as fh:
            dek, spans, _ = self._layout(transfer_id, fh)
            for block in read_plain(fh, dek, transfer_id, spans, 0):
                digest.update(block)
                size += len(block)
        return size, digest.hexdigest()

    def publish(self, transfer_id: str) -> None:
        with self._ends_lock:
            self._ends.pop(transfer_id, None)
        try:
            os.replace(self._path(transfer_id, _UPLOAD), self._path(transfer_id, _PAYLOAD))
            fsync_dir(self.root)
        except FileNotFoundError:
            raise NotFound(f"no upload to publish for {transfer_id}") from None
        except OSError as exc:
            raise _io_error(exc, "publishing a payload") from exc

    def open(self, transfer_id: str, start: int = 0) -> Iterator[bytes]:
        fh = self._open(transfer_id, _PAYLOAD)
        try:
            dek, spans, _ = self._layout(transfer_id, fh)
        except BaseException:
            fh.close()
            raise
        return self._chunks(fh, read_plain(fh, dek, transfer_id, spans, start))

    @staticmethod
    def _chunks(fh: BinaryIO, plain: Iterator[bytes]) -> Iterator[bytes]:
        with fh:
            yield from plain

    def size(self, transfer_id: str) -> int:
        with self._open(transfer_id, _PAYLOAD) as fh:
            _, spans, _ = self._layout(transfer_id, fh)
        return spans[-1].end if spans else 0

    def delete(self, transfer_id: str) -> bool:
        paths = [self._path(transfer_id, _UPLOAD), self._path(transfer_id, _PAYLOAD)]
        for path in paths:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise _io_error(exc, "deleting a payload") from exc
        fsync_dir(self.root)
        return not any(p.exists() for p in paths)

    def ids(self) -> Iterator[str]:
        stems = (entry.partition(".")[0] for entry in sorted(os.listdir(self.root)))
        yield from dict.fromkeys(stem for stem in stems if is_transfer_id(stem))

    def has_bytes(self, transfer_id: str) -> bool:
        return self._path(transfer_id, _UPLOAD).exists() or self._path(transfer_id, _PAYLOAD).exists()

    def strays(self) -> list[str]:
        """Files in the store that are neither an upload nor a payload of a well-formed transfer id."""
        out = []
        for entry in sorted(os.listdir(self.root)):
            stem, dot, suffix = entry.partition(".")
            if not (is_transfer_id(stem) and dot and f".{suffix}" in (_UPLOAD, _PAYLOAD)):
                out.append(entry)
        return out
