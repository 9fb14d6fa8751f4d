"""The C2SP CCTV age test vectors (npm ``cctv-age`` 0.2.0, copied in tests/vectors/cctv-age/) against our age reader.

Each vector is ``key: value`` lines, a blank line, then the file (zlib-compressed when ``compressed: zlib``). Every
vector our reader can take (X25519 and hybrid identities, not armored, no passphrase) must end as it expects:
``success`` with the payload's SHA-256, or the failure stage it names. Every ``hybrid*`` vector is among them.
"""

from __future__ import annotations

import hashlib
import io
import zlib
from pathlib import Path

import pytest

from labrelay.crypto.age_format import AgeError, SecretKey, decrypt

VECTORS = Path(__file__).parents[1] / "vectors" / "cctv-age"
STAGES = {"header failure": "header", "no match": "no match", "HMAC failure": "hmac", "payload failure": "payload"}


def _parse(path: Path) -> tuple[dict[str, list[str]], bytes]:
    raw = path.read_bytes()
    head, _, body = raw.partition(b"\n\n")
    fields: dict[str, list[str]] = {}
    for line in head.decode().splitlines():
        key, _, value = line.partition(": ")
        fields.setdefault(key, []).append(value)
    if fields.get("compressed") == ["zlib"]:
        body = zlib.decompress(body)
    return fields, body


def _applicable() -> list[Path]:
    out = []
    for path in sorted(VECTORS.iterdir()):
        if path.name.startswith("LICENSE") or path.suffix == ".md":
            continue
        fields, _ = _parse(path)
        if "passphrase" in fields or fields.get("armored") == ["yes"] or "identity" not in fields:
            continue
        out.append(path)
    return out


APPLICABLE = _applicable()


def test_every_hybrid_vector_is_run() -> None:
    hybrid = {p.name for p in VECTORS.iterdir() if p.name.startswith("hybrid")}
    assert len(hybrid) == 18
    assert hybrid <= {p.name for p in APPLICABLE}
    assert len(APPLICABLE) == 84  # 143 vectors less armored, passphrase and identity-less ones


@pytest.mark.parametrize("path", APPLICABLE, ids=[p.name for p in APPLICABLE])
def test_vector(path: Path) -> None:
    fields, body = _parse(path)
    identities = [SecretKey.parse(i) for i in fields["identity"]]
    expect = fields["expect"][0]
    sink = io.BytesIO()
    if expect == "success":
        decrypt(io.BytesIO(body), sink, identities)
        assert hashlib.sha256(sink.getvalue()).hexdigest() == fields["payload"][0]
    else:
        with pytest.raises(AgeError) as caught:
            decrypt(io.BytesIO(body), sink, identities)
        assert caught.value.stage == STAGES[expect], caught.value
