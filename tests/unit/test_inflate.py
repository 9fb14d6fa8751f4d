"""How `labrelay fetch` inflates a gzip'd payload after decrypting it (ISA-L, decision 0014): every member of the
stream is read, nothing after it is ignored, a truncated or malformed stream is refused, and a decompression bomb
stops at the ceiling before it fills the disk. Payloads that labrelay writes open with any gzip reader."""

from __future__ import annotations

import gzip
import io
import zlib

import pytest
from isal import igzip

from labrelay.client.fetch import INFLATE_STEP, _Plaintext
from labrelay.client.spool import GZIP_LEVEL
from labrelay.errors import IntegrityError

CSV = b"nir,nom\n" + b"".join(b"1%014d,NOM%d\n" % (i, i) for i in range(20_000))


def inflate(payload: bytes, ceiling: int = 1 << 30, piece: int = 65536) -> tuple[bytes, _Plaintext]:
    """Feed ``payload`` in ``piece``-sized writes, as age's decryptor does."""
    out = io.BytesIO()
    sink = _Plaintext(out, gzipped=True, ceiling=ceiling)
    for start in range(0, len(payload), piece):
        sink.write(payload[start : start + piece])
    sink.finish()
    return out.getvalue(), sink


def test_what_send_writes_is_plain_gzip_and_inflates_back() -> None:
    written = igzip.compress(CSV, compresslevel=GZIP_LEVEL, mtime=0)
    assert gzip.decompress(written) == CSV  # any gzip reader: the standard library's here
    data, sink = inflate(written)
    assert data == CSV
    assert sink.newlines == CSV.count(b"\n")


@pytest.mark.parametrize("piece", [1, 7, 65536, 1 << 22])
def test_gzip_from_other_writers_and_every_member_is_read(piece: int) -> None:
    half = len(CSV) // 2
    members = gzip.compress(CSV[:half], compresslevel=9) + zlib.compress(CSV[half:], wbits=31)
    data, _ = inflate(members, piece=piece)
    assert data == CSV  # not only the first member: nothing after it is dropped silently


@pytest.mark.parametrize(
    "tail",
    [b"trailing bytes", b"\x00" * 16, b"\x1f\x8b\x08\x00garbage" * 3],
    ids=["text", "zero padding", "broken member"],
)
def test_bytes_after_the_last_member_are_refused(tail: bytes) -> None:
    with pytest.raises(IntegrityError, match="not valid gzip"):
        inflate(gzip.compress(CSV) + tail)


@pytest.mark.parametrize("cut", [1, 10, 100, 5000])
def test_a_truncated_stream_is_refused(cut: int) -> None:
    payload = gzip.compress(CSV)
    with pytest.raises(IntegrityError, match="truncated"):
        inflate(payload[:-cut])


def test_a_second_member_cut_short_is_refused() -> None:
    payload = gzip.compress(CSV) + gzip.compress(CSV)[:5]
    with pytest.raises(IntegrityError, match="truncated"):
        inflate(payload)


def test_not_gzip_is_refused() -> None:
    with pytest.raises(IntegrityError, match="not valid gzip"):
        inflate(CSV)


def test_a_decompression_bomb_stops_at_the_ceiling() -> None:
    bomb = igzip.compress(b"\0" * (64 << 20), compresslevel=3)  # 64 MiB of zeros in about 60 KiB
    assert len(bomb) < 256 * 1024
    out = io.BytesIO()
    sink = _Plaintext(out, gzipped=True, ceiling=4 << 20)
    with pytest.raises(IntegrityError, match="more than 4194304 bytes"):
        sink.write(bomb)  # one write: the steps inside it are bounded, not the write
    assert len(out.getvalue()) <= 4 << 20  # refused before the step that crossed the ceiling was written
    assert sink.written <= (4 << 20) + INFLATE_STEP


def test_a_bomb_split_across_members_stops_at_the_ceiling() -> None:
    member = igzip.compress(b"\0" * (2 << 20), compresslevel=3)
    with pytest.raises(IntegrityError, match="more than"):
        inflate(member * 8, ceiling=5 << 20)
