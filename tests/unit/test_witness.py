"""The worker's witness fails closed like a client's checkpoints (another key, a log that went back, two heads for
one record), and keeps them in the file ``labrelay audit verify --checkpoints`` reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from labrelay.client.checkpoints import CheckpointBook
from labrelay.crypto.checkpoints import sign_checkpoint
from labrelay.crypto.keys import SigningKey
from labrelay.domain.audit import Checkpoint
from labrelay.errors import AuditTampered
from labrelay.storage.witness import FileWitness

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
URL = "labrelay:/srv/relay"


def cp(key: SigningKey, seq: int, digest: str = "a" * 64, at: datetime = T0) -> Checkpoint:
    return sign_checkpoint(key, key.public, seq, digest, at)


def test_the_witness_pins_the_key_refuses_going_back_and_writes_the_checkpoints_format(tmp_path: Path) -> None:
    path = tmp_path / "witness-checkpoints.json"
    key = SigningKey.generate()
    witness = FileWitness(path, URL)
    witness.observe(cp(key, 10))
    witness.observe(cp(key, 12, at=T0 + timedelta(hours=2)))
    witness.observe(cp(key, 12, at=T0 + timedelta(hours=2)))  # the same head again: nothing to keep
    again = FileWitness(path, URL)
    with pytest.raises(AuditTampered, match="another relay key"):
        again.observe(cp(SigningKey.generate(), 20))
    with pytest.raises(AuditTampered, match="went back"):
        again.observe(cp(key, 11))
    with pytest.raises(AuditTampered, match="two different"):
        again.observe(cp(key, 12, digest="b" * 64))
    book = CheckpointBook(path)  # what audit verify --checkpoints reads
    assert book.urls() == [URL]
    assert [c.seq for c in book.held_for_key(key.public.b64)] == [10, 12]
    assert oct(path.stat().st_mode & 0o777) == "0o600"
