"""A client's kept checkpoints fail closed: another key, a log that went back, two heads for one record."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from labrelay.client.checkpoints import CheckpointBook
from labrelay.client.history import check_history
from labrelay.clock import ManualClock
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


@pytest.mark.threat("T11")
def test_overlapping_requests_may_answer_an_older_head_never_one_below_what_was_known(tmp_path: Path) -> None:
    """Uploads run several requests at once: the answer to one sent when the client knew record 10 may arrive
    after the answer to a later one (14), carrying 12. It is verified, not kept; below 10 it is a log gone back."""
    key = SigningKey.generate()
    book = CheckpointBook(tmp_path / "checkpoints.json")
    book.observe(URL, cp(key, 10))
    book.observe(URL, cp(key, 14, at=T0 + timedelta(minutes=1)))
    book.observe(URL, cp(key, 12), known=cp(key, 10))
    held = book.book(URL)
    assert held is not None
    assert held.latest is not None
    assert held.latest.seq == 14
    with pytest.raises(AuditTampered, match="went back"):
        book.observe(URL, cp(key, 9), known=cp(key, 10))
    with pytest.raises(AuditTampered, match="went back"):
        book.observe(URL, cp(key, 12))  # no request in flight: the latest is the floor
    with pytest.raises(AuditTampered, match="another relay key"):
        book.observe(URL, cp(SigningKey.generate(), 12), known=cp(key, 10))
    forged = cp(key, 12)
    with pytest.raises(AuditTampered):
        book.observe(URL, Checkpoint(forged.relay_key, 13, forged.hash, forged.at, forged.signature), known=cp(key, 10))


class LyingRelay:
    """What ``check_history`` sees of a relay: its answers, which a dishonest relay chooses."""

    def __init__(self, key: SigningKey, head: Checkpoint, answers: dict[int, dict]) -> None:
        self.base, self._head, self._answers = URL, head, answers
        self.checkpoint = head

    def audit_checkpoint(self) -> Checkpoint:
        return self._head

    def audit_hash(self, seq: int) -> dict:
        return self._answers[seq]


@pytest.mark.threat("T11")
def test_a_relay_cannot_claim_a_recent_checkpoint_was_pruned(tmp_path: Path) -> None:
    key = SigningKey.generate()
    book = CheckpointBook(tmp_path / "checkpoints.json")
    held = cp(key, 10, at=T0)
    book.observe(URL, held)
    clock = ManualClock(T0 + timedelta(days=3))
    head = cp(key, 50, "c" * 64, at=T0 + timedelta(days=3))
    # The relay signs an anchor past the checkpoint three days later: pruning that early is refused.
    anchor = cp(key, 20, "d" * 64, at=T0 + timedelta(days=1)).to_doc()
    relay = LyingRelay(key, head, {10: {"seq": 10, "hash": None, "anchor": anchor}})
    with pytest.raises(AuditTampered, match="said to be pruned"):
        check_history(relay, book, clock)  # type: ignore[arg-type]
    # An unsigned (forged) anchor is refused outright.
    forged = {**anchor, "sig": anchor["sig"][::-1]}
    relay = LyingRelay(key, head, {10: {"seq": 10, "hash": None, "anchor": forged}})
    with pytest.raises(AuditTampered, match="anchor does not verify"):
        check_history(relay, book, clock)  # type: ignore[arg-type]
    # A record that changed is named; the same answer a year on, with an old anchor, is legitimate pruning.
    relay = LyingRelay(key, head, {10: {"seq": 10, "hash": "e" * 64, "anchor": None}})
    with pytest.raises(AuditTampered, match="record 10 is not the one the relay signed"):
        check_history(relay, book, clock)  # type: ignore[arg-type]
    later = ManualClock(T0 + timedelta(days=400))
    relay = LyingRelay(key, head, {10: {"seq": 10, "hash": None, "anchor": anchor}})
    assert check_history(relay, book, later).pruned == 1  # type: ignore[arg-type]


@pytest.mark.threat("T11")
def test_an_older_head_must_agree_with_every_head_known_for_its_record(tmp_path: Path) -> None:
    """A forking relay answering an overlapping request with a validly signed head of a record the client already
    holds another head for is refused: the one the request left with, one kept, or one seen in this run."""
    key = SigningKey.generate()
    book = CheckpointBook(tmp_path / "checkpoints.json")
    book.observe(URL, cp(key, 10))
    book.observe(URL, cp(key, 12, at=T0 + timedelta(minutes=1)))  # seen, not kept (history is spaced)
    book.observe(URL, cp(key, 14, at=T0 + timedelta(minutes=2)))
    known = cp(key, 10)
    book.observe(URL, cp(key, 10), known=known)  # the genuine head it left with
    book.observe(URL, cp(key, 12), known=known)  # an older genuine head
    book.observe(URL, cp(key, 11), known=known)  # one it never saw: verified only
    with pytest.raises(AuditTampered, match="two different"):
        book.observe(URL, cp(key, 10, digest="b" * 64), known=known)  # same record as the one it left with
    with pytest.raises(AuditTampered, match="two different"):
        book.observe(URL, cp(key, 12, digest="b" * 64), known=known)  # same record as one seen since
    with pytest.raises(AuditTampered, match="two different"):
        book.observe(URL, cp(key, 11, digest="b" * 64), known=known)  # another head for the 11 just answered
    with pytest.raises(AuditTampered, match="went back"):
        book.observe(URL, cp(key, 9), known=known)  # below the floor
    # The head a request left with is compared even when the book never kept it (another client object, say).
    other = CheckpointBook(tmp_path / "other.json")
    other.observe(URL, cp(key, 14, at=T0 + timedelta(minutes=2)))
    with pytest.raises(AuditTampered, match="two different"):
        other.observe(URL, cp(key, 13, digest="b" * 64), known=cp(key, 13))
