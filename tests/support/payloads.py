"""Payloads for the payload-store tests (tests/unit/test_payload_stores.py, test_s3_store.py): deterministic bytes
that look like ciphertext, and an upload written chunk by chunk through the store's port."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from labrelay.domain.names import new_id
from labrelay.ports import PayloadStore

HOUR = timedelta(hours=1)  # the stores' epoch length in these tests
DEADLINE = datetime(2026, 11, 29, 9, 30, tzinfo=UTC)


def plaintext(size: int, seed: bytes = b"labrelay") -> bytes:
    """Deterministic bytes that look random (payloads are age ciphertext: incompressible)."""
    return hashlib.shake_256(seed).digest(size)


def upload(store: PayloadStore, plain: bytes, chunks: list[int], *, publish: bool = True) -> str:
    """A new transfer's upload of ``plain`` in ``chunks`` (sizes), published unless told otherwise; its id."""
    transfer_id = new_id()
    store.begin(transfer_id, DEADLINE)
    offset = 0
    for size in chunks:
        writer = store.writer(transfer_id, offset)
        writer.write(plain[offset : offset + size])
        offset = writer.commit()
    if publish:
        store.publish(transfer_id)
    return transfer_id


def finish(store: PayloadStore, transfer_id: str, plain: bytes, offset: int) -> int:
    """The rest of ``plain`` uploaded from ``offset`` (a resumed upload, perhaps on another replica), then
    published; the size the store committed."""
    writer = store.writer(transfer_id, offset)
    writer.write(plain[offset:])
    size = writer.commit()
    store.publish(transfer_id)
    return size
