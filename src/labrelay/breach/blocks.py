"""CSV read in blocks of records, in bounded memory: the persons index of a ledger as it is decrypted, and the
affected list as ``notify`` reads it.

A block is cut only between records: at a newline outside quotes, i.e. with an even count of ``"`` before it in
the block (a quote inside a quoted field is doubled, RFC 4180), so a field holding a newline is never split.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO

import polars as pl

from labrelay.errors import IntegrityError

BLOCK_BYTES = 16 << 20  # about 100,000 rows of a persons index


class Malformed(IntegrityError):
    """The CSV is not the one expected, or is cut short."""


class CsvBlocks:
    """A write-only sink: hands ``on_block`` the CSV's records (bytes, header removed), in blocks of about
    ``block_bytes``; with ``gzip``, gunzips what is written first (every gzip member of it). The header must be
    ``columns``; ``close`` ends the stream, refusing one cut inside a gzip member or a quoted field."""

    def __init__(
        self, on_block: Callable[[bytes], None], columns: Sequence[str], *, block_bytes: int, gzip: bool
    ) -> None:
        self._on_block, self._columns, self._block_bytes = on_block, list(columns), max(1, block_bytes)
        self._gzip = gzip
        self._gunzip = zlib.decompressobj(wbits=31)
        self._fed = False  # the current gzip member has started
        self._buf = bytearray()
        self._header = False

    def write(self, data: bytes) -> int:
        size = len(data)
        if not self._gzip:
            self._take(data)
            return size
        while data:
            self._fed = True
            self._take(self._gunzip.decompress(data))
            if not self._gunzip.eof:
                break
            data = self._gunzip.unused_data  # the next gzip member, if any
            self._gunzip, self._fed = zlib.decompressobj(wbits=31), False
        return size

    def _take(self, plain: bytes) -> None:
        self._buf += plain
        if not self._header:
            end = self._buf.find(b"\n")
            if end < 0:
                return
            if self._buf[:end].rstrip(b"\r").decode("utf-8", "replace").split(",") != self._columns:
                raise Malformed(f"its header is not the one expected ({','.join(self._columns)})")
            self._header = True
            del self._buf[: end + 1]
        if len(self._buf) >= self._block_bytes:
            self._cut()

    def _cut(self) -> None:
        """Hand on blocks of at least ``block_bytes`` while the buffer holds that much: each ends at the first
        record boundary past that size."""
        start = 0
        while len(self._buf) - start >= self._block_bytes:
            nl = self._buf.find(b"\n", start + self._block_bytes - 1)
            while nl >= 0 and self._buf.count(b'"', start, nl) % 2:
                nl = self._buf.find(b"\n", nl + 1)  # that newline is inside a quoted field
            if nl < 0:
                break  # the record goes on in what is still to come
            self._on_block(bytes(self._buf[start : nl + 1]))
            start = nl + 1
        del self._buf[:start]

    def close(self) -> None:
        if self._gzip and self._fed and not self._gunzip.eof:
            raise Malformed("it ends inside its compressed stream")
        if self._buf and not self._header:
            raise Malformed("it has no header line")
        if self._buf.strip():
            if self._buf.count(b'"') % 2:
                raise Malformed("it ends inside a quoted field")
            block = bytes(self._buf)
            self._buf.clear()
            self._on_block(block)


def parse(block: bytes, columns: Sequence[str]) -> pl.DataFrame:
    """A block of records, every column as text (as ``read_csv`` reads them); a malformed one is refused."""
    try:
        return pl.read_csv(block, has_header=False, schema=dict.fromkeys(columns, pl.String))
    except pl.exceptions.PolarsError as exc:
        # polars' message may quote a field: personal data, kept out of the error
        raise Malformed(f"a block of records does not parse ({type(exc).__name__})") from None


def read_blocks(fh: BinaryIO, columns: Sequence[str], *, block_bytes: int = BLOCK_BYTES) -> Iterator[pl.DataFrame]:
    """The CSV file ``fh``, from where it stands, as frames of about ``block_bytes`` of records each."""
    ready: list[bytes] = []
    blocks = CsvBlocks(ready.append, columns, block_bytes=block_bytes, gzip=False)
    while chunk := fh.read(min(block_bytes, 1 << 20)):
        blocks.write(chunk)
        while ready:
            yield parse(ready.pop(0), columns)
    blocks.close()
    while ready:
        yield parse(ready.pop(0), columns)
