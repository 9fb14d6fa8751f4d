"""The S3 payload store's ledger (decision 0021): what the store wrote to the bucket for each transfer, kept in the
relay's database so that uploads and downloads never list the bucket. The rows are plain values; the SQL ledger is
``labrelay.storage.sql.payload_objects``, the store that uses it ``labrelay.storage.s3.LedgeredS3PayloadStore``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One thing the store wrote for a transfer, as its ledger keeps it."""

    name: str  # "header", "published", or a chunk object's <start:016d>-<end:016d>
    state: str  # pending (PUT under way or lost), stored, dropped (off the chain, its deletion not proven)
    start: int | None
    end: int | None
    stored: int | None
    etag: str | None
    version: str | None
    attempts: int
    body: str | None


class ObjectLedger(Protocol):
    """What an S3 payload store wrote, kept in the relay's database (``labrelay.storage.sql.payload_objects``)."""

    def rows(self, transfer_id: str) -> list[LedgerRow]: ...
    def create(self, transfer_id: str, name: str, body: str, end: int | None = None) -> bool: ...
    def pending(self, transfer_id: str, name: str, start: int, end: int) -> None: ...
    def stored(
        self, transfer_id: str, name: str, stored: int, etag: str, version: str | None, retried: bool
    ) -> None: ...
    def mark(self, transfer_id: str, names: Sequence[str], state: str) -> None: ...
    def remove(self, transfer_id: str, names: Sequence[str] | None = None) -> None: ...
    def ids(self) -> list[str]: ...
