"""Streaming age encryption and decryption (X25519 and hybrid post-quantum recipients, crypto/age_format.py).

Both directions run in constant memory: 64 KiB STREAM chunks pass through Python file objects. The ciphertext is
hashed as it is written (encryption) or as it is read (decryption), so the SHA-256 the sender signs and the
recipient checks costs no second pass.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from labrelay.crypto import age_format
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


def _writer(sink: BinaryIO, recipients: Sequence[str]) -> age_format.Writer:
    try:
        return age_format.Writer(sink, recipients)
    except UsageError:
        if recipients and not all(_is_recipient(r) for r in recipients):
            raise IntegrityError("not an age recipient (age1… or age1pq1…)") from None
        raise
    except OSError as exc:
        raise _io_error(exc, "encrypting") from exc


def _is_recipient(recipient: str) -> bool:
    try:
        age_format.parse_recipient(recipient)
    except UsageError:
        return False
    return True


def encrypt(source: Readable, sink: BinaryIO, recipients: Sequence[str]) -> tuple[int, str]:
    """Encrypt ``source`` to age ``recipients`` into ``sink``; return (ciphertext size, SHA-256 hex).

    All recipients must be of one kind: classic X25519 or hybrid post-quantum (a mix is refused, as age does)."""
    if not recipients:
        raise UsageError("no recipient to encrypt to")
    out = HashingWriter(sink)
    writer = _writer(out, recipients)  # type: ignore[arg-type]  # HashingWriter is a writable sink
    try:
        while block := source.read(_READ):
            writer.write(block)
        writer.close()
    except OSError as exc:
        raise _io_error(exc, "encrypting") from exc
    out.flush()
    return out.size, out.hexdigest


_READ = 1 << 20


MAX_STANZAS = 16
"""The most recipients a file labrelay opens may have: it seals each payload to one, other tools to a few."""


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
        age_format.decrypt(reader, sink, [i.key for i in identities], max_stanzas=MAX_STANZAS)
    except OSError as exc:
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
    """A write-only stream whose bytes are age-encrypted to one recipient as they arrive, straight into ``sink``
    (64 KiB at a time, hashing the ciphertext). Plaintext exists only in this process's memory, never in a file."""

    def __init__(self, sink: BinaryIO, recipient: str) -> None:
        self._out = HashingWriter(sink)
        self._writer = _writer(self._out, [recipient])  # type: ignore[arg-type]  # HashingWriter is a writable sink

    def write(self, data: bytes) -> int:
        try:
            return self._writer.write(data)
        except OSError as exc:
            raise _io_error(exc, "encrypting") from exc

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> tuple[int, str]:
        """Finish the age stream; return (ciphertext size, SHA-256 hex)."""
        try:
            self._writer.close()
        except OSError as exc:
            raise _io_error(exc, "encrypting") from exc
        self._out.flush()
        return self._out.size, self._out.hexdigest

    def abort(self) -> None:
        """Stop without a valid ciphertext (the caller deletes the sink): the last chunk is never written."""
