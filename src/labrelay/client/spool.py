"""The sealing stack every payload the client keeps goes through: a spool file nobody else can reach, age
encryption to one recipient, gzip before it when asked, and a name only once it is whole.

A ``SealedSpool`` is written unnamed (``labrelay.client.files.TempFile``: ``O_TMPFILE`` or ``O_EXCL``, mode 0600,
never through a link) and named by ``publish`` once sealed, durably (fsync, then link; an existing name is
refused). Used as a context manager, a spool not published when the block ends, by a failure or because its payload
is not wanted, is aborted and its file removed: a failed or killed run leaves nothing of it behind.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

from isal import igzip

from labrelay.client.files import SafeDir
from labrelay.crypto import age_stream
from labrelay.errors import OperationalError

# gzip (RFC 1952) written by ISA-L (python-isal): level 2 compresses synthetic batches about as well as zlib's
# level 3 at about five times the speed; any gzip reader opens it (docs/decisions/0014-isal-gzip.md).
GZIP_LEVEL = 2


class Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


class SealedSpool:
    """One payload sealed to one age recipient into a file of ``folder``, unnamed until ``publish``. Its plaintext
    either streams in (``stream``, then ``seal``: encrypted as it is written, gzip'd first when asked) or is read
    whole from a source (``seal_from``); either way it only ever exists in memory and pipes."""

    def __init__(self, folder: SafeDir, recipient: str) -> None:
        self._recipient = recipient
        self._file = folder.temp()
        self._sealer: age_stream.StreamingSealer | None = None
        self._gzip: igzip.IGzipFile | None = None
        self.sealed: tuple[int, str] | None = None  # (ciphertext size, SHA-256 hex), once sealed
        self.published = False

    def stream(self, *, gzip: bool) -> Writable:
        """Start sealing what is written to the stream returned (gzip'd first when ``gzip``); ``seal`` ends it."""
        self._sealer = age_stream.StreamingSealer(self._file.handle, self._recipient)
        if not gzip:
            return self._sealer
        self._gzip = igzip.IGzipFile(fileobj=self._sealer, mode="wb", mtime=0, compresslevel=GZIP_LEVEL)  # type: ignore[no-untyped-call]  # isal ships no annotations
        return self._gzip

    def seal(self) -> tuple[int, str]:
        """End the stream: the gzip member, then the age stream. Returns the ciphertext's (size, SHA-256 hex)."""
        if self._sealer is None:
            raise OperationalError("internal error: a spool sealed before anything streamed into it")
        if self._gzip is not None:
            self._gzip.close()
        self.sealed = self._sealer.close()
        return self.sealed

    def seal_from(self, source: age_stream.Readable) -> tuple[int, str]:
        """Encrypt ``source``, read to its end, as it is (no gzip). Returns the ciphertext's (size, SHA-256 hex)."""
        self.sealed = age_stream.encrypt(source, self._file.handle, [self._recipient])
        return self.sealed

    def publish(self, name: str) -> None:
        """Give the sealed file ``name`` in its folder, durably; refuses (``UnsafeOutput``) a name that exists."""
        if self.sealed is None:
            raise OperationalError("internal error: a spool named before it was sealed")
        self._file.publish(name)
        self.published = True

    def discard(self) -> None:
        """Stop sealing and remove the file (an unnamed one vanishes as it is closed); a published one stays."""
        if self._sealer is not None and self.sealed is None:
            with contextlib.suppress(Exception):
                self._sealer.abort()
        self._file.discard()

    def __enter__(self) -> SealedSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.published:
            self.discard()
