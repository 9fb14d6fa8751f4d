"""A replica writing an S3 upload chunk after chunk, killed (SIGKILL) at three moments: the driver shared by the
legacy store's test (tests/unit/test_s3_store.py) and the ledgered store's (tests/unit/test_s3_ledger.py)."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from labrelay.domain.names import new_id
from labrelay.storage.s3 import S3PayloadStore
from tests.support.payloads import DEADLINE, finish

WRITER_SCRIPT = textwrap.dedent(
    """
    import hashlib, sys
    from datetime import timedelta
    from pathlib import Path
    from labrelay.storage.keystore import FileKeyStore
    from labrelay.storage.s3 import LedgeredS3PayloadStore, S3PayloadStore, s3_client
    from labrelay.storage.sql.engine import Database, sqlite_engine
    from labrelay.storage.sql.payload_objects import SqlObjectLedger

    endpoint, bucket, keys, db, tid, size, offset = sys.argv[1:8]
    plain = hashlib.shake_256(b"crash").digest(int(size))
    client = s3_client(endpoint, "us-east-1", "k", "s")
    if db == "-":  # the legacy store: the chunk chain in the bucket
        store = S3PayloadStore(client, bucket, FileKeyStore(Path(keys)), timedelta(hours=1))
    else:
        ledger = SqlObjectLedger(Database(sqlite_engine(Path(db))))
        store = LedgeredS3PayloadStore(client, bucket, FileKeyStore(Path(keys)), timedelta(hours=1), ledger)
    offset = int(offset)
    while offset < len(plain):
        writer = store.writer(tid, offset)
        end = min(offset + 100_000, len(plain))
        for i in range(offset, end, 7_000):
            writer.write(plain[i : min(i + 7_000, end)])
        offset = writer.commit()
        print(offset, flush=True)
        sys.stdin.readline()  # paced by the test: the next chunk only when it says so
    """
)


def kill_a_writer_three_times(store: S3PayloadStore, endpoint: str, keys: Path, db: Path | None) -> str:
    """A writer process (on the ledger in ``db``, or the legacy store without one) killed at three moments: every
    chunk it acknowledged is there, the next writer resumes exactly there, and the payload is whole in the end.
    Returns the transfer id, published."""
    size = 40 * 100_000
    plain = hashlib.shake_256(b"crash").digest(size)
    tid = new_id()
    store.begin(tid, DEADLINE)
    acknowledged = 0
    for wait in (0.0, 0.03, 0.11):
        argv = [endpoint, store.bucket, str(keys), str(db) if db else "-", tid, str(size), str(acknowledged)]
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER_SCRIPT, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None
        assert child.stdin is not None
        with child.stdout, child.stdin:
            for _ in range(2):  # two chunks acknowledged, then a third begun: the kill lands in it or right after
                line = child.stdout.readline()
                assert line, "the writer died on its own"
                acknowledged = int(line)
                child.stdin.write("go\n")
                child.stdin.flush()
            time.sleep(wait)
            child.send_signal(signal.SIGKILL)
            assert child.wait(timeout=30) == -signal.SIGKILL
            for line in child.stdout:  # acknowledged before the kill, not read yet
                acknowledged = int(line)
        assert acknowledged < size  # by design: the writer never gets past its third chunk before the kill
        assert store.uploaded(tid) >= acknowledged  # every acknowledged chunk survived
        # The relay resumes from what it acknowledged; anything stored past it is discarded first.
        store.writer(tid, acknowledged).abort()
        assert store.uploaded(tid) == acknowledged
        assert store.upload_digest(tid) == (acknowledged, hashlib.sha256(plain[:acknowledged]).hexdigest())
    assert finish(store, tid, plain, acknowledged) == size
    assert hashlib.sha256(b"".join(store.open(tid))).digest() == hashlib.sha256(plain).digest()
    return tid
