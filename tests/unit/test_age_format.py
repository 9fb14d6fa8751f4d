"""Our age v1 reader and writer (labrelay.crypto.age_format, through labrelay.crypto.age_stream), beyond the C2SP
vectors (tests/unit/test_age_cctv.py): round trips of both recipient kinds at the STREAM chunk boundaries, every
truncation and a flipped byte in every part of a file failing at the right stage, trailing bytes, several
recipients, the refusal to mix kinds, Bech32, identity files, an aborted sealer, bounded memory, and the classic
path against pyrage and the real ``age`` tool (Debian's 1.1.1: it has no post-quantum recipients; the hybrid path
against the reference TypeScript implementation is tests/integration/test_age_interop.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import itertools
import os
import shutil
import subprocess
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pyrage
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from labrelay.crypto import age_format as af
from labrelay.crypto import age_stream
from labrelay.crypto.keys import AgeIdentity, write_private
from labrelay.errors import InsecureKeyFile, IntegrityError, LabrelayError, UsageError

CHUNK = af.CHUNK
SEALED_CHUNK = af.ENCRYPTED_CHUNK
KINDS = [af.X25519_TYPE, af.HYBRID_TYPE]
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3_000_000]


@pytest.fixture(scope="module")
def keys() -> dict[str, list[af.SecretKey]]:
    """Three identities of each kind."""
    return {kind: [af.SecretKey.generate(kind) for _ in range(3)] for kind in KINDS}


def seal(plain: bytes, recipients: list[str], piece: int | None = None) -> bytes:
    """``plain`` through age_format.Writer, written whole or ``piece`` bytes at a time."""
    sink = io.BytesIO()
    writer = af.Writer(sink, recipients)
    step = piece or max(len(plain), 1)
    for i in range(0, len(plain), step):
        writer.write(plain[i : i + step])
    writer.close()
    return sink.getvalue()


def open_sealed(sealed: bytes, identities: list[af.SecretKey]) -> bytes:
    out = io.BytesIO()
    af.decrypt(io.BytesIO(sealed), out, identities)
    return out.getvalue()


def stage_of(sealed: bytes, identities: list[af.SecretKey]) -> str:
    with pytest.raises(af.AgeError) as caught:
        open_sealed(sealed, identities)
    return caught.value.stage


def header_length(sealed: bytes) -> int:
    """Bytes up to and including the MAC line."""
    return sealed.index(b"\n", sealed.index(b"\n--- ") + 1) + 1


def chunk_count(size: int) -> int:
    return max(1, -(-size // CHUNK))


def stanza_types(sealed: bytes) -> list[str]:
    head = sealed[: header_length(sealed)].decode("ascii")
    return [line.split(" ")[1] for line in head.splitlines() if line.startswith("-> ")]


class Trickle:
    """A source that hands out at most ``most`` bytes per read (a socket, a slow pipe)."""

    def __init__(self, data: bytes, most: int) -> None:
        self._data = memoryview(data)
        self._most = most

    def read(self, n: int = -1) -> bytes:
        take = self._most if n < 0 else min(n, self._most)
        out, self._data = bytes(self._data[:take]), self._data[take:]
        return out


# ------------------------------------------------------------------ round trips at the chunk boundaries


@pytest.mark.parametrize("piece", [None, 4093, CHUNK], ids=["whole", "4093", "chunk"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", KINDS)
def test_writer_round_trip_at_chunk_boundaries(keys, kind: str, size: int, piece: int | None) -> None:
    key = keys[kind][0]
    plain = os.urandom(size)
    sealed = seal(plain, [key.recipient()], piece)
    # One 16-byte tag per 64 KiB chunk, the last one full when the size is a multiple (never an empty extra one).
    assert len(sealed) == header_length(sealed) + af.NONCE_BYTES + size + af.TAG * chunk_count(size)
    assert stanza_types(sealed) == [kind]
    assert open_sealed(sealed, [key]) == plain


@pytest.mark.parametrize("kind", KINDS)
def test_reader_takes_short_reads(keys, kind: str) -> None:
    key = keys[kind][0]
    plain = os.urandom(2 * CHUNK + 7)
    sealed = seal(plain, [key.recipient()])
    for most in (1, 7, 4097, SEALED_CHUNK - 1):
        out = io.BytesIO()
        af.decrypt(Trickle(sealed, most), out, [key])
        assert out.getvalue() == plain, most


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", KINDS)
def test_age_stream_round_trip_hashes_the_ciphertext(keys, kind: str, size: int) -> None:
    identity = AgeIdentity(keys[kind][0].encode())
    plain = os.urandom(size)
    sink = io.BytesIO()
    written, sha = age_stream.encrypt(io.BytesIO(plain), sink, [identity.recipient])
    sealed = sink.getvalue()
    assert (written, sha) == (len(sealed), hashlib.sha256(sealed).hexdigest())
    out = io.BytesIO()
    age_stream.decrypt(io.BytesIO(sealed), out, [identity], expect=age_stream.Expected(written, sha))
    assert out.getvalue() == plain
    for wrong in (age_stream.Expected(written + 1, sha), age_stream.Expected(written, "0" * 64)):
        with pytest.raises(IntegrityError, match="not the one expected"):
            age_stream.decrypt(io.BytesIO(sealed), io.BytesIO(), [identity], expect=wrong)


@pytest.mark.parametrize("kind", KINDS)
def test_streaming_sealer_round_trip(keys, kind: str) -> None:
    identity = AgeIdentity(keys[kind][0].encode())
    plain = os.urandom(3 * CHUNK + 11)
    sink = io.BytesIO()
    sealer = age_stream.StreamingSealer(sink, identity.recipient)
    for i in range(0, len(plain), 10_000):
        sealer.write(plain[i : i + 10_000])
    size, sha = sealer.close()
    assert (size, sha) == (len(sink.getvalue()), hashlib.sha256(sink.getvalue()).hexdigest())
    out = io.BytesIO()
    age_stream.decrypt(io.BytesIO(sink.getvalue()), out, [identity], expect=age_stream.Expected(size, sha))
    assert out.getvalue() == plain


# ------------------------------------------------------------------ truncation, flipped bytes, trailing bytes


@pytest.mark.parametrize("size", [3 * CHUNK, 3 * CHUNK + 100], ids=["whole-chunks", "short-last"])
@pytest.mark.parametrize("kind", KINDS)
def test_truncation_at_every_chunk_boundary_fails(keys, kind: str, size: int) -> None:
    key = keys[kind][0]
    sealed = seal(os.urandom(size), [key.recipient()])
    head = header_length(sealed)
    payload = head + af.NONCE_BYTES
    cuts = {
        0: "header",
        len(af.VERSION_LINE) + 1: "header",
        head // 2: "header",
        head - 1: "header",  # the MAC line without its newline
        head: "header",  # no nonce: how the C2SP vectors class it
        head + af.NONCE_BYTES // 2: "header",
        payload: "payload",  # no chunk at all
    }
    for i in range(1, chunk_count(size) + 1):
        boundary = payload + i * SEALED_CHUNK
        if boundary < len(sealed):
            cuts[boundary] = "payload"  # a whole chunk sealed as not the last, now the last
        cuts[payload + (i - 1) * SEALED_CHUNK + 100] = "payload"  # inside a chunk
    cuts[len(sealed) - 1] = "payload"
    cuts[len(sealed) - af.TAG] = "payload"
    assert len(cuts) >= 14
    for cut, stage in sorted(cuts.items()):
        assert stage_of(sealed[:cut], [key]) == stage, cut


def header_lines(sealed: bytes) -> tuple[list[str], bytes]:
    head = header_length(sealed)
    return sealed[:head].decode("ascii").split("\n")[:-1], sealed[head:]


def join(lines: list[str], rest: bytes) -> bytes:
    return "".join(f"{line}\n" for line in lines).encode("ascii") + rest


def flip_b64(text: str, index: int = 0) -> str:
    raw = bytearray(base64.b64decode(text + "=" * (-len(text) % 4)))
    raw[index] ^= 0x01
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def flipped(sealed: bytes, where: str) -> bytes:
    """``sealed`` with one byte changed in ``where`` (a base64 field changes one decoded bit, so that it stays valid
    base64 and the change reaches the cryptography rather than the parser)."""
    lines, rest = header_lines(sealed)
    if where == "version line":
        lines[0] = lines[0].replace("v1", "v2")
    elif where == "stanza type":
        kind = lines[1].split(" ")[1]
        lines[1] = lines[1].replace(kind, kind.swapcase(), 1)
    elif where == "stanza argument":
        arrow, kind, arg = lines[1].split(" ")
        lines[1] = f"{arrow} {kind} {flip_b64(arg, 17)}"
    elif where == "stanza argument, its end":  # for a hybrid stanza, the X25519 part of the encapsulation
        arrow, kind, arg = lines[1].split(" ")
        lines[1] = f"{arrow} {kind} {flip_b64(arg, -5)}"
    elif where == "stanza argument, not base64":
        lines[1] = lines[1][:20] + "!" + lines[1][21:]
    elif where == "stanza body":
        lines[2] = flip_b64(lines[2], 5)
    elif where == "MAC line":
        lines[-1] = "--+" + lines[-1][3:]
    elif where == "MAC":
        lines[-1] = "--- " + flip_b64(lines[-1][4:], 10)
    elif where == "extra stanza":  # a valid header with one more (unknown) stanza, under the original MAC
        lines[-1:-1] = ["-> grease x", ""]
    elif where == "nonce":
        rest = bytes([rest[0] ^ 1]) + rest[1:]
    else:
        raise AssertionError(where)
    return join(lines, rest)


HEADER_FLIPS = {
    "version line": "header",
    "stanza type": "no match",
    "stanza argument": "no match",
    "stanza argument, its end": "no match",
    "stanza argument, not base64": "header",
    "stanza body": "no match",
    "MAC line": "header",
    "MAC": "hmac",
    "extra stanza": "hmac",
    "nonce": "payload",
}


@pytest.mark.parametrize("where", list(HEADER_FLIPS))
@pytest.mark.parametrize("kind", KINDS)
def test_a_flipped_header_byte_fails_at_its_stage(keys, kind: str, where: str) -> None:
    key = keys[kind][0]
    sealed = seal(os.urandom(CHUNK + 5), [key.recipient()])
    assert open_sealed(sealed, [key])  # the untouched file opens
    changed = flipped(sealed, where)
    assert changed != sealed
    assert stage_of(changed, [key]) == HEADER_FLIPS[where]


@pytest.mark.parametrize("kind", KINDS)
def test_a_flipped_byte_in_each_chunk_or_tag_fails_that_chunk(keys, kind: str) -> None:
    key = keys[kind][0]
    sealed = seal(os.urandom(3 * CHUNK + 100), [key.recipient()])
    payload = header_length(sealed) + af.NONCE_BYTES
    for i in range(4):
        start = payload + i * SEALED_CHUNK
        end = min(start + SEALED_CHUNK, len(sealed))
        for offset in (start, (start + end) // 2, end - af.TAG, end - 1):  # first byte, middle, its tag
            changed = bytearray(sealed)
            changed[offset] ^= 0x80
            with pytest.raises(af.AgeError, match=f"chunk {i} fails") as caught:
                open_sealed(bytes(changed), [key])
            assert caught.value.stage == "payload"


@pytest.mark.parametrize("size", [1, CHUNK - 1, CHUNK, CHUNK + 1])
@pytest.mark.parametrize("kind", KINDS)
def test_trailing_bytes_are_refused(keys, kind: str, size: int) -> None:
    key = keys[kind][0]
    identity = AgeIdentity(key.encode())
    sealed = seal(os.urandom(size), [key.recipient()])
    for extra in (b"\x00", b"more", os.urandom(SEALED_CHUNK), sealed[-SEALED_CHUNK:]):
        assert stage_of(sealed + extra, [key]) == "payload"
        with pytest.raises(IntegrityError):
            age_stream.decrypt(io.BytesIO(sealed + extra), io.BytesIO(), [identity], expect=None)


def hkdf(secret: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(secret)


def _stream_file(file_key: bytes, recipient: str, chunks: list[tuple[bytes, bool]]) -> bytes:
    """A file sealed chunk by chunk with the last-chunk flags given, under a valid header: what a faulty or hostile
    writer could produce."""
    header = af.VERSION_LINE + b"\n" + af.wrap(recipient, file_key).encode() + b"---"
    tag = hmac.new(hkdf(file_key, b"", b"header"), header, hashlib.sha256).digest()
    nonce = os.urandom(af.NONCE_BYTES)
    aead = ChaCha20Poly1305(hkdf(file_key, nonce, b"payload"))
    body = b"".join(
        aead.encrypt(i.to_bytes(11, "big") + (b"\x01" if last else b"\x00"), data, None)
        for i, (data, last) in enumerate(chunks)
    )
    return header + b" " + af._b64encode(tag).encode() + b"\n" + nonce + body


@pytest.mark.parametrize("kind", KINDS)
def test_stream_framing_the_specification_forbids_is_refused(keys, kind: str) -> None:
    key = keys[kind][0]
    file_key = os.urandom(16)
    full, short = os.urandom(CHUNK), os.urandom(10)

    def sealed(*chunks: tuple[bytes, bool]) -> bytes:
        return _stream_file(file_key, key.recipient(), list(chunks))

    assert open_sealed(sealed((full, False), (short, True)), [key]) == full + short  # the helper is right
    assert open_sealed(sealed((b"", True)), [key]) == b""  # an empty file: one empty last chunk
    refused = {
        "empty last chunk after a full one": sealed((full, False), (b"", True)),
        "last flag on a chunk that is followed": sealed((full, True), (short, True)),
        "no last flag at the end": sealed((full, False), (short, False)),
        "short chunk that is not the last": sealed((short, False), (short, True)),
        "empty file without its last flag": sealed((b"", False)),
    }
    for what, data in refused.items():
        assert stage_of(data, [key]) == "payload", what


# ------------------------------------------------------------------ recipients


@pytest.mark.parametrize("kind", KINDS)
def test_sealed_to_several_recipients_opens_with_each(keys, kind: str) -> None:
    plain = os.urandom(CHUNK + 3)
    sealed = seal(plain, [k.recipient() for k in keys[kind]])
    assert stanza_types(sealed) == [kind] * 3
    for key in keys[kind]:
        assert open_sealed(sealed, [key]) == plain
    stranger = af.SecretKey.generate(kind)
    other_kind = keys[next(k for k in KINDS if k != kind)][0]
    assert stage_of(sealed, [stranger, other_kind]) == "no match"
    assert open_sealed(sealed, [stranger, other_kind, keys[kind][2]]) == plain  # any identity of the list
    reordered = flipped_stanza_order(sealed)
    assert stage_of(reordered, [keys[kind][0]]) == "hmac"  # the MAC covers the stanzas' order


def flipped_stanza_order(sealed: bytes) -> bytes:
    lines, rest = header_lines(sealed)
    starts = [i for i, line in enumerate(lines) if line.startswith("-> ")] + [len(lines) - 1]
    stanzas = [lines[a:b] for a, b in itertools.pairwise(starts)]
    return join([lines[0], *(line for s in reversed(stanzas) for line in s), lines[-1]], rest)


@pytest.mark.parametrize("order", ["classic first", "hybrid first"])
def test_mixing_classic_and_hybrid_recipients_is_refused_and_nothing_written(keys, order: str) -> None:
    mixed = [keys[af.X25519_TYPE][0].recipient(), keys[af.HYBRID_TYPE][0].recipient()]
    if order == "hybrid first":
        mixed.reverse()
    sink = io.BytesIO()
    with pytest.raises(UsageError, match="both classic"):
        af.Writer(sink, mixed)
    assert sink.getvalue() == b""
    with pytest.raises(UsageError, match="both classic"):
        age_stream.encrypt(io.BytesIO(b"synthetic"), sink, [*mixed, keys[af.HYBRID_TYPE][1].recipient()])
    assert sink.getvalue() == b""


def test_no_recipient_or_a_malformed_one_is_refused_and_nothing_written(keys) -> None:
    hybrid = keys[af.HYBRID_TYPE][0].recipient()
    for recipients, error in [
        ([], UsageError),
        (["age1notarecipient"], IntegrityError),
        ([hybrid.upper()], IntegrityError),
        ([hybrid[:-1] + ("q" if hybrid[-1] != "q" else "p")], IntegrityError),  # its checksum broken
        ([hybrid, "age1pq1"], IntegrityError),
    ]:
        sink = io.BytesIO()
        with pytest.raises(error):
            age_stream.encrypt(io.BytesIO(b"synthetic"), sink, recipients)
        assert sink.getvalue() == b"", recipients


@pytest.mark.parametrize(
    "broken",
    ["ML-KEM key out of range", "X25519 part all zero", "X25519 part of order 8"],
)
def test_a_hybrid_recipient_that_is_no_valid_key_is_refused_as_a_usage_error(keys, broken: str) -> None:
    """The classic path answers a low-order X25519 recipient with a UsageError; a hybrid recipient that is no valid
    key (an ML-KEM-768 encapsulation key failing FIPS 203's modulus check, or a low-order X25519 part) must be
    refused the same way, not escape as a bare ValueError from cryptography (a crash, not one clear line)."""
    _, public = af.parse_recipient(keys[af.HYBRID_TYPE][0].recipient())
    mlkem, x25519 = public[: af.MLKEM_PUBLIC_BYTES], public[af.MLKEM_PUBLIC_BYTES :]
    if broken == "ML-KEM key out of range":
        mlkem = b"\xff" * af.MLKEM_PUBLIC_BYTES  # every 12-bit coefficient 4095 > q = 3329
    elif broken == "X25519 part all zero":
        x25519 = bytes(32)
    else:
        x25519 = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
    recipient = af.bech32_encode(af.HYBRID_RECIPIENT_HRP, mlkem + x25519)
    assert af.parse_recipient(recipient)[0] == af.HYBRID_TYPE  # well formed: the key itself is what is wrong
    sink = io.BytesIO()
    with pytest.raises(UsageError):
        af.Writer(sink, [recipient])
    with pytest.raises(LabrelayError):
        age_stream.encrypt(io.BytesIO(b"synthetic"), sink, [recipient])
    assert sink.getvalue() == b""


def test_a_low_order_classic_recipient_is_refused_as_a_usage_error() -> None:
    for point in (bytes(32), bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")):
        sink = io.BytesIO()
        with pytest.raises(UsageError, match="low-order"):
            age_stream.encrypt(io.BytesIO(b"synthetic"), sink, [af.bech32_encode("age", point)])
        assert sink.getvalue() == b""


# ------------------------------------------------------------------ Bech32


_REF_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def _ref_checksum(hrp: str, values: list[int]) -> list[int]:
    """BIP 173's reference checksum (independent of age_format's)."""
    gen = [0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3]
    chk = 1
    for v in [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp] + values + [0] * 6:
        b = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= gen[i] if (b >> i) & 1 else 0
    polymod = chk ^ 1
    return [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]


def _ref_encode(hrp: str, values: list[int]) -> str:
    return hrp + "1" + "".join(_REF_CHARSET[v] for v in values + _ref_checksum(hrp, values))


@pytest.mark.parametrize(
    "text",
    ["A12UEL5L", "a12uel5l", "?1ezyfcl", "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw"],
)
def test_bech32_valid_bip173_strings(text: str) -> None:
    hrp, data = af.bech32_decode(text)
    assert hrp == text.lower()[: text.lower().rfind("1")]
    if hrp == "abcdef":
        assert data == bytes.fromhex("00443214c74254b635cf84653a56d7c675be77df")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("pzry9x0s0muk", "no separator"),
        ("1pzry9x0s0muk", "empty human-readable part"),
        ("10a06t8", "empty human-readable part"),
        ("x1b4n0q5v", "invalid data character"),
        ("li1dgmt3", "checksum too short"),
        ("de1lg7wt\xff", "invalid character"),
        ("A1G7SGD8", "checksum of the mixed-case form"),
        ("a12UEL5L", "mixed case"),
        ("a12uel5k", "bad checksum"),
        ("age1 qpzry9", "space"),
        ("", "empty"),
    ],
)
def test_bech32_invalid_strings(text: str, why: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies; ValueError is the contract
        af.bech32_decode(text)


def test_bech32_round_trip_upper_case_and_no_length_limit() -> None:
    for size in (0, 1, 5, 31, 32, 33, af.HYBRID_PUBLIC_BYTES, 4000):
        data = os.urandom(size)
        for hrp in ("age", "age1pq", "age-secret-key-pq-"):
            text = af.bech32_encode(hrp, data)
            assert af.bech32_decode(text) == (hrp, data)
            assert af.bech32_decode(text.upper()) == (hrp, data)
            if size:  # every checksum character, and a data character, changed: refused
                for pos in (len(text) - 1, len(text) - 6, len(hrp) + 2):
                    other = _REF_CHARSET[(_REF_CHARSET.index(text[pos]) + 1) % 32]
                    with pytest.raises(ValueError, match="checksum"):
                        af.bech32_decode(text[:pos] + other + text[pos + 1 :])
    assert af.bech32_encode("a", b"") == "a12uel5l"  # BIP 173's own vector


def test_bech32_non_zero_padding_is_refused() -> None:
    # 32 bytes are 256 bits: 52 five-bit groups, the last carrying 1 bit and 4 bits of padding.
    values = [_REF_CHARSET.index(c) for c in af.bech32_encode("age", bytes(32))[4:-6]]
    assert len(values) == 52
    assert af.bech32_decode(_ref_encode("age", values)) == ("age", bytes(32))  # the reference agrees with us
    with pytest.raises(ValueError, match="padding"):
        af.bech32_decode(_ref_encode("age", [*values[:-1], 0b00001]))
    # One byte is 2 groups (2 bits of padding); a third group of zeros makes 7 bits: more than padding.
    assert af.bech32_decode(_ref_encode("age", [0, 0])) == ("age", b"\x00")
    with pytest.raises(ValueError, match="padding"):
        af.bech32_decode(_ref_encode("age", [0, 0, 0]))


def test_recipient_and_identity_parsing_edges(keys) -> None:
    classic, hybrid = keys[af.X25519_TYPE][0], keys[af.HYBRID_TYPE][0]
    assert af.parse_recipient(classic.recipient()) == (af.X25519_TYPE, af.bech32_decode(classic.recipient())[1])
    assert af.parse_recipient(hybrid.recipient())[0] == af.HYBRID_TYPE
    assert len(hybrid.recipient()) == 1959
    assert hybrid.recipient().startswith("age1pq1")
    assert af.is_hybrid_recipient(hybrid.recipient())
    assert not af.is_hybrid_recipient(classic.recipient())
    bad_recipients = {
        "upper case": classic.recipient().upper(),
        "classic HRP, hybrid length": af.bech32_encode("age", af.parse_recipient(hybrid.recipient())[1]),
        "hybrid HRP, classic length": af.bech32_encode("age1pq", os.urandom(32)),
        "31 bytes": af.bech32_encode("age", os.urandom(31)),
        "33 bytes": af.bech32_encode("age", os.urandom(33)),
        "hybrid, one byte short": af.bech32_encode("age1pq", os.urandom(af.HYBRID_PUBLIC_BYTES - 1)),
        "another HRP": af.bech32_encode("agf", os.urandom(32)),
        "an identity": classic.encode(),
        "a tag recipient": af.bech32_encode("age1tag", os.urandom(33)),
        "bad checksum": classic.recipient()[:-1] + ("q" if classic.recipient()[-1] != "q" else "p"),
    }
    assert [what for what, text in bad_recipients.items() if not refused(af.parse_recipient, text)] == []
    for kind in KINDS:
        key = keys[kind][0]
        assert af.SecretKey.parse(key.encode()) == key
        assert key.encode().startswith("AGE-SECRET-KEY-PQ-1" if kind == af.HYBRID_TYPE else "AGE-SECRET-KEY-1")
    bad_identities = {
        "lower case": classic.encode().lower(),
        "a recipient": classic.recipient(),
        "31-byte seed": af.bech32_encode("age-secret-key-pq-", os.urandom(31)).upper(),
        "33-byte scalar": af.bech32_encode("age-secret-key-", os.urandom(33)).upper(),
        "plugin identity": af.bech32_encode("age-plugin-x-", os.urandom(32)).upper(),
        "bad checksum": classic.encode()[:-1] + ("Q" if classic.encode()[-1] != "Q" else "P"),
    }
    assert [what for what, text in bad_identities.items() if not refused(af.SecretKey.parse, text)] == []


def refused(parse: Callable[[str], object], text: str) -> bool:
    try:
        parse(text)
    except UsageError:
        return True
    return False


# ------------------------------------------------------------------ identity files


def test_an_identity_file_with_both_kinds_opens_files_of_each(tmp_path: Path) -> None:
    classic, hybrid = AgeIdentity.generate(classic=True), AgeIdentity.generate()
    assert (classic.is_pq, hybrid.is_pq) == (False, True)
    assert hybrid.secret.startswith("AGE-SECRET-KEY-PQ-1")
    assert hybrid.recipient.startswith("age1pq1")
    path = tmp_path / "identity.txt"
    text = (
        "# created: 2026-01-01T00:00:00Z\n"
        f"# public key: {classic.recipient}\n{classic.secret}\n\n"
        f"  # public key: {hybrid.recipient}\r\n  {hybrid.secret}  \r\n"
    )
    write_private(path, text.encode("ascii"))
    loaded = AgeIdentity.load_all(path)
    assert [i.secret for i in loaded] == [classic.secret, hybrid.secret]
    for ident in (classic, hybrid):
        plain = os.urandom(1000)
        sink = io.BytesIO()
        age_stream.encrypt(io.BytesIO(plain), sink, [ident.recipient])
        out = io.BytesIO()
        age_stream.decrypt(io.BytesIO(sink.getvalue()), out, loaded, expect=None)
        assert out.getvalue() == plain

    saved = tmp_path / "saved.txt"
    hybrid.save(saved, "now")
    assert AgeIdentity.load_all(saved) == [hybrid]
    assert f"# public key: {hybrid.recipient}\n" in saved.read_text()


def test_identity_files_that_are_refused(tmp_path: Path) -> None:
    hybrid = AgeIdentity.generate()
    other_last = "Q" if hybrid.secret[-1] != "Q" else "P"
    cases = {
        "empty.txt": "# nothing here\n\n",
        "checksum.txt": f"{hybrid.secret[:-1]}{other_last}\n",
        "truncated.txt": f"{hybrid.secret[:60]}\n",
        "one good, one bad.txt": f"{hybrid.secret}\n{hybrid.secret[:-1]}{other_last}\n",
    }
    for name, text in cases.items():
        write_private(tmp_path / name, text.encode("ascii"))
        with pytest.raises(UsageError, match="age identity"):
            AgeIdentity.load_all(tmp_path / name)
    (tmp_path / "open.txt").write_text(hybrid.secret + "\n")
    (tmp_path / "open.txt").chmod(0o644)
    with pytest.raises(InsecureKeyFile):
        AgeIdentity.load_all(tmp_path / "open.txt")


# ------------------------------------------------------------------ an aborted sealer


@pytest.mark.parametrize("written", [0, 1, CHUNK, CHUNK + 1, 3 * CHUNK])
@pytest.mark.parametrize("kind", KINDS)
def test_an_aborted_sealer_leaves_a_file_no_reader_accepts(
    keys, kind: str, written: int, tmp_path: Path, age_tool: str
) -> None:
    key = keys[kind][0]
    identity = AgeIdentity(key.encode())
    sink = io.BytesIO()
    sealer = age_stream.StreamingSealer(sink, identity.recipient)
    sealer.write(os.urandom(written))
    sealer.abort()
    left = sink.getvalue()
    assert left.startswith(af.VERSION_LINE)
    assert stage_of(left, [key]) == "payload"
    with pytest.raises(IntegrityError):
        age_stream.decrypt(io.BytesIO(left), io.BytesIO(), [identity], expect=None)
    if kind == af.X25519_TYPE:
        with pytest.raises(pyrage.DecryptError):
            pyrage.decrypt(left, [pyrage.x25519.Identity.from_str(identity.secret)])
        identity.save(tmp_path / "identity.txt", "now")
        (tmp_path / "left.age").write_bytes(left)
        ran = subprocess.run(
            [age_tool, "-d", "-i", tmp_path / "identity.txt", tmp_path / "left.age"], capture_output=True, check=False
        )
        assert ran.returncode != 0


# ------------------------------------------------------------------ bounded memory


class Pattern:
    """``total`` bytes of a fixed 1 MiB random block, read without allocating (the block is made before tracing)."""

    def __init__(self, total: int, block: bytes) -> None:
        self.left = total
        self.block = block
        self.digest = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        out = self.block if n == len(self.block) else self.block[:n]
        self.left -= n
        self.digest.update(out)
        return out


class Digest:
    """A sink that keeps only the SHA-256 and the size of what it is given."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def peak_of(run: Callable[..., object], *args: object, **kwargs: object) -> int:
    """The most memory Python objects took while ``run(*args, **kwargs)`` ran (tracemalloc)."""
    tracemalloc.start()
    try:
        run(*args, **kwargs)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


MIB = 1 << 20


@pytest.mark.parametrize("kind", KINDS)
def test_a_64_mib_stream_is_sealed_and_opened_in_bounded_memory(keys, kind: str) -> None:
    identity = AgeIdentity(keys[kind][0].encode())
    block = os.urandom(MIB)
    peaks: dict[tuple[str, int], int] = {}
    for total in (8 * MIB, 64 * MIB):
        with tempfile.TemporaryFile() as sealed:
            source = Pattern(total, block)
            peaks["encrypt", total] = peak_of(age_stream.encrypt, source, sealed, [identity.recipient])
            sealed.seek(0)
            sink = Digest()
            peaks["decrypt", total] = peak_of(age_stream.decrypt, sealed, sink, [identity], expect=None)
            assert (sink.size, sink.hash.digest()) == (total, source.digest.digest())
        peaks["sealer", total] = peak_of(seal_in_pieces, identity.recipient, total, block)
    # Memory does not grow with the stream: 64 MiB costs what 8 MiB costs.
    for what in ("encrypt", "decrypt", "sealer"):
        assert peaks[what, 64 * MIB] < peaks[what, 8 * MIB] + 256 * 1024, peaks
    # Decryption holds two sealed chunks and one plain chunk; the sealer, given small writes, one chunk; encrypt()
    # seals the 1 MiB blocks it reads (age_stream._READ) chunk by chunk from the caller's buffer, keeping at most
    # one chunk back (the source's block costs nothing here; a file's read would add its 1 MiB).
    assert peaks["decrypt", 64 * MIB] < 1 * MIB, peaks
    assert peaks["sealer", 64 * MIB] < 1 * MIB, peaks
    assert peaks["encrypt", 64 * MIB] < 1 * MIB, peaks


def seal_in_pieces(recipient: str, total: int, block: bytes) -> None:
    """``total`` bytes through a StreamingSealer in 8 KiB writes (as a pipeline writes rows), into a digest."""
    sealer = age_stream.StreamingSealer(Digest(), recipient)  # type: ignore[arg-type]  # a writable sink
    view = memoryview(block)
    for i in range(total // 8192):
        start = (i * 8192) % len(block)
        sealer.write(view[start : start + 8192])  # type: ignore[arg-type]  # bytes-like
    sealer.close()


# ------------------------------------------------------------------ the classic path against pyrage and age


@pytest.fixture(scope="session")
def age_tool() -> str:
    path = shutil.which("age")
    if path is None:
        pytest.fail("the `age` command-line tool is required (Debian: apt-get install age; ./dev test installs it)")
    return path


@pytest.mark.parametrize("size", [0, CHUNK, CHUNK + 1, 3_000_000])
def test_classic_files_interoperate_with_pyrage_both_ways(keys, size: int) -> None:
    plain = os.urandom(size)
    ours = keys[af.X25519_TYPE]
    theirs = [pyrage.x25519.Identity.from_str(k.encode()) for k in ours]
    sealed = seal(plain, [k.recipient() for k in ours])
    for identity in theirs:
        assert pyrage.decrypt(sealed, [identity]) == plain
    by_pyrage = pyrage.encrypt(plain, [pyrage.x25519.Recipient.from_str(k.recipient()) for k in ours])
    types = stanza_types(by_pyrage)  # rage adds a "grease" stanza of a random type, which readers must skip
    assert types.count(af.X25519_TYPE) == 3
    assert all(t.endswith("-grease") for t in types if t != af.X25519_TYPE)
    for key in ours:
        assert open_sealed(by_pyrage, [key]) == plain
    assert str(theirs[0].to_public()) == ours[0].recipient()


def test_pyrage_refuses_our_tampered_and_truncated_files(keys) -> None:
    key = keys[af.X25519_TYPE][0]
    sealed = seal(os.urandom(2 * CHUNK), [key.recipient()])
    identity = pyrage.x25519.Identity.from_str(key.encode())
    for bad in (sealed[:-SEALED_CHUNK], sealed[:-1], flipped(sealed, "MAC"), sealed + b"\x00"):
        with pytest.raises(pyrage.DecryptError):
            pyrage.decrypt(bad, [identity])


def test_classic_files_interoperate_with_the_age_tool_both_ways(tmp_path: Path, age_tool: str) -> None:
    keygen = shutil.which("age-keygen")
    assert keygen is not None, "age-keygen comes with age"
    subprocess.run([keygen, "-o", tmp_path / "keygen.txt"], check=True, capture_output=True, timeout=30)
    [from_keygen] = AgeIdentity.load_all(tmp_path / "keygen.txt")
    listed = next(
        line.split(": ")[1] for line in (tmp_path / "keygen.txt").read_text().splitlines() if "public key" in line
    )
    assert from_keygen.recipient == listed  # the same X25519 public key from the same secret
    ours = AgeIdentity.generate(classic=True)
    ours.save(tmp_path / "ours.txt", "now")
    for size in (0, CHUNK, 3_000_000):
        plain = tmp_path / f"plain-{size}"
        plain.write_bytes(os.urandom(size))
        # age seals to both (ours and age-keygen's); we open with each.
        by_age = tmp_path / f"age-{size}.age"
        subprocess.run(
            [age_tool, "-r", ours.recipient, "-r", from_keygen.recipient, "-o", by_age, plain], check=True, timeout=60
        )
        for identity in (ours, from_keygen):
            out = io.BytesIO()
            with by_age.open("rb") as src:
                age_stream.decrypt(src, out, [identity], expect=None)
            assert out.getvalue() == plain.read_bytes()
        # We seal to both; age opens with each identity file.
        by_us = tmp_path / f"us-{size}.age"
        with plain.open("rb") as src, by_us.open("wb") as dst:
            age_stream.encrypt(src, dst, [ours.recipient, from_keygen.recipient])
        for identity_file in ("ours.txt", "keygen.txt"):
            opened = subprocess.run(
                [age_tool, "-d", "-i", tmp_path / identity_file, by_us], check=True, capture_output=True, timeout=60
            )
            assert opened.stdout == plain.read_bytes()
    # And age refuses what the MAC or STREAM do not vouch for, as we do.
    sealed = by_us.read_bytes()
    for name, bad in {"mac": flipped(sealed, "MAC"), "cut": sealed[:-SEALED_CHUNK], "tail": sealed + b"x"}.items():
        (tmp_path / f"{name}.age").write_bytes(bad)
        ran = subprocess.run(
            [age_tool, "-d", "-i", tmp_path / "ours.txt", tmp_path / f"{name}.age"], capture_output=True, check=False
        )
        assert ran.returncode != 0, name
