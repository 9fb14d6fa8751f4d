"""Epoch keys in a directory of their own (``labrelay.ports.KeyStore``).

One file per epoch, ``epoch-<end>.key`` (32 random bytes, mode 0600, in a 0700 directory), named by the Unix
second at which the epoch ends. Keep this directory apart from the payloads and the database (another volume,
excluded from backups and snapshots): a copy of payloads and database is meant to become unreadable when the
keys are destroyed, which it cannot if the copy holds the keys too.

Destruction overwrites the file with zeros, fsyncs, unlinks it and fsyncs the directory, then checks that the
name is gone. On copy-on-write or flash storage the overwrite may not reach the old blocks; the unlink and the
key never having been anywhere else are what count.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
import threading
import time
from pathlib import Path

from labrelay.crypto.at_rest import KEY_BYTES, new_key
from labrelay.errors import InsecureKeyFile, StorageFull, Unavailable
from labrelay.storage.fs import fsync_dir

_NAME = re.compile(r"epoch-([0-9]{1,12})\.key")
LEFTOVER_AGE = 600
"""Seconds after which a temporary key file is a crash's leftover, not a ``create`` in progress (which takes ms)."""
_TMP = re.compile(r"\.epoch-[0-9]{1,12}\.key\.[0-9]+(\.[0-9a-f]{16})?\.tmp")


class FileKeyStore:
    def __init__(self, root: Path, *, create: bool = True) -> None:
        if create:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not root.is_dir():
            raise Unavailable(f"epoch key store {root} does not exist")
        mode = stat.S_IMODE(root.stat().st_mode)
        if mode & 0o077:
            raise InsecureKeyFile(
                f"epoch key store {root} has permissions {mode:04o}: it must be private (0700)",
                hint=f"run: chmod 700 {root}",
            )
        self.root = root.resolve()
        self._creating = threading.Lock()

    def _path(self, epoch: int) -> Path:
        if not 0 <= epoch < 10**12:
            raise ValueError("epoch out of range")
        return self.root / f"epoch-{epoch}.key"

    def key(self, epoch: int) -> bytes | None:
        try:
            data = self._path(epoch).read_bytes()
        except FileNotFoundError:
            return None
        if len(data) != KEY_BYTES or data == bytes(KEY_BYTES):  # all zeros: overwritten, never a key made here
            raise Unavailable(f"epoch key file for {epoch} is damaged")
        return data

    def create(self, epoch: int) -> bytes:
        """The epoch's key, made now if it does not exist yet, and the key stored whoever made it: safe against
        concurrent callers, threads of this process (one at a time) and other processes sharing the directory (each
        writes a temporary file of its own, then links it into place; the first link wins, the others read it)."""
        existing = self.key(epoch)
        if existing is not None:
            return existing
        with self._creating:
            return self._create(epoch)

    def _create(self, epoch: int) -> bytes:
        existing = self.key(epoch)
        if existing is not None:
            return existing
        path = self._path(epoch)
        # A name of this call's own. The process id alone let one thread's cleanup remove the file another thread
        # had just written, and a third thread's file take its place before the link: the key stored was then not
        # the key the first thread returned, and every payload it wrapped would not open (load benchmark, S3).
        tmp = self.root / f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp"
        key = new_key()
        written = False
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            written = True
            try:
                os.write(fd, key)
                os.fsync(fd)
            finally:
                os.close(fd)
            linked = False
            with contextlib.suppress(FileExistsError):  # another caller's key is in place: it is the one
                os.link(tmp, path)  # atomic, and never replaces a key another caller made first
                linked = True
            fsync_dir(self.root)
            stored = self.key(epoch)  # whoever linked first: the key every caller wraps with
        except OSError as exc:
            if exc.errno == 28:
                raise StorageFull("no space left for an epoch key") from exc
            raise Unavailable(f"cannot write an epoch key: {exc.strerror}") from exc
        finally:
            if written:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
        if stored is None or (linked and stored != key):
            raise Unavailable(f"the epoch key for {epoch} changed or vanished as it was made")
        return stored

    def epochs(self) -> list[int]:
        found = (_NAME.fullmatch(name) for name in os.listdir(self.root))
        return sorted(int(m.group(1)) for m in found if m)

    def strays(self) -> list[str]:
        """Files in the key store that are not epoch keys (left-over temporary files, or foreign files)."""
        return sorted(name for name in os.listdir(self.root) if not _NAME.fullmatch(name))

    def remove_leftovers(self) -> list[str]:
        """Destroy temporary key files a crash left behind (each may hold a copy of a key); return their names.

        The reaper runs this while relays may be making a key. A temporary file younger than ``LEFTOVER_AGE`` may
        be a ``create`` in progress in another process: left for a later pass. One already linked into place (a
        ``create`` between its link and its cleanup) is the key file itself under a second name: that name is
        removed, its bytes are never overwritten (they are the key every payload of the epoch is wrapped with)."""
        removed = []
        # A file's age, not an instant of the relay's: this host's clock against the file's mtime (on a directory
        # shared between hosts, their clocks must agree within LEFTOVER_AGE; a fresh file taken for a leftover
        # only makes its create fail, since a key read as zeros is refused).
        now = time.time()
        for name in self.strays():
            if not _TMP.fullmatch(name):
                continue
            path = self.root / name
            try:
                info = path.stat()
            except FileNotFoundError:
                continue  # its create finished meanwhile
            if now - info.st_mtime < LEFTOVER_AGE:
                continue
            if info.st_nlink > 1:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            else:
                self._shred(path)
            removed.append(name)
        if removed:
            fsync_dir(self.root)
        return removed

    @staticmethod
    def _shred(path: Path) -> None:
        try:
            with path.open("r+b") as fh:
                size = os.fstat(fh.fileno()).st_size
                fh.write(b"\x00" * size)
                fh.flush()
                os.fsync(fh.fileno())
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise Unavailable(f"cannot destroy {path.name}: {exc.strerror}") from exc

    def destroy(self, epoch: int) -> bool:
        """Destroy the epoch's key; True when it is verifiably gone (also when it never existed)."""
        path = self._path(epoch)
        self._shred(path)
        fsync_dir(self.root)
        return not path.exists()
