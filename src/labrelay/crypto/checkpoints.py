"""Signing and checking the relay's audit checkpoints (``labrelay.domain.audit.Checkpoint``).

The signature covers ``b"labrelay-checkpoint-v1\\n"`` + the checkpoint's canonical JSON: a checkpoint signature can
never pass for any other signed object (envelopes use another purpose string). On the wire a checkpoint rides in
the ``Labrelay-Checkpoint`` response header as base64url of its compact JSON document.

``RelayBook`` holds the rules for keeping one relay's checkpoints, the same for a party's ``checkpoints.json``
(``labrelay.client.checkpoints``) and the worker's witness (``labrelay.storage.witness``): the first head pins the
relay's key, every later one must verify with it, and a head never goes back nor changes hash for a record already
kept. Kept: the latest head, and older ones at least ``SPACING`` apart, at most ``KEEP``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from labrelay.crypto.keys import SigningKey, VerifyKey, b64u, unb64u
from labrelay.domain.audit import Checkpoint
from labrelay.errors import AuditTampered, IntegrityError

_PREFIX = b"labrelay-checkpoint-v1\n"
MAX_HEADER = 1024
KEEP = 48
"""Older heads kept per relay."""
SPACING = timedelta(hours=1)
"""Between two older heads kept."""


def sign_checkpoint(key: SigningKey, relay_key: VerifyKey, seq: int, digest: str, at: datetime) -> Checkpoint:
    unsigned = Checkpoint(relay_key=relay_key.b64, seq=seq, hash=digest, at=at.replace(microsecond=0))
    return replace(unsigned, signature=b64u(key.sign(_PREFIX + unsigned.message())))


def verify_checkpoint(checkpoint: Checkpoint, key: VerifyKey | None = None) -> Checkpoint:
    """``checkpoint`` if its signature verifies with ``key`` (default: the key it names); else ``IntegrityError``.

    Pass the key you pinned: a checkpoint that names another key is refused, whatever its signature."""
    named = VerifyKey.from_b64(checkpoint.relay_key)
    if key is not None and named.raw != key.raw:
        raise IntegrityError("checkpoint signed by another relay key than the one pinned")
    try:
        named.verify(unb64u(checkpoint.signature), _PREFIX + checkpoint.message())
    except IntegrityError:
        raise IntegrityError(f"checkpoint {checkpoint.seq}: signature does not verify") from None
    return checkpoint


def encode_header(checkpoint: Checkpoint) -> str:
    return b64u(json.dumps(checkpoint.to_doc(), sort_keys=True, separators=(",", ":")).encode("ascii"))


def decode_header(value: str) -> Checkpoint:
    """A checkpoint from a response header (shape checked, signature not yet)."""
    if len(value) > MAX_HEADER:
        raise IntegrityError("checkpoint header too long")
    try:
        doc = json.loads(unb64u(value))
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        return Checkpoint.from_doc(doc)
    except (ValueError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"malformed checkpoint header: {exc}") from None


@dataclass
class RelayBook:
    """The checkpoints kept from one relay: the key pinned on first contact, the latest head, older ones spaced."""

    relay_key: str
    latest: Checkpoint | None = None
    history: list[Checkpoint] = field(default_factory=list)

    @classmethod
    def pinned_by(cls, checkpoint: Checkpoint) -> RelayBook:
        """First contact: the book of the key ``checkpoint`` names, once its signature verifies with it."""
        verify_checkpoint(checkpoint)
        return cls(checkpoint.relay_key)

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any], where: str) -> RelayBook:
        """One relay's entry of a checkpoints file; ``IntegrityError`` naming ``where`` if it is malformed."""
        try:
            book = cls(str(doc["relay_key"]))
            book.latest = Checkpoint.from_doc(doc["latest"]) if doc.get("latest") else None
            book.history = [Checkpoint.from_doc(d) for d in doc.get("history", [])]
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"{where}: unreadable checkpoint record: {exc}") from None
        return book

    def to_doc(self) -> dict[str, Any]:
        return {
            "relay_key": self.relay_key,
            "latest": self.latest.to_doc() if self.latest else None,
            "history": [c.to_doc() for c in self.history],
        }

    def all(self) -> list[Checkpoint]:
        return [*self.history, *([self.latest] if self.latest else [])]

    def observe(self, checkpoint: Checkpoint, url: str, hint: str) -> bool:
        """A head the relay at ``url`` signed: verified with the pinned key, compared, kept. True if the book
        changed; ``AuditTampered`` (with ``hint`` for a key that changed) if the relay's history did."""
        try:
            verify_checkpoint(checkpoint, VerifyKey.from_b64(self.relay_key))
        except IntegrityError as exc:
            raise AuditTampered(f"relay {url}: {exc.message}", hint=hint) from None
        latest = self.latest
        if latest is not None:
            if checkpoint.seq < latest.seq:
                raise AuditTampered(
                    f"relay {url}: its audit log went back from record {latest.seq} to {checkpoint.seq} "
                    "(truncated, or restored from an older copy)"
                )
            if checkpoint.seq == latest.seq and checkpoint.hash != latest.hash:
                raise AuditTampered(f"relay {url}: two different audit records {latest.seq}, both signed: rewritten")
            if checkpoint.seq == latest.seq:
                return False
            if not self.history or latest.at - self.history[-1].at >= SPACING:
                self.history.append(latest)
                del self.history[:-KEEP]
        self.latest = checkpoint
        return True
