"""The age v1 file format (C2SP age), streaming, on pyca/cryptography: X25519 and hybrid ML-KEM-768 + X25519.

One reader and one writer for both recipient types, so that a payload sealed to a post-quantum recipient takes the
same path, with the same bounded memory, as a classic one; docs/decisions/0017-own-age-format.md says why it is ours
and not pyrage's. What this module follows, from the specification and the reference implementation (Go age):

* The header: ``age-encryption.org/v1``, one stanza per recipient (``-> type args…`` then the body in canonical,
  unpadded base64, 64 columns, the last line shorter), ``---`` and the HMAC-SHA-256 of everything before the MAC
  under ``HKDF-SHA-256(file key, salt="", info="header")``. Any deviation is a header failure.
* ``X25519`` stanzas: ephemeral share, ``HKDF-SHA-256(shared, salt=share‖recipient, info="age-encryption.org/v1/
  X25519")`` wraps the 16-byte file key with ChaCha20-Poly1305; an all-zero shared secret is a header failure.
* ``mlkem768x25519`` stanzas: HPKE base mode, KEM MLKEM768-X25519 (X-Wing), HKDF-SHA-256, ChaCha20-Poly1305,
  ``info="age-encryption.org/mlkem768x25519"``; the stanza's argument is the 1,120-byte encapsulation, its body the
  32-byte sealed file key. Identity: a 32-byte seed, expanded by SHAKE-256 into the ML-KEM-768 seed (64 bytes) and
  the X25519 scalar (32). A low-order X25519 part is a header failure.
* The payload: a 16-byte nonce, then STREAM: ChaCha20-Poly1305 under ``HKDF-SHA-256(file key, salt=nonce,
  info="payload")``, 64 KiB chunks, nonce = 11-byte big-endian counter ‖ last-chunk flag; the last chunk may be
  short, and empty only when it is the only one; nothing may follow it.

Every failure raises ``AgeError`` (an ``IntegrityError``) whose ``stage`` says which of the C2SP test vectors'
outcomes it is: ``header``, ``no match``, ``hmac`` or ``payload``. Encryption refuses to mix classic and
post-quantum recipients in one file, as age does.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO, Literal, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from labrelay.errors import IntegrityError, UsageError

VERSION_LINE = b"age-encryption.org/v1"
CHUNK = 64 * 1024
TAG = 16
ENCRYPTED_CHUNK = CHUNK + TAG
FILE_KEY_BYTES = 16
NONCE_BYTES = 16
MAX_HEADER_BYTES = 1 << 20
"""A header longer than this is refused before it is read further (one hybrid stanza takes about 1.6 KB)."""

X25519_TYPE = "X25519"
HYBRID_TYPE = "mlkem768x25519"
X25519_LABEL = b"age-encryption.org/v1/X25519"
HYBRID_LABEL = b"age-encryption.org/mlkem768x25519"
MLKEM_PUBLIC_BYTES = 1184
HYBRID_PUBLIC_BYTES = MLKEM_PUBLIC_BYTES + 32
HYBRID_ENC_BYTES = 1088 + 32

CLASSIC_RECIPIENT_HRP = "age"
HYBRID_RECIPIENT_HRP = "age1pq"
CLASSIC_IDENTITY_HRP = "age-secret-key-"
HYBRID_IDENTITY_HRP = "age-secret-key-pq-"

_SUITE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)

Stage = Literal["header", "no match", "hmac", "payload"]


class AgeError(IntegrityError):
    """An age file that cannot be opened; ``stage`` is where it failed (header, no match, hmac, payload)."""

    def __init__(self, stage: Stage, message: str) -> None:
        super().__init__(f"age decryption failed ({stage}): {message}")
        self.stage: Stage = stage


# ------------------------------------------------------------------ Bech32 (BIP 173, without its 90-character limit)

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHARSET_REV = {c: i for i, c in enumerate(_CHARSET)}
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: Sequence[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _GEN[i]
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert(data: Sequence[int], from_bits: int, to_bits: int, pad: bool) -> list[int]:
    acc = bits = 0
    out: list[int] = []
    maxv = (1 << to_bits) - 1
    for value in data:
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (to_bits - bits)) & maxv)
    elif bits >= from_bits or (acc << (to_bits - bits)) & maxv:
        raise ValueError("non-zero padding in Bech32 data")
    return out


def bech32_encode(hrp: str, data: bytes) -> str:
    values = _convert(data, 8, 5, pad=True)
    polymod = _polymod([*_hrp_expand(hrp), *values, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[v] for v in values + checksum)


def bech32_decode(text: str) -> tuple[str, bytes]:
    """(human-readable part, data) of a Bech32 string, all lower or all upper case; ``ValueError`` otherwise."""
    if text.lower() != text and text.upper() != text:
        raise ValueError("mixed case in Bech32 string")
    text = text.lower()
    pos = text.rfind("1")
    if pos < 1 or pos + 7 > len(text) or any(not 33 <= ord(c) <= 126 for c in text):
        raise ValueError("malformed Bech32 string")
    hrp = text[:pos]
    try:
        values = [_CHARSET_REV[c] for c in text[pos + 1 :]]
    except KeyError:
        raise ValueError("invalid Bech32 character") from None
    if _polymod([*_hrp_expand(hrp), *values]) != 1:
        raise ValueError("invalid Bech32 checksum")
    return hrp, bytes(_convert(values[:-6], 5, 8, pad=False))


# ------------------------------------------------------------------ keys


_RECIPIENT_SHAPE = re.compile(r"age1(?:pq1)?[02-9ac-hj-np-z]+")


def is_hybrid_recipient(recipient: str) -> bool:
    return recipient.startswith(HYBRID_RECIPIENT_HRP + "1")


def parse_recipient(recipient: str) -> tuple[str, bytes]:
    """(stanza type, public key bytes) of an ``age1…`` (X25519) or ``age1pq1…`` (hybrid) recipient, lower case."""
    if not _RECIPIENT_SHAPE.fullmatch(recipient):
        raise UsageError("not an age recipient (age1… or age1pq1…, lower case)")
    try:
        hrp, key = bech32_decode(recipient)
    except ValueError as exc:
        raise UsageError(f"not an age recipient: {exc}") from None
    if hrp == CLASSIC_RECIPIENT_HRP and len(key) == 32:
        return X25519_TYPE, key
    if hrp == HYBRID_RECIPIENT_HRP and len(key) == HYBRID_PUBLIC_BYTES:
        return HYBRID_TYPE, key
    raise UsageError("not an age X25519 or ML-KEM-768 + X25519 recipient")


@dataclass(frozen=True, slots=True)
class SecretKey:
    """A parsed age identity: its stanza type and private material (X25519 scalar, or the hybrid seed)."""

    kind: str
    raw: bytes

    @classmethod
    def parse(cls, text: str) -> SecretKey:
        if text.upper() != text:
            raise UsageError("an age identity is upper case (AGE-SECRET-KEY-…)")
        try:
            hrp, raw = bech32_decode(text)
        except ValueError as exc:
            raise UsageError(f"not an age identity: {exc}") from None
        if hrp == CLASSIC_IDENTITY_HRP and len(raw) == 32:
            return cls(X25519_TYPE, raw)
        if hrp == HYBRID_IDENTITY_HRP and len(raw) == 32:
            return cls(HYBRID_TYPE, raw)
        raise UsageError("not an age X25519 or ML-KEM-768 + X25519 identity")

    @classmethod
    def generate(cls, kind: str) -> SecretKey:
        if kind not in (X25519_TYPE, HYBRID_TYPE):
            raise UsageError(f"unknown age key type {kind!r}")
        return cls(kind, os.urandom(32))

    def encode(self) -> str:
        hrp = HYBRID_IDENTITY_HRP if self.kind == HYBRID_TYPE else CLASSIC_IDENTITY_HRP
        return bech32_encode(hrp, self.raw).upper()

    def _x25519(self) -> X25519PrivateKey:
        return X25519PrivateKey.from_private_bytes(self.raw)

    def _hybrid(self) -> tuple[MLKEM768PrivateKey, X25519PrivateKey]:
        expanded = hashlib.shake_256(self.raw).digest(96)
        return MLKEM768PrivateKey.from_seed_bytes(expanded[:64]), X25519PrivateKey.from_private_bytes(expanded[64:])

    def recipient(self) -> str:
        if self.kind == X25519_TYPE:
            return bech32_encode(CLASSIC_RECIPIENT_HRP, self._x25519().public_key().public_bytes_raw())
        mlkem, x25519 = self._hybrid()
        public = mlkem.public_key().public_bytes_raw() + x25519.public_key().public_bytes_raw()
        return bech32_encode(HYBRID_RECIPIENT_HRP, public)

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        """The file key from the first stanza of this identity's type it opens; None when none is for it."""
        pair = None
        for stanza in stanzas:
            if stanza.type != self.kind:
                continue
            if self.kind == X25519_TYPE:
                key = self._unwrap_x25519(stanza)
            else:
                pair = pair or self._hybrid()  # derived once per file, not once per stanza
                key = self._unwrap_hybrid(stanza, *pair)
            if key is not None:
                return key
        return None

    def _unwrap_x25519(self, stanza: Stanza) -> bytes | None:
        if len(stanza.args) != 1:
            raise AgeError("header", "an X25519 stanza has one argument")
        share = _b64decode(stanza.args[0])
        if len(share) != 32:
            raise AgeError("header", "an X25519 share has 32 bytes")
        if len(stanza.body) != FILE_KEY_BYTES + TAG:
            raise AgeError("header", "an X25519 stanza's body is a 16-byte file key, sealed")
        ours = self._x25519()
        try:
            shared = ours.exchange(X25519PublicKey.from_public_bytes(share))
        except ValueError:
            raise AgeError("header", "X25519 share of low order") from None
        if not any(shared):
            raise AgeError("header", "X25519 share of low order")
        salt = share + ours.public_key().public_bytes_raw()
        wrap_key = _hkdf(shared, salt, X25519_LABEL)
        try:
            return ChaCha20Poly1305(wrap_key).decrypt(bytes(12), stanza.body, None)
        except InvalidTag:
            return None

    def _unwrap_hybrid(self, stanza: Stanza, mlkem: MLKEM768PrivateKey, x25519: X25519PrivateKey) -> bytes | None:
        if len(stanza.args) != 1:
            raise AgeError("header", "an mlkem768x25519 stanza has one argument")
        enc = _b64decode(stanza.args[0])
        if len(enc) != HYBRID_ENC_BYTES:
            raise AgeError("header", f"an mlkem768x25519 encapsulation has {HYBRID_ENC_BYTES} bytes")
        if len(stanza.body) != FILE_KEY_BYTES + TAG:
            raise AgeError("header", "an mlkem768x25519 stanza's body is a 16-byte file key, sealed")
        try:  # HPKE would only say "no match" for a low-order share; the specification makes it a header failure
            shared = x25519.exchange(X25519PublicKey.from_public_bytes(enc[-32:]))
        except ValueError:
            raise AgeError("header", "X25519 part of the encapsulation of low order") from None
        if not any(shared):
            raise AgeError("header", "X25519 part of the encapsulation of low order")
        try:
            return _SUITE.decrypt(enc + stanza.body, hpke.MLKEM768X25519PrivateKey(mlkem, x25519), info=HYBRID_LABEL)
        except InvalidTag:
            return None


def wrap(recipient: str, file_key: bytes) -> Stanza:
    """The stanza that gives ``file_key`` to ``recipient``."""
    return _wrap(*parse_recipient(recipient), file_key)


def _wrap(kind: str, public: bytes, file_key: bytes) -> Stanza:
    if kind == X25519_TYPE:
        ephemeral = X25519PrivateKey.generate()
        share = ephemeral.public_key().public_bytes_raw()
        try:
            shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(public))
        except ValueError:
            raise UsageError("the X25519 recipient is a low-order point") from None
        body = ChaCha20Poly1305(_hkdf(shared, share + public, X25519_LABEL)).encrypt(bytes(12), file_key, None)
        return Stanza(X25519_TYPE, (_b64encode(share),), body)
    try:  # FIPS 203's modulus check on the ML-KEM-768 encapsulation key
        key = hpke.MLKEM768X25519PublicKey(
            MLKEM768PublicKey.from_public_bytes(public[:MLKEM_PUBLIC_BYTES]),
            X25519PublicKey.from_public_bytes(public[MLKEM_PUBLIC_BYTES:]),
        )
    except ValueError:
        raise UsageError("the ML-KEM-768 + X25519 recipient is not a valid ML-KEM-768 public key") from None
    try:
        sealed = _SUITE.encrypt(file_key, key, info=HYBRID_LABEL)
    except ValueError:  # the X25519 shared secret is all zeros
        raise UsageError("the X25519 part of the ML-KEM-768 + X25519 recipient is a low-order point") from None
    enc, body = sealed[:HYBRID_ENC_BYTES], sealed[HYBRID_ENC_BYTES:]
    return Stanza(HYBRID_TYPE, (_b64encode(enc),), body)


# ------------------------------------------------------------------ header


@dataclass(frozen=True, slots=True)
class Stanza:
    type: str
    args: tuple[str, ...]
    body: bytes

    def encode(self) -> bytes:
        line = " ".join(("->", self.type, *self.args)).encode("ascii") + b"\n"
        text = _b64encode(self.body)
        lines = [text[i : i + 64] for i in range(0, len(text), 64)]
        if not lines or len(lines[-1]) == 64:
            lines.append("")
        return line + "".join(f"{part}\n" for part in lines).encode("ascii")


_B64 = re.compile(r"[A-Za-z0-9+/]*")


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    """Strict, canonical, unpadded standard base64 (as Go's RawStdEncoding.Strict)."""
    if not _B64.fullmatch(text) or len(text) % 4 == 1:
        raise AgeError("header", "malformed base64")
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise AgeError("header", "malformed base64") from None
    if _b64encode(data) != text:
        raise AgeError("header", "non-canonical base64")
    return data


def _hkdf(secret: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(secret)


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def _read_full(source: Readable, n: int) -> bytes:
    """Up to ``n`` bytes, fewer only at the end of ``source``."""
    data = source.read(n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n and (more := source.read(n - got)):
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class _LineReader:
    """Reads header lines from a stream one byte buffer at a time, never past the header."""

    def __init__(self, source: Readable) -> None:
        self._source = source
        self._buffer = b""
        self.consumed = bytearray()

    def line(self) -> bytes:
        while b"\n" not in self._buffer:
            if len(self.consumed) + len(self._buffer) > MAX_HEADER_BYTES:
                raise AgeError("header", "header too long")
            more = self._source.read(4096)
            if not more:
                raise AgeError("header", "unexpected end of file in the header")
            self._buffer += more
        line, _, self._buffer = self._buffer.partition(b"\n")
        self.consumed += line + b"\n"
        return line

    def rest(self) -> bytes:
        """What was read past the header (the payload's first bytes)."""
        rest, self._buffer = self._buffer, b""
        return rest


@dataclass(frozen=True, slots=True)
class Header:
    stanzas: tuple[Stanza, ...]
    mac: bytes
    mac_input: bytes


def _vchars(text: str) -> bool:
    return bool(text) and all(33 <= ord(c) <= 126 for c in text)


def read_header(reader: _LineReader) -> Header:
    if reader.line() != VERSION_LINE:
        raise AgeError("header", "not an age v1 file")
    stanzas: list[Stanza] = []
    while True:
        start = len(reader.consumed)
        raw = reader.line()
        try:
            line = raw.decode("ascii")
        except UnicodeDecodeError:
            raise AgeError("header", "non-ASCII header line") from None
        if line.startswith("--- "):
            mac = _b64decode(line[4:])
            if len(mac) != 32:
                raise AgeError("header", "malformed header MAC")
            mac_input = bytes(reader.consumed[: start + 3])
            return Header(tuple(stanzas), mac, mac_input)
        if not line.startswith("-> "):
            raise AgeError("header", "malformed header line")
        args = line[3:].split(" ")
        if not all(_vchars(a) for a in args):
            raise AgeError("header", "malformed stanza arguments")
        body = bytearray()
        while True:
            chunk = reader.line().decode("ascii", errors="replace")
            if len(chunk) > 64:
                raise AgeError("header", "stanza body line longer than 64 columns")
            body += _b64decode(chunk)
            if len(chunk) < 64:
                break
        stanzas.append(Stanza(args[0], tuple(args[1:]), bytes(body)))


def _header_mac(file_key: bytes, mac_input: bytes) -> bytes:
    return hmac.new(_hkdf(file_key, b"", b"header"), mac_input, hashlib.sha256).digest()


# ------------------------------------------------------------------ decryption


class _Prefixed:
    """``source`` with ``prefix`` (bytes already read past the header) put back in front."""

    def __init__(self, prefix: bytes, source: Readable) -> None:
        self._prefix = prefix
        self._source = source

    def read(self, n: int = -1, /) -> bytes:
        if self._prefix:
            if n < 0:
                head, self._prefix = self._prefix + self._source.read(), b""
            else:
                head, self._prefix = self._prefix[:n], self._prefix[n:]
            return head
        return self._source.read(n)


def decrypt(
    source: Readable, sink: BinaryIO, identities: Sequence[SecretKey], *, max_stanzas: int | None = None
) -> None:
    """Decrypt the age file ``source`` into ``sink`` with the first of ``identities`` that opens it; ``AgeError``
    otherwise. Memory is bounded by two chunks. On an error, what was written to ``sink`` must be discarded. A file
    with more than ``max_stanzas`` recipients is refused before any is tried (each hybrid one costs a
    decapsulation)."""
    reader = _LineReader(source)
    header = read_header(reader)
    if max_stanzas is not None and len(header.stanzas) > max_stanzas:
        raise AgeError("header", f"{len(header.stanzas)} recipients, more than the {max_stanzas} accepted")
    types = [s.type for s in header.stanzas]
    if "scrypt" in types and len(types) != 1:
        raise AgeError("header", "an scrypt stanza must be alone")
    file_key = None
    for identity in identities:
        file_key = identity.unwrap(header.stanzas)
        if file_key is not None:
            break
    if file_key is None:
        raise AgeError("no match", "no identity matched any of the file's recipients")
    if len(file_key) != FILE_KEY_BYTES:
        raise AgeError("header", "the file key has 16 bytes")
    if not hmac.compare_digest(_header_mac(file_key, header.mac_input), header.mac):
        raise AgeError("hmac", "the header's MAC does not verify")
    rest = _Prefixed(reader.rest(), source)
    nonce = _read_full(rest, NONCE_BYTES)
    if len(nonce) != NONCE_BYTES:
        raise AgeError("header", "the payload nonce is missing")  # as the C2SP vectors class it
    aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
    counter = 0
    chunk = _read_full(rest, ENCRYPTED_CHUNK)
    while True:
        following = _read_full(rest, ENCRYPTED_CHUNK) if len(chunk) == ENCRYPTED_CHUNK else b""
        last = not following
        if len(chunk) < TAG or (last and len(chunk) == TAG and counter):
            raise AgeError("payload", "the payload is truncated")
        try:
            plain = aead.decrypt(counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00"), chunk, None)
        except InvalidTag:
            raise AgeError("payload", f"chunk {counter} fails authentication") from None
        sink.write(plain)
        if last:
            return
        chunk = following
        counter += 1


# ------------------------------------------------------------------ encryption


class Writer:
    """A write-only stream that age-encrypts what it is given into ``sink``, one 64 KiB chunk at a time.

    ``close`` writes the last chunk; a writer that is not closed leaves an incomplete file that no reader accepts.
    """

    def __init__(self, sink: BinaryIO, recipients: Sequence[str]) -> None:
        if not recipients:
            raise UsageError("no recipient to encrypt to")
        parsed = [parse_recipient(r) for r in recipients]  # once: a hybrid one is 1,959 Bech32 characters
        if len({kind for kind, _ in parsed}) > 1:
            raise UsageError("refusing to encrypt to both classic (X25519) and post-quantum recipients in one file")
        file_key = os.urandom(FILE_KEY_BYTES)
        header = VERSION_LINE + b"\n" + b"".join(_wrap(k, pub, file_key).encode() for k, pub in parsed) + b"---"
        nonce = os.urandom(NONCE_BYTES)
        sink.write(header + b" " + _b64encode(_header_mac(file_key, header)).encode("ascii") + b"\n" + nonce)
        self._sink = sink
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        self._buffer = bytearray()
        self._counter = 0
        self._closed = False

    def _emit(self, data: bytes | bytearray | memoryview, last: bool) -> None:
        nonce = self._counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")
        self._sink.write(self._aead.encrypt(nonce, data, None))
        self._counter += 1

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            raise ValueError("write to a closed age writer")
        view = memoryview(data).cast("B")
        written = len(view)
        # A full chunk is kept back until more follows: only close() knows whether it is the last.
        if self._buffer:
            take = CHUNK - len(self._buffer)
            self._buffer += view[:take]
            view = view[take:]
            if not view:
                return written
            self._emit(self._buffer, last=False)
            self._buffer = bytearray()
        while len(view) > CHUNK:  # straight from the caller's buffer: no copy of what it hands over
            self._emit(view[:CHUNK], last=False)
            view = view[CHUNK:]
        self._buffer += view
        return written

    def flush(self) -> None:
        self._sink.flush()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._emit(self._buffer, last=True)
            self._buffer.clear()
