"""Envelopes, key files, streaming age and request signatures: each check tried with something that must fail."""

from __future__ import annotations

import io
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from labrelay.crypto import age_stream
from labrelay.crypto.envelopes import sign_envelope, verify_envelope
from labrelay.crypto.httpsig import (
    DigestCheck,
    HeaderLines,
    RequestView,
    claimed_keyid,
    sign_request,
    verify_request,
)
from labrelay.crypto.keys import AgeIdentity, SigningKey, check_private_permissions, read_private, write_private
from labrelay.errors import (
    AuthenticationFailed,
    InsecureKeyFile,
    IntegrityError,
    StorageFull,
    UntrustedEntry,
    UsageError,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
WINDOW, SKEW = timedelta(minutes=5), timedelta(seconds=30)


# ------------------------------------------------------------------ envelopes


def test_envelope_round_trip() -> None:
    key = SigningKey.generate()
    env = sign_envelope({"type": "transfer-receipt", "v": 1, "x": "é"}, key, "cnam")
    assert verify_envelope(env, "transfer-receipt", key.public)["x"] == "é"


@pytest.mark.threat("T7")
def test_envelope_tampering_refused() -> None:
    key = SigningKey.generate()
    env = sign_envelope({"type": "transfer-manifest", "v": 1, "size": 10}, key, "lab-a")
    with pytest.raises(IntegrityError):
        verify_envelope({**env, "payload": {**env["payload"], "size": 11}}, "transfer-manifest", key.public)
    with pytest.raises(IntegrityError):
        verify_envelope(env, "transfer-manifest", SigningKey.generate().public)
    with pytest.raises(IntegrityError):
        verify_envelope({**env, "alg": "none"}, "transfer-manifest", key.public)
    with pytest.raises(IntegrityError):
        verify_envelope({k: v for k, v in env.items() if k != "sig"}, "transfer-manifest", key.public)
    with pytest.raises(IntegrityError):
        verify_envelope("not an envelope", "transfer-manifest", key.public)


def test_envelope_purpose_separation() -> None:
    """A signature made for one kind of object is never accepted as another kind."""
    key = SigningKey.generate()
    env = sign_envelope({"type": "transfer-manifest", "v": 1}, key, "lab-a")
    forged = {**env, "payload": {**env["payload"], "type": "transfer-receipt"}}
    with pytest.raises(IntegrityError):
        verify_envelope(forged, "transfer-receipt", key.public)
    with pytest.raises(UntrustedEntry):
        verify_envelope(env, "party-entry", key.public, error=UntrustedEntry)


# ------------------------------------------------------------------ key files


def test_private_files_are_0600_and_never_overwritten(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_private(tmp_path / "k", b"secret")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    with pytest.raises(UsageError, match="refusing to overwrite"):
        write_private(tmp_path / "k", b"other")
    assert read_private(tmp_path / "k") == b"secret"


@pytest.mark.threat("T9")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606, 0o700, 0o611])
def test_readable_key_files_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "signing.key"
    SigningKey.generate().save(path)
    os.chmod(path, mode)
    if mode & 0o077:
        with pytest.raises(InsecureKeyFile, match="too open"):
            SigningKey.load(path)
    else:
        SigningKey.load(path)


@pytest.mark.threat("T9")
def test_key_file_owned_by_someone_else_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("changing a file's owner needs root")  # CI runs as root
    path = tmp_path / "identity.txt"
    AgeIdentity.generate().save(path, "now")
    os.chown(path, 4242, 4242)
    with pytest.raises(InsecureKeyFile, match="owned by another user"):
        check_private_permissions(path)


def test_symlinked_or_special_key_files_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(InsecureKeyFile, match="not a regular file"):
        check_private_permissions(fifo)


# ------------------------------------------------------------------ age


def test_age_round_trip_hashes_agree() -> None:
    ident = AgeIdentity.generate()
    plain = os.urandom(200_000)
    sealed = io.BytesIO()
    size, sha = age_stream.encrypt(io.BytesIO(plain), sealed, [ident.recipient])
    assert sealed.getvalue().startswith(b"age-encryption.org/v1\n")
    assert size == len(sealed.getvalue())
    opened = io.BytesIO()
    age_stream.decrypt(io.BytesIO(sealed.getvalue()), opened, [ident], expect=age_stream.Expected(size, sha))
    assert opened.getvalue() == plain


def test_age_decrypt_refuses_a_ciphertext_not_the_one_expected() -> None:
    """A ciphertext that decrypts, but is not the size and SHA-256 the caller holds (a signed manifest's), is refused:
    the caller never compares them itself."""
    ident = AgeIdentity.generate()
    sealed = io.BytesIO()
    size, sha = age_stream.encrypt(io.BytesIO(b"x" * 1000), sealed, [ident.recipient])
    other = io.BytesIO()
    age_stream.encrypt(io.BytesIO(b"x" * 1000), other, [ident.recipient])  # the same plaintext, sealed again
    for expected in (age_stream.Expected(size, sha), age_stream.Expected(size + 1, sha)):
        with pytest.raises(IntegrityError, match="not the one expected"):
            age_stream.decrypt(io.BytesIO(other.getvalue()), io.BytesIO(), [ident], expect=expected)


@pytest.mark.threat("T7")
def test_age_tampering_and_wrong_key_refused() -> None:
    ident = AgeIdentity.generate()
    sealed = io.BytesIO()
    age_stream.encrypt(io.BytesIO(b"x" * 100_000), sealed, [ident.recipient])
    data = bytearray(sealed.getvalue())
    for position in (len(data) // 2, len(data) - 1, 40):
        flipped = bytearray(data)
        flipped[position] ^= 0x01
        with pytest.raises(IntegrityError):
            age_stream.decrypt(io.BytesIO(bytes(flipped)), io.BytesIO(), [ident], expect=None)
    with pytest.raises(IntegrityError):  # truncated: STREAM's last-chunk flag
        age_stream.decrypt(io.BytesIO(bytes(data[:-20000])), io.BytesIO(), [ident], expect=None)
    with pytest.raises(IntegrityError):  # trailing bytes would be outside the signed hash
        age_stream.decrypt(io.BytesIO(bytes(data) + b"x"), io.BytesIO(), [ident], expect=None)
    with pytest.raises(IntegrityError):
        age_stream.decrypt(io.BytesIO(bytes(data)), io.BytesIO(), [AgeIdentity.generate()], expect=None)


def test_age_identity_file_is_standard(tmp_path: Path) -> None:
    ident = AgeIdentity.generate()
    ident.save(tmp_path / "identity.txt", "2026-11-28T00:00:00Z")
    text = (tmp_path / "identity.txt").read_text()
    assert f"# public key: {ident.recipient}" in text
    assert AgeIdentity.load_all(tmp_path / "identity.txt") == [ident]


# ------------------------------------------------------------------ request signatures


def signed(
    method: str = "POST",
    url: str = "http://127.0.0.1:9/v1/transfers",
    body: bytes | None = b"{}",
    key: SigningKey | None = None,
    now: datetime = NOW,
    headers: dict[str, str] | None = None,
    extra: tuple[str, ...] = ("content-type",),
) -> tuple[RequestView, SigningKey, dict[str, str]]:
    key = key or SigningKey.generate()
    h = {"Content-Type": "application/json", **(headers or {})}
    sign_request(method, url, h, body, keyid="lab-a", key=key, now=now, extra_components=extra)
    return RequestView(method, url, HeaderLines(h.items())), key, h


def verify(view: RequestView, key: SigningKey, now: datetime = NOW, require: tuple[str, ...] = ("content-digest",)):
    return verify_request(view, key.public, now=now, window=WINDOW, skew=SKEW, require_components=require)


def test_signed_request_verifies() -> None:
    view, key, headers = signed()
    result = verify(view, key)
    assert result.keyid == "lab-a"
    assert len(result.nonce) >= 22
    assert claimed_keyid(view.headers) == "lab-a"
    digest = DigestCheck(headers["Content-Digest"])
    digest.update(b"{}")
    digest.verify()


@pytest.mark.threat("T8")
@pytest.mark.parametrize("change", ["method", "url", "query", "header", "other-key", "stale", "future"])
def test_altered_or_stale_requests_refused(change: str) -> None:
    view, key, headers = signed(url="http://127.0.0.1:9/v1/transfers?box=inbox")
    now = NOW
    if change == "method":
        view = RequestView("PUT", view.url, view.headers)
    elif change == "url":
        view = RequestView(view.method, "http://127.0.0.1:9/v1/directory?box=inbox", view.headers)
    elif change == "query":
        view = RequestView(view.method, "http://127.0.0.1:9/v1/transfers?box=outbox", view.headers)
    elif change == "header":
        view = RequestView(
            view.method,
            view.url,
            HeaderLines([*((k, v) for k, v in headers.items() if k != "Content-Type"), ("Content-Type", "text/plain")]),
        )
    elif change == "other-key":
        key = SigningKey.generate()
    elif change == "stale":
        now = NOW + WINDOW + SKEW + timedelta(seconds=1)
    elif change == "future":
        now = NOW - SKEW - timedelta(seconds=1)
    with pytest.raises(AuthenticationFailed):
        verify(view, key, now)


@pytest.mark.threat("T8")
def test_unsigned_or_malformed_signatures_refused() -> None:
    _view, _key, headers = signed()
    with pytest.raises(AuthenticationFailed, match="unsigned"):
        claimed_keyid(HeaderLines([("Content-Type", "x")]))
    two = HeaderLines([*headers.items(), ("Signature-Input", 'other=("@method");created=1;keyid="x"')])
    with pytest.raises(AuthenticationFailed):
        claimed_keyid(two)
    with pytest.raises(AuthenticationFailed):
        claimed_keyid(HeaderLines([("Signature-Input", "%%%")]))
    # A body whose digest the signature does not cover
    _, key2, h2 = signed(body=None)
    view2 = RequestView("POST", "http://127.0.0.1:9/v1/transfers", HeaderLines(h2.items()))
    with pytest.raises(AuthenticationFailed, match="content-digest"):
        verify(view2, key2)


def test_body_digest_mismatch_refused() -> None:
    _, _, headers = signed(body=b'{"a":1}')
    check = DigestCheck(headers["Content-Digest"])
    check.update(b'{"a":2}')
    with pytest.raises(IntegrityError):
        check.verify()
    with pytest.raises(AuthenticationFailed):
        DigestCheck(None)
    with pytest.raises(AuthenticationFailed):
        DigestCheck("md5=:AAAA:")


class _FullDisk(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, b: object) -> int:
        raise OSError(28, "No space left on device")


def test_full_disk_is_operational_not_integrity() -> None:
    """A full disk is exit 1 (retry elsewhere), never mistaken for tampering (exit 3)."""
    ident = AgeIdentity.generate()
    sealed = io.BytesIO()
    age_stream.encrypt(io.BytesIO(b"x" * 100_000), sealed, [ident.recipient])
    with pytest.raises(StorageFull):
        age_stream.decrypt(io.BytesIO(sealed.getvalue()), _FullDisk(), [ident], expect=None)
    with pytest.raises(StorageFull):
        age_stream.encrypt(io.BytesIO(b"x" * 100_000), _FullDisk(), [ident.recipient])
