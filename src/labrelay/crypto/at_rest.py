"""At-rest wrapping of stored payloads under epoch keys: retention enforced by keys, not by hope.

The relay stores each payload (already age ciphertext for its recipient) encrypted once more, under a random
per-transfer data key (DEK), itself wrapped under the key of the *epoch* its deadline falls in. When the epoch is
over the relay destroys that key: every copy of the payload that escaped deletion (a backup, a disk image, a
remnant) becomes noise, even to someone who also holds the recipient's private key.

Stored format, version 1 (documented in docs/protocol.md, "Payloads at rest")::

    header   magic b"LRAR1\\n" (6) | epoch end, Unix seconds, u64 big-endian (8) | nonce (12)
             | AES-256-GCM(epoch key, nonce, DEK (32), aad = magic | epoch | transfer id) (48)
    segment  u32 plaintext length L (1..SEGMENT) | nonce (12)
             | AES-256-GCM(DEK, nonce, plaintext, aad = SEGMENT_AAD | transfer id | u64 offset | u32 L) (L + 16)

Segments follow upload chunks: each committed chunk ends its last segment, so a resumed upload starts a new segment
at the acknowledged offset and nothing is ever re-encrypted. Each segment names its plaintext offset in its
authenticated data: segments cannot be moved, swapped between transfers or spliced. Nonces are random (96 bits)
and each DEK encrypts one transfer's segments only.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from labrelay.errors import EpochKeyGone, IntegrityError

MAGIC = b"LRAR1\n"
SEGMENT = 64 * 1024
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
HEADER_BYTES = len(MAGIC) + 8 + NONCE_BYTES + KEY_BYTES + TAG_BYTES
SEGMENT_HEAD = 4 + NONCE_BYTES
SEGMENT_AAD = b"labrelay-at-rest-v1\x00"


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


def _header_aad(epoch: int, transfer_id: str) -> bytes:
    return MAGIC + epoch.to_bytes(8, "big") + transfer_id.encode("ascii")


def _segment_aad(transfer_id: str, offset: int, length: int) -> bytes:
    return SEGMENT_AAD + transfer_id.encode("ascii") + offset.to_bytes(8, "big") + length.to_bytes(4, "big")


def make_header(transfer_id: str, epoch: int, epoch_key: bytes) -> tuple[bytes, bytes]:
    """(header bytes, the new DEK) for a payload whose deadline falls in the epoch ending at ``epoch``."""
    dek = new_key()
    nonce = os.urandom(NONCE_BYTES)
    wrapped = AESGCM(epoch_key).encrypt(nonce, dek, _header_aad(epoch, transfer_id))
    return MAGIC + epoch.to_bytes(8, "big") + nonce + wrapped, dek


def header_epoch(header: bytes) -> int:
    if len(header) != HEADER_BYTES or not header.startswith(MAGIC):
        raise IntegrityError("stored payload has no labrelay at-rest header")
    return int.from_bytes(header[len(MAGIC) : len(MAGIC) + 8], "big")


def open_header(transfer_id: str, header: bytes, key_for: Callable[[int], bytes | None]) -> bytes:
    """The DEK, unwrapped with the epoch key ``key_for`` returns; ``EpochKeyGone`` when that key was destroyed."""
    epoch = header_epoch(header)
    epoch_key = key_for(epoch)
    if epoch_key is None:
        raise EpochKeyGone(f"payload {transfer_id} was wrapped under an epoch key that has been destroyed")
    start = len(MAGIC) + 8
    nonce, wrapped = header[start : start + NONCE_BYTES], header[start + NONCE_BYTES :]
    try:
        return AESGCM(epoch_key).decrypt(nonce, wrapped, _header_aad(epoch, transfer_id))
    except InvalidTag:
        raise IntegrityError(f"payload {transfer_id}: its data key does not unwrap (tampered or misplaced)") from None


def seal_segment(dek: bytes, transfer_id: str, offset: int, plain: bytes) -> bytes:
    length = len(plain)
    if not 0 < length <= SEGMENT:
        raise ValueError("a segment holds 1 to SEGMENT bytes")
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(dek).encrypt(nonce, plain, _segment_aad(transfer_id, offset, length))
    return length.to_bytes(4, "big") + nonce + sealed


@dataclass(frozen=True, slots=True)
class SegmentSpan:
    offset: int  # plaintext offset of the segment's first byte
    position: int  # where the segment starts in the stored file
    length: int  # plaintext bytes

    @property
    def stored(self) -> int:
        return SEGMENT_HEAD + self.length + TAG_BYTES

    @property
    def end(self) -> int:
        return self.offset + self.length


def scan(fh: BinaryIO, stored_size: int) -> tuple[list[SegmentSpan], int]:
    """The whole segments of a stored payload, and where the last whole one ends in the file. A torn segment at
    the end (a write cut by a crash) is not counted: the caller truncates it away."""
    spans: list[SegmentSpan] = []
    position, offset = HEADER_BYTES, 0
    while position + SEGMENT_HEAD <= stored_size:
        fh.seek(position)
        head = fh.read(4)
        (length,) = struct.unpack(">I", head)
        if not 0 < length <= SEGMENT:
            raise IntegrityError("stored payload has a malformed segment")
        span = SegmentSpan(offset, position, length)
        if position + span.stored > stored_size:
            break
        spans.append(span)
        position += span.stored
        offset += length
    return spans, position


def open_segment(dek: bytes, transfer_id: str, span: SegmentSpan, segment: bytes) -> bytes:
    if len(segment) != span.stored:
        raise IntegrityError("stored payload segment is truncated")
    nonce = segment[4:SEGMENT_HEAD]
    try:
        return AESGCM(dek).decrypt(nonce, segment[SEGMENT_HEAD:], _segment_aad(transfer_id, span.offset, span.length))
    except InvalidTag:
        raise IntegrityError(f"stored payload {transfer_id} failed its integrity check") from None


def read_plain(fh: BinaryIO, dek: bytes, transfer_id: str, spans: list[SegmentSpan], start: int) -> Iterator[bytes]:
    """The plaintext from ``start``, segment by segment (constant memory)."""
    for span in spans:
        if span.end <= start:
            continue
        fh.seek(span.position)
        plain = open_segment(dek, transfer_id, span, fh.read(span.stored))
        yield plain[start - span.offset :] if start > span.offset else plain


def _read_exact(read: Callable[[int], bytes], size: int) -> bytes:
    """``size`` bytes from a stream whose ``read(n)`` may return fewer; fewer only where the stream ends."""
    parts: list[bytes] = []
    missing = size
    while missing:
        block = read(missing)
        if not block:
            break
        parts.append(block)
        missing -= len(block)
    return b"".join(parts)


def read_segments(
    read: Callable[[int], bytes], dek: bytes, transfer_id: str, first_offset: int, end: int, start: int = 0
) -> Iterator[bytes]:
    """The plaintext from ``start`` of segments read one after another through ``read`` (a stream's ``read(n)``:
    an object store's response body), the first at plaintext offset ``first_offset``. The segments must hold exactly
    the plaintext ``first_offset`` to ``end`` and the stream must end there, else ``IntegrityError``. Segments that
    end at or before ``start`` are read past without being opened; memory stays one segment (constant)."""
    offset, position = first_offset, 0
    while offset < end:
        head = _read_exact(read, 4)
        if len(head) < 4:
            raise IntegrityError(f"stored payload {transfer_id} ends before its last segment")
        (length,) = struct.unpack(">I", head)
        if not 0 < length <= SEGMENT or offset + length > end:
            raise IntegrityError(f"stored payload {transfer_id} has a malformed segment")
        span = SegmentSpan(offset, position, length)
        segment = head + _read_exact(read, span.stored - 4)
        if span.end > start:
            plain = open_segment(dek, transfer_id, span, segment)  # IntegrityError when truncated, too
            yield plain[start - offset :] if start > offset else plain
        elif len(segment) != span.stored:
            raise IntegrityError("stored payload segment is truncated")
        offset, position = span.end, position + span.stored
    if read(1):
        raise IntegrityError(f"stored payload {transfer_id} has bytes past its last segment")


class SegmentWriter:
    """Appends plaintext as sealed segments from a segment boundary; ``finish`` seals what is buffered."""

    def __init__(self, fh: IO[bytes], dek: bytes, transfer_id: str, offset: int) -> None:
        self._fh = fh
        self._dek = dek
        self._id = transfer_id
        self.offset = offset  # plaintext bytes sealed so far
        self._buffer = bytearray()

    def write(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= SEGMENT:
            self._emit(bytes(self._buffer[:SEGMENT]))
            del self._buffer[:SEGMENT]

    def finish(self) -> int:
        if self._buffer:
            self._emit(bytes(self._buffer))
            self._buffer.clear()
        return self.offset

    def _emit(self, plain: bytes) -> None:
        self._fh.write(seal_segment(self._dek, self._id, self.offset, plain))
        self.offset += len(plain)
