"""What a recipient receives: its records, serialised as CSV (the template's column names) or FHIR NDJSON.

A ``RecordSink`` takes batches of routed records (already minimised to the recipient's fields) and writes bytes to
a stream (in ``labrelay send``: gzip, then the age encryptor; never a plaintext file). It counts what it wrote.
"""

from __future__ import annotations

import io
import json
import uuid
from typing import Protocol

import polars as pl

from labrelay.batch.fhir import bundle_for

MEDIA_TYPES = {"csv": "text/csv", "fhir-ndjson": "application/fhir+ndjson"}


class ByteStream(Protocol):
    def write(self, data: bytes, /) -> int | None: ...


def csv_bytes(frame: pl.DataFrame, *, header: bool) -> bytes:
    """``frame`` as UTF-8 CSV, written by polars straight into bytes (no intermediate ``str`` to encode)."""
    buffer = io.BytesIO()
    frame.write_csv(buffer, include_header=header)
    return buffer.getvalue()


class RecordSink:
    """Serialise routed records for one recipient."""

    def __init__(self, stream: ByteStream, fields: tuple[str, ...], fmt: str) -> None:
        if fmt not in MEDIA_TYPES:
            raise ValueError(f"unknown output format {fmt!r}")
        self.stream = stream
        self.fields = fields
        self.format = fmt
        self.records = 0
        self._header = False

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.format]

    def write_frame(self, frame: pl.DataFrame) -> None:
        if self.format == "csv":
            if not self._header:
                self.stream.write((",".join(self.fields) + "\n").encode("utf-8"))
                self._header = True
            if frame.height:
                self.stream.write(csv_bytes(frame.select(self.fields), header=False))
        else:
            for row in frame.select(self.fields).iter_rows(named=True):
                bundle = bundle_for({k: v for k, v in row.items() if v is not None}, str(uuid.uuid4()))
                self.stream.write(
                    (json.dumps(bundle, ensure_ascii=False, separators=(",", ":"), default=str) + "\n").encode("utf-8")
                )
        self.records += frame.height
