"""Ciphertext payloads in a local directory (the embedded default).

Layout under the store's root (``DATA_DIR/payloads``, mode 0700)::

    <transfer-id>.upload    an upload in progress (never served)
    <transfer-id>.payload   a whole upload whose hash matched its signed manifest (published by rename)

Every path is built from a validated transfer id and checked to resolve inside the root, so no caller string can
name a file elsewhere (SecureDrop's ``Storage`` habit). Writes are fsync'd before they are acknowledged, and
publication is an atomic rename followed by an fsync of the directory.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from labrelay.domain.names import check_transfer_id, is_transfer_id
from labrelay.errors import Conflict, NotFound, StorageFull, Unavailable

_UPLOAD = ".upload"
_PAYLOAD = ".payload"
READ_CHUNK = 1 << 20


def _io_error(exc: OSError, what: str) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"no space left on the relay's payload disk while {what}")
    return Unavailable(f"payload storage failed while {what}: {os.strerror(exc.errno or 0)}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _FileWriter:
    def __init__(self, handle: BinaryIO, offset: int) -> None:
        self._fh = handle
        self._offset = offset
        self._closed = False

    def write(self, data: bytes) -> None:
        try:
            self._fh.write(data)
        except OSError as exc:
            self.abort()
            raise _io_error(exc, "writing an upload") from exc

    def commit(self) -> int:
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            size = self._fh.tell()
        except OSError as exc:
            self.abort()
            raise _io_error(exc, "saving an upload") from exc
        self._fh.close()
        self._closed = True
        return size

    def abort(self) -> None:
        if self._closed:
            return
        try:
            self._fh.truncate(self._offset)
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError:
            pass  # the metadata offset is what counts; the next writer truncates to it anyway
        finally:
            self._fh.close()
            self._closed = True


class LocalPayloadStore:
    """``labrelay.ports.PayloadStore`` on a local directory."""

    def __init__(self, root: Path) -> None:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root = root.resolve()

    def _path(self, transfer_id: str, suffix: str) -> Path:
        check_transfer_id(transfer_id)
        path = (self.root / f"{transfer_id}{suffix}").resolve()
        if path.parent != self.root:
            raise Unavailable("refusing a payload path outside the store")
        return path

    def begin(self, transfer_id: str) -> None:
        path = self._path(transfer_id, _UPLOAD)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            _fsync_dir(self.root)
        except FileExistsError:
            raise Conflict(f"an upload for {transfer_id} already exists") from None
        except OSError as exc:
            raise _io_error(exc, "creating an upload") from exc

    def uploaded(self, transfer_id: str) -> int:
        try:
            return self._path(transfer_id, _UPLOAD).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"no upload in progress for {transfer_id}") from None

    def writer(self, transfer_id: str, offset: int) -> _FileWriter:
        path = self._path(transfer_id, _UPLOAD)
        try:
            fh = path.open("r+b")
        except FileNotFoundError:
            raise NotFound(f"no upload in progress for {transfer_id}") from None
        try:
            fh.truncate(offset)  # bytes past the acknowledged offset were never acknowledged
            fh.seek(offset)
        except OSError as exc:
            fh.close()
            raise _io_error(exc, "resuming an upload") from exc
        return _FileWriter(fh, offset)

    def upload_digest(self, transfer_id: str) -> tuple[int, str]:
        digest = hashlib.sha256()
        size = 0
        with self._path(transfer_id, _UPLOAD).open("rb") as fh:
            while block := fh.read(READ_CHUNK):
                digest.update(block)
                size += len(block)
        return size, digest.hexdigest()

    def publish(self, transfer_id: str) -> None:
        try:
            os.replace(self._path(transfer_id, _UPLOAD), self._path(transfer_id, _PAYLOAD))
            _fsync_dir(self.root)
        except FileNotFoundError:
            raise NotFound(f"no upload to publish for {transfer_id}") from None
        except OSError as exc:
            raise _io_error(exc, "publishing a payload") from exc

    def open(self, transfer_id: str, start: int = 0) -> Iterator[bytes]:
        path = self._path(transfer_id, _PAYLOAD)
        try:
            fh = path.open("rb")
        except FileNotFoundError:
            raise NotFound(f"no stored payload for {transfer_id}") from None
        return self._chunks(fh, start)

    @staticmethod
    def _chunks(fh: BinaryIO, start: int) -> Iterator[bytes]:
        with fh:
            fh.seek(start)
            while block := fh.read(READ_CHUNK):
                yield block

    def size(self, transfer_id: str) -> int:
        try:
            return self._path(transfer_id, _PAYLOAD).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"no stored payload for {transfer_id}") from None

    def delete(self, transfer_id: str) -> bool:
        paths = [self._path(transfer_id, _UPLOAD), self._path(transfer_id, _PAYLOAD)]
        for path in paths:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise _io_error(exc, "deleting a payload") from exc
        _fsync_dir(self.root)
        return not any(p.exists() for p in paths)

    def ids(self) -> Iterator[str]:
        stems = (entry.partition(".")[0] for entry in sorted(os.listdir(self.root)))
        yield from dict.fromkeys(stem for stem in stems if is_transfer_id(stem))
