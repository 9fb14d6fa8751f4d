"""Keyed pseudonyms: HMAC-SHA256 of normalised identity traits, so that the same person gets the same pseudonym
across labs and batches, and nobody without the key can compute one from a name and a birth date.

The key is 32 random bytes written as 64 hexadecimal characters; HMAC uses those 64 ASCII characters as its key
(a 512-bit HMAC key with 256 bits of entropy). The directory authority creates it and hands it to labs when they
enrol; recipients of pseudonymised records never hold it. Computed vectorised by polars-hash; ``hmac_hex`` is the
standard-library reference the tests compare it with.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from labrelay.crypto.keys import read_private, write_private
from labrelay.errors import UsageError

if TYPE_CHECKING:
    import polars as pl

_KEY = re.compile(r"[0-9a-f]{64}")


def new_key() -> str:
    return secrets.token_hex(32)


def save_key(path: Path, key: str) -> None:
    write_private(path, (key + "\n").encode("ascii"))


def load_key(path: Path) -> str:
    key = read_private(path).decode("ascii", errors="replace").strip()
    if not _KEY.fullmatch(key):
        raise UsageError(f"{path} is not a pseudonym key (64 hexadecimal characters)")
    return key


def hmac_hex(key: str, message: str) -> str:
    """The reference: HMAC-SHA256 of ``message`` (UTF-8) under the key's ASCII bytes, as hex."""
    return hmac.new(key.encode("ascii"), message.encode("utf-8"), hashlib.sha256).hexdigest()


def hmac_hex_column(message: pl.Expr, key: str) -> pl.Expr:
    """The same, for a column of messages (polars-hash, in Rust; importing it registers the ``chash`` namespace)."""
    import polars_hash  # noqa: F401, PLC0415 - registers the chash namespace; loaded only where records are routed

    if not _KEY.fullmatch(key):
        raise UsageError("malformed pseudonym key")
    hashed: pl.Expr = cast(Any, message).chash.hmac_sha256(key=key)
    return hashed
