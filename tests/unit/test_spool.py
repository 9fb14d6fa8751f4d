"""The sealing stack every payload the client keeps goes through (``labrelay.client.spool``): sealed to its
recipient, gzip'd when asked, named only once whole, and nothing left behind otherwise."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from labrelay.client.files import SafeDir
from labrelay.client.spool import SealedSpool
from labrelay.crypto import age_stream
from labrelay.crypto.keys import AgeIdentity
from labrelay.errors import OperationalError

PLAIN = b"nir,nom\n" + b"1,x\n" * 50_000


def opened(path: Path, identity: AgeIdentity) -> bytes:
    data = path.read_bytes()
    plain = io.BytesIO()
    expect = age_stream.Expected(len(data), hashlib.sha256(data).hexdigest())
    age_stream.decrypt(io.BytesIO(data), plain, [identity], expect=expect)
    return plain.getvalue()


def test_a_streamed_spool_is_gzipped_sealed_and_named_private(tmp_path: Path) -> None:
    identity = AgeIdentity.generate()
    with SafeDir.open(tmp_path / "out", private=True) as folder, SealedSpool(folder, identity.recipient) as spool:
        stream = spool.stream(gzip=True)
        for start in range(0, len(PLAIN), 4096):
            stream.write(PLAIN[start : start + 4096])
        size, sha256 = spool.seal()
        assert os.listdir(folder.path) == []  # whole, and still unnamed
        spool.publish("payload.age")
    path = tmp_path / "out" / "payload.age"
    assert (size, sha256) == (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert gzip.decompress(opened(path, identity)) == PLAIN


def test_a_spool_sealed_from_a_source_holds_it_as_it_is(tmp_path: Path) -> None:
    identity = AgeIdentity.generate()
    with SafeDir.open(tmp_path, check=False) as folder, SealedSpool(folder, identity.recipient) as spool:
        spool.seal_from(io.BytesIO(PLAIN))
        spool.publish("payload.age")
    assert opened(tmp_path / "payload.age", identity) == PLAIN


@pytest.mark.parametrize("tmpfile", [True, False], ids=["o_tmpfile", "hidden-temporary"])
def test_a_spool_that_fails_or_is_not_named_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmpfile: bool
) -> None:
    real_open = os.open

    def no_tmpfile(path: str, flags: int, *args: Any, **kwargs: Any) -> int:  # a file system without O_TMPFILE
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "not supported")
        return real_open(path, flags, *args, **kwargs)

    if not tmpfile:  # the spool's file has a (hidden) name from the start: only discarding it removes it
        monkeypatch.setattr(os, "open", no_tmpfile)
    recipient = AgeIdentity.generate().recipient
    with SafeDir.open(tmp_path, check=False) as folder:

        def fail_half_way() -> None:
            with SealedSpool(folder, recipient) as spool:
                spool.stream(gzip=True).write(PLAIN)
                raise RuntimeError("the send failed half way")

        with pytest.raises(RuntimeError):
            fail_half_way()
        with SealedSpool(folder, recipient) as spool:  # sealed, then not wanted (a recipient with no record)
            spool.stream(gzip=False).write(PLAIN)
            spool.seal()
        with SealedSpool(folder, recipient) as spool:
            spool.stream(gzip=False).write(PLAIN)
            with pytest.raises(OperationalError):  # a payload is never named before it is whole
                spool.publish("payload.age")
    assert os.listdir(tmp_path) == []
