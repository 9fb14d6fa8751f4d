"""A client's kept checkpoints fail closed: another key, a log that went back, two heads for one record."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from labrelay.client.checkpoints import CheckpointBook
from labrelay.crypto.checkpoints import decode_header, encode_header, sign_checkpoint, verify_checkpoint
from labrelay.crypto.keys import SigningKey
from labrelay.domain.audit import Checkpoint
from labrelay.errors import AuditTampered, IntegrityError

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
URL = "http://127.0.0.1:8000"


def cp(key: SigningKey, seq: int, digest: str = "a" * 64, at: datetime = T0) -> Checkpoint:
    return sign_checkpoint(key, key.public, seq, digest, at)


def test_header_round_trip_and_forgery() -> None:
    key = SigningKey.generate()
    signed = cp(key, 7)
    assert verify_checkpoint(decode_header(encode_header(signed)), key.public) == signed
    with pytest.raises(IntegrityError):
        verify_checkpoint(Checkpoint(signed.relay_key, 8, signed.hash, signed.at, signed.signature))
    with pytest.raises(IntegrityError, match="another relay key"):
        verify_checkpoint(signed, SigningKey.generate().public)
    with pytest.raises(IntegrityError):
        decode_header("not-base64!")


@pytest.mark.threat("T11")
def test_book_pins_the_key_and_refuses_going_back(tmp_path: Path) -> None:
    key = SigningKey.generate()
    book = CheckpointBook(tmp_path / "checkpoints.json")
    book.observe(URL, cp(key, 10))
    book.observe(URL, cp(key, 12, at=T0 + timedelta(hours=2)))
    book.save()
    again = CheckpointBook(tmp_path / "checkpoints.json")
    held = again.book(URL)
    assert held is not None
    assert [c.seq for c in held.all()] == [10, 12]
    with pytest.raises(AuditTampered, match="another relay key"):
        again.observe(URL, cp(SigningKey.generate(), 20))
    with pytest.raises(AuditTampered, match="went back"):
        again.observe(URL, cp(key, 11))
    with pytest.raises(AuditTampered, match="two different"):
        again.observe(URL, cp(key, 12, digest="b" * 64))
    assert [c.seq for c in again.held_for_key(key.public.b64)] == [10, 12]
