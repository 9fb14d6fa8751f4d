"""Keys and key files.

Private keys are generated where they are used and written once, with mode 0600, by ``write_private``; every
reader goes through ``read_private``, which refuses a file that group or others can read, or that another user
owns, as OpenSSH does. Public keys travel as base64url (Ed25519, raw 32 bytes) or as age ``age1pq1…``
(hybrid post-quantum) or ``age1…`` (X25519) strings.
"""

from __future__ import annotations

import base64
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from labrelay.crypto import age_format
from labrelay.errors import InsecureKeyFile, IntegrityError, UsageError


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64u(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise IntegrityError("malformed base64url value") from exc


# ------------------------------------------------------------------ files


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 and write ``data``. Never overwrites an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"{path} already exists; refusing to overwrite a key") from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def check_private_permissions(path: Path) -> None:
    """Refuse a private key file that others can read or that someone else owns."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UsageError(f"key file {path} not found") from None
    if not stat.S_ISREG(st.st_mode):
        raise InsecureKeyFile(f"key file {path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise InsecureKeyFile(
            f"permissions {mode:04o} for {path} are too open: a private key must not be accessible by others",
            hint=f"run: chmod 600 {path}",
        )
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        raise InsecureKeyFile(f"key file {path} is owned by another user (uid {st.st_uid})")


def read_private(path: Path) -> bytes:
    check_private_permissions(path)
    return path.read_bytes()


# ------------------------------------------------------------------ Ed25519


@dataclass(frozen=True, slots=True)
class VerifyKey:
    """An Ed25519 public key."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise IntegrityError("an Ed25519 public key has 32 bytes")

    @classmethod
    def from_b64(cls, text: str) -> VerifyKey:
        return cls(unb64u(text))

    @classmethod
    def from_pem(cls, pem: bytes) -> VerifyKey:
        try:
            key = serialization.load_pem_public_key(pem)
        except ValueError as exc:
            raise UsageError("not a PEM public key") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise UsageError("not an Ed25519 public key")
        return cls(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    def to_pem(self) -> bytes:
        key = Ed25519PublicKey.from_public_bytes(self.raw)
        return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    @property
    def b64(self) -> str:
        return b64u(self.raw)

    def crypto_key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.raw)

    def verify(self, signature: bytes, message: bytes) -> None:
        """Raise ``IntegrityError`` unless ``signature`` is this key's signature of ``message``."""
        try:
            self.crypto_key().verify(signature, message)
        except InvalidSignature:
            raise IntegrityError("signature does not verify") from None


class SigningKey:
    """An Ed25519 private key. Its bytes leave the process only through ``save``."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        data = read_private(path)
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"{path} is not an unencrypted PEM private key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise UsageError(f"{path} is not an Ed25519 private key")
        return cls(key)

    def save(self, path: Path) -> None:
        pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_private(path, pem)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def derive_secret(self, label: bytes) -> bytes:
        """A 32-byte secret for another use of whoever holds this key (HKDF-SHA-256 of the private key, with
        ``label`` as its info): every process that holds the key derives the same one; the key's bytes stay here."""
        raw = self._key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"labrelay-derived-v1\n" + label).derive(raw)

    @property
    def public(self) -> VerifyKey:
        return VerifyKey(
            self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )

    def crypto_key(self) -> Ed25519PrivateKey:
        return self._key


def load_verify_key_file(path: Path) -> VerifyKey:
    try:
        return VerifyKey.from_pem(path.read_bytes())
    except FileNotFoundError:
        raise UsageError(f"public key file {path} not found") from None


# ------------------------------------------------------------------ age


@dataclass(frozen=True, slots=True)
class AgeIdentity:
    """An age identity, kept as the string the age tools read: ``AGE-SECRET-KEY-PQ-1…`` (hybrid ML-KEM-768 +
    X25519, post-quantum, the default) or ``AGE-SECRET-KEY-1…`` (classic X25519)."""

    secret: str

    @classmethod
    def generate(cls, *, classic: bool = False) -> AgeIdentity:
        """A new identity: hybrid post-quantum unless ``classic`` (for tools older than age 1.3)."""
        kind = age_format.X25519_TYPE if classic else age_format.HYBRID_TYPE
        return cls(age_format.SecretKey.generate(kind).encode())

    @property
    def key(self) -> age_format.SecretKey:
        return age_format.SecretKey.parse(self.secret)

    @property
    def recipient(self) -> str:
        return self.key.recipient()

    @property
    def is_pq(self) -> bool:
        return self.secret.startswith(PQ_IDENTITY_PREFIX)

    def save(self, path: Path, created: str) -> None:
        """Write a standard age identity file (as ``age-keygen`` does), mode 0600."""
        text = f"# created: {created}\n# public key: {self.recipient}\n{self.secret}\n"
        write_private(path, text.encode("ascii"))

    @classmethod
    def load_all(cls, path: Path) -> list[AgeIdentity]:
        """Every identity in an age identity file (comments and blank lines skipped)."""
        lines = read_private(path).decode("ascii", errors="strict").splitlines()
        found = [cls(line.strip()) for line in lines if line.strip().startswith(IDENTITY_PREFIXES)]
        if not found:
            raise UsageError(f"{path} holds no age identity")
        for ident in found:
            try:
                ident.key  # noqa: B018 - parsed to refuse a malformed identity now, not at decryption
            except UsageError as exc:
                raise UsageError(f"{path} holds a malformed age identity") from exc
        return found


PQ_IDENTITY_PREFIX = "AGE-SECRET-KEY-PQ-1"
IDENTITY_PREFIXES = ("AGE-SECRET-KEY-1", PQ_IDENTITY_PREFIX)
