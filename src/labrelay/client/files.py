"""File helpers for the client: private directories, atomic writes, and output that cannot be redirected.

Two rules hold wherever the client writes something a person or a script will pick up:

- **Nothing half-written is ever visible, and nothing is left behind by a killed run.** A file is written unnamed
  (``O_TMPFILE``: it exists only as an open descriptor, so SIGKILL leaves nothing) and given its name only once
  it is complete (``linkat``). Where the file system has no ``O_TMPFILE``, a hidden temporary name is used and
  removed on any failure; ``sweep_temporaries`` removes those a killed run left.
- **Nothing is written through a planted link.** Files are created relative to a directory opened once
  (``O_DIRECTORY | O_NOFOLLOW``), with ``O_NOFOLLOW | O_EXCL``, and a name that exists already is refused, never
  overwritten. ``SafeDir.open`` refuses a directory that is a symbolic link, or that another user owns or may
  write to (they could plant a link or swap a file between two of our steps).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from labrelay.errors import StorageFull, UnsafeOutput, UsageError

TEMP_PREFIX = ".labrelay-tmp-"


def private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def sweep_temporaries(directory: Path) -> int:
    """Remove what a killed run left in ``directory``: hidden temporary files (``.NAME.tmp``, ``TEMP_PREFIX*``).
    Call it only while holding the party's lock (no other run of ours is writing there). Returns how many."""
    removed = 0
    if not directory.is_dir():
        return 0
    for entry in directory.iterdir():
        name = entry.name
        if (name.startswith(TEMP_PREFIX) or (name.startswith(".") and name.endswith(".tmp"))) and not entry.is_dir():
            entry.unlink(missing_ok=True)
            removed += 1
    return removed


class TempFile:
    """A file being written in a directory, with no name yet (or a hidden temporary one)."""

    def __init__(self, dir_fd: int, mode: int = 0o600) -> None:
        self._dir_fd = dir_fd
        self.temp_name: str | None = None
        try:
            self.fd = os.open(".", os.O_TMPFILE | os.O_WRONLY, mode, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                raise
            self.temp_name = f"{TEMP_PREFIX}{secrets.token_hex(8)}"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            self.fd = os.open(self.temp_name, flags, mode, dir_fd=dir_fd)
        os.fchmod(self.fd, mode)  # whatever the umask
        self.handle: BinaryIO = os.fdopen(self.fd, "wb", closefd=False)

    def publish(self, name: str) -> None:
        """Give the complete file its name, durably. Refuses (``UnsafeOutput``) a name that exists already: a file
        or a link planted there is never replaced or followed."""
        _check_name(name)
        self.handle.flush()
        os.fsync(self.fd)
        try:
            if self.temp_name is None:
                os.link(f"/proc/self/fd/{self.fd}", name, dst_dir_fd=self._dir_fd, follow_symlinks=True)
            else:
                os.link(self.temp_name, name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd, follow_symlinks=False)
                os.unlink(self.temp_name, dir_fd=self._dir_fd)
                self.temp_name = None
        except FileExistsError:
            raise UnsafeOutput(
                f"{name} exists already in the output directory: refusing to replace it or write through it",
                hint="move it away (if it is a link, someone planted it: tell your security officer)",
            ) from None
        except OSError as exc:
            raise _storage_error(exc, name) from exc
        finally:
            self.close()

    def replace(self, name: str) -> None:
        """Give the complete file ``name``, replacing a regular file of that name (never following a link)."""
        _check_name(name)
        self.handle.flush()
        os.fsync(self.fd)
        staged = f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        try:
            if self.temp_name is None:
                os.link(f"/proc/self/fd/{self.fd}", staged, dst_dir_fd=self._dir_fd, follow_symlinks=True)
            else:
                os.rename(self.temp_name, staged, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
                self.temp_name = None
            os.replace(staged, name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(staged, dir_fd=self._dir_fd)
            raise
        finally:
            self.close()

    def discard(self) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.handle.close()
        with contextlib.suppress(OSError):
            os.close(self.fd)
        if self.temp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.temp_name, dir_fd=self._dir_fd)
            self.temp_name = None


def _umask() -> int:
    """This process's umask, read without setting it (``os.umask`` sets it for every thread while it reads);
    0077 where the kernel does not say (fails closed: nothing shared)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o077


def _check_name(name: str) -> None:
    if not name or "/" in name or name in (".", "..") or "\x00" in name:
        raise UnsafeOutput(f"refusing an output name that is not a plain file name: {name!r}")


def _storage_error(exc: OSError, name: str) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"no space left to write {name}")
    return exc


class SafeDir:
    """A directory opened once, for writing files that cannot be redirected (see the module's docstring)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd
        self._output_mode: int | None = None

    @classmethod
    def open(cls, path: Path, *, create: bool = True, private: bool = False, check: bool = True) -> SafeDir:
        """Open ``path`` (creating it, 0700 when ``private`` else 0755, if missing). Refuses a symbolic link, a
        directory another user owns, or one that the group or others may write to (``check=False``: a place the
        user chose for a file of their own, like ``validate --report``; still never a link)."""
        if create:
            try:
                path.mkdir(mode=0o700 if private else 0o755, parents=True)
            except FileExistsError:
                pass
            except OSError as exc:  # a parent that is a file, a place not ours to write: the caller's to fix
                raise UsageError(
                    f"cannot create the directory {path}: {exc.strerror or exc}", hint="check the path"
                ) from None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and path.is_symlink():
                raise UnsafeOutput(
                    f"{path} is a symbolic link: refusing to write through it",
                    hint="give the real directory (if you did not make that link, tell your security officer)",
                ) from None
            if exc.errno == errno.ENOTDIR:  # a regular file: a mistake, not an attack (a link is refused above)
                raise UsageError(f"{path} is not a directory", hint="give a directory") from None
            raise UsageError(f"cannot open the directory {path}: {exc.strerror or exc}") from None
        try:
            if check:
                _check_dir(path, os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    def subdir(self, name: str, *, private: bool = True) -> SafeDir:
        """A directory inside this one, checked and opened the same way (relative to this one's descriptor)."""
        _check_name(name)
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700 if private else 0o755, dir_fd=self.fd)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafeOutput(f"{self.path / name} is not a plain directory (a link?): refusing it") from None
            raise
        try:
            _check_dir(self.path / name, os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise
        return SafeDir(self.path / name, fd)

    def temp(self, mode: int = 0o600) -> TempFile:
        return TempFile(self.fd, mode)

    def output_mode(self) -> int:
        """The mode of a file written here for someone else to pick up: the user's alone (0600), unless the directory
        is setgid, the documented way to share an inbox with a loader's group (docs/deployment.md): then readable by
        that group as far as the umask lets it (0640 under umask 0027, 0600 under 0077), never by others, never
        writable but by its owner. Worked out once per opening."""
        if self._output_mode is None:
            shared = os.fstat(self.fd).st_mode & stat.S_ISGID
            self._output_mode = 0o640 & ~_umask() if shared else 0o600
        return self._output_mode

    def exists(self, name: str) -> bool:
        try:
            os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def open_read(self, name: str) -> BinaryIO:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=self.fd)
        return os.fdopen(fd, "rb")

    def open_append(self, name: str) -> BinaryIO:
        """A file of ours to append to (a partial download), created if missing; never a link."""
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600, dir_fd=self.fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            os.close(fd)
            raise UnsafeOutput(f"{self.path / name} is not a regular file of ours: refusing it")
        return os.fdopen(fd, "ab")

    def size(self, name: str) -> int | None:
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False).st_size
        except FileNotFoundError:
            return None

    def unlink(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)

    def rename(self, src: str, dst: str, into: SafeDir | None = None) -> None:
        """Move ``src`` to ``dst`` (in ``into``, or here), refusing an existing ``dst`` rather than replacing it."""
        _check_name(dst)
        target = into or self
        try:
            os.link(src, dst, src_dir_fd=self.fd, dst_dir_fd=target.fd, follow_symlinks=False)
        except FileExistsError:
            raise UnsafeOutput(
                f"{target.path / dst} exists already: refusing to replace it or write through it",
                hint="move it away (if it is a link, someone planted it: tell your security officer)",
            ) from None
        os.unlink(src, dir_fd=self.fd)

    def names(self) -> Iterator[str]:
        yield from os.listdir(self.fd)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def __enter__(self) -> SafeDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_dir(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeOutput(f"{path} is not a directory")
    if st.st_uid != os.geteuid():
        raise UnsafeOutput(
            f"{path} belongs to another user: refusing to write there",
            hint="write into a directory of your own (chown it, or choose another --out)",
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeOutput(
            f"{path} may be written by other users (mode {stat.S_IMODE(st.st_mode):o}): refusing to write there",
            hint=f"write into a directory of your own that only you may write to (chmod go-w {path}, if it is yours)",
        )
