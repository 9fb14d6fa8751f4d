"""Streaming age encryption and decryption (pyrage, X25519 recipients).

Both directions run in constant memory: pyrage reads and writes 64 KiB STREAM chunks through Python file
objects. The ciphertext is hashed as it is written (encryption) or as it is read (decryption), so the SHA-256
the sender signs and the recipient checks costs no second pass.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import pyrage

from labrelay.crypto.keys import AgeIdentity
from labrelay.errors import IntegrityError, OperationalError, StorageFull, UsageError


def _io_error(exc: OSError | str, doing: str) -> OperationalError:
    code = exc.errno if isinstance(exc, OSError) else None
    text = str(exc)
    if code in (errno.ENOSPC, errno.EDQUOT) or "Errno 28" in text:
        return StorageFull(f"no space left while {doing}")
    return OperationalError(f"I/O error while {doing}: {os.strerror(code) if code else text}")


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class HashingWriter:
    """A write-only file object that hashes and counts what passes through to ``sink``."""

    def __init__(self, sink: BinaryIO) -> None:
        self._sink = sink
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        self._hash.update(view)
        self.size += len(view)
        return self._sink.write(view)

    def flush(self) -> None:
        self._sink.flush()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    @property
    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class HashingReader:
    """A read-only file object that hashes and counts what is read from ``source``."""

    def __init__(self, source: Readable) -> None:
        self._source = source
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._source.read(n)
        self._hash.update(data)
        self.size += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    @property
    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def encrypt(source: Readable, sink: BinaryIO, recipients: Sequence[str]) -> tuple[int, str]:
    """Encrypt ``source`` to age ``recipients`` into ``sink``; return (ciphertext size, SHA-256 hex)."""
    if not recipients:
        raise UsageError("no recipient to encrypt to")
    try:
        natives = [pyrage.x25519.Recipient.from_str(r) for r in recipients]
    except Exception as exc:
        raise IntegrityError("not an age X25519 recipient") from exc
    out = HashingWriter(sink)
    try:
        pyrage.encrypt_io(source, out, natives)
    except pyrage.EncryptError as exc:  # pyrage wraps I/O errors of the source or sink
        raise _io_error(str(exc), "encrypting") from exc
    except OSError as exc:
        raise _io_error(exc, "encrypting") from exc
    out.flush()
    return out.size, out.hexdigest


@dataclass(frozen=True, slots=True)
class Expected:
    """The ciphertext a caller knows it must decrypt (from a signed manifest): its size and SHA-256 hex."""

    size: int
    sha256: str


def decrypt(source: Readable, sink: BinaryIO, identities: Sequence[AgeIdentity], *, expect: Expected | None) -> None:
    """Decrypt age ``source`` into ``sink``, checking that the ciphertext read is ``expect`` (None: the caller knows
    nothing of it to check, and says so).

    Raises ``IntegrityError`` for a payload that is not age, not for these identities, or tampered with (age's
    STREAM authenticates every 64 KiB chunk and the end of the stream), or not the ciphertext expected. The
    plaintext reaches ``sink`` as it is decrypted: on an error, the caller discards what it wrote.
    """
    reader = HashingReader(source)
    try:
        pyrage.decrypt_io(reader, sink, [i.native() for i in identities])
    except pyrage.DecryptError as exc:
        raise IntegrityError(f"age decryption failed: {exc}") from exc
    except OSError as exc:
        if exc.errno is None:  # pyrage reports a chunk that fails authentication as a bare OSError
            raise IntegrityError(f"age decryption failed: {exc}") from exc
        raise _io_error(exc, "decrypting") from exc
    # age stops at the authenticated final chunk; any trailing bytes would be outside the signed hash.
    if reader.read(1):
        raise IntegrityError("trailing bytes after the age payload")
    if expect is not None and (reader.size != expect.size or reader.hexdigest != expect.sha256):
        raise IntegrityError("the ciphertext decrypted is not the one expected (its size or SHA-256 differs)")


def hash_file(path_stream: Readable, chunk: int = 1 << 20) -> tuple[int, str]:
    """(size, SHA-256 hex) of a stream read to its end."""
    digest = hashlib.sha256()
    size = 0
    while block := path_stream.read(chunk):
        digest.update(block)
        size += len(block)
    return size, digest.hexdigest()


class StreamingSealer:
    """A write-only stream whose bytes are age-encrypted to one recipient as they arrive.

    Writes go into an OS pipe; a thread runs pyrage's streaming encryptor from the pipe into ``sink``, hashing the
    ciphertext. Plaintext exists only in the pipe's buffer and this process's memory, never in a file.
    """

    def __init__(self, sink: BinaryIO, recipient: str) -> None:
        try:
            native = pyrage.x25519.Recipient.from_str(recipient)
        except Exception as exc:
            raise IntegrityError("not an age X25519 recipient") from exc
        read_fd, write_fd = os.pipe()
        self._reader = os.fdopen(read_fd, "rb")
        self._writer = os.fdopen(write_fd, "wb")
        self._out = HashingWriter(sink)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(native,), name="age-sealer", daemon=True)
        self._thread.start()

    def _run(self, native: object) -> None:
        try:
            pyrage.encrypt_io(self._reader, self._out, [native])
        except BaseException as exc:  # noqa: BLE001 - handed to the writer's thread by close()
            self._error = exc
        finally:
            self._reader.close()

    def write(self, data: bytes) -> int:
        try:
            return self._writer.write(data)
        except BrokenPipeError:
            self._writer = None  # type: ignore[assignment]  # dropped on a broken pipe: the failure is raised at once
            self._thread.join()
            raise self._failure() from None

    def flush(self) -> None:
        self._writer.flush()

    def _failure(self) -> Exception:
        if isinstance(self._error, pyrage.EncryptError):
            return _io_error(str(self._error), "encrypting")
        if isinstance(self._error, OSError):
            return _io_error(self._error, "encrypting")
        return OperationalError(f"encryption stopped: {type(self._error).__name__}")

    def close(self) -> tuple[int, str]:
        """Finish the age stream; return (ciphertext size, SHA-256 hex)."""
        if self._writer is not None:
            self._writer.close()
        self._thread.join()
        if self._error is not None:
            raise self._failure()
        self._out.flush()
        return self._out.size, self._out.hexdigest

    def abort(self) -> None:
        """Stop without a valid ciphertext (the caller deletes the sink)."""
        if self._writer is not None:
            with contextlib.suppress(OSError):
                self._writer.close()
        self._thread.join()
