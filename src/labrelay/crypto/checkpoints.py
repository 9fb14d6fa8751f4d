"""Signing and checking the relay's audit checkpoints (``labrelay.domain.audit.Checkpoint``).

The signature covers ``b"labrelay-checkpoint-v1\\n"`` + the checkpoint's canonical JSON: a checkpoint signature can
never pass for any other signed object (envelopes use another purpose string). On the wire a checkpoint rides in
the ``Labrelay-Checkpoint`` response header as base64url of its compact JSON document.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime

from labrelay.crypto.keys import SigningKey, VerifyKey, b64u, unb64u
from labrelay.domain.audit import Checkpoint
from labrelay.errors import IntegrityError

_PREFIX = b"labrelay-checkpoint-v1\n"
MAX_HEADER = 1024


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
