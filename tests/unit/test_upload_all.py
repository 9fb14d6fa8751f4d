"""A batch's payloads are uploaded several at a time (client/send.upload_all): every one exactly once, the results
in the caller's order, the largest started first, never more at once than UPLOAD_THREADS; on a failure, nothing
not yet started is, and the first failure in the caller's order is raised (what was not uploaded stays pending)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from labrelay.client import send
from labrelay.client.send import UPLOAD_THREADS, Sent, upload_all
from labrelay.errors import AuditTampered, IntegrityError, SecurityError, Unavailable


def pending(tmp_path: Path, sizes: dict[str, int]) -> list[Path]:
    paths = []
    for name, size in sizes.items():
        (tmp_path / f"{name}.age").write_bytes(b"x" * size)
        (tmp_path / f"{name}.json").write_text("{}")
        paths.append(tmp_path / f"{name}.json")
    return paths


class FakeUploads:
    def __init__(self, fail: dict[str, BaseException] | None = None, pause: float = 0.02) -> None:
        self.fail = fail or {}
        self.pause = pause
        self.started: list[str] = []
        self.running = 0
        self.most = 0
        self.lock = threading.Lock()

        self.stopped: list[str] = []

    def __call__(self, party: Any, client: Any, pending_path: Path, progress: Any = None, stop: Any = None) -> Sent:
        name = pending_path.stem
        with self.lock:
            self.started.append(name)
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            for _ in range(10):  # ten chunks
                time.sleep(self.pause / 10)
                if stop is not None and stop.is_set():
                    self.stopped.append(name)
                    raise Unavailable("stopped")
            if name in self.fail:
                raise self.fail[name]
            return Sent(name, name, pending_path.with_suffix(".age").stat().st_size, "0" * 64)
        finally:
            with self.lock:
                self.running -= 1


def test_every_payload_once_largest_first_a_few_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = {f"ars-{i:02d}": 10 + i for i in range(12)} | {"spf": 1000, "cnam": 500}
    paths = pending(tmp_path, sizes)
    fake = FakeUploads()
    monkeypatch.setattr(send, "upload", fake)
    sent = upload_all(None, None, paths)  # type: ignore[arg-type]
    assert [s.recipient for s in sent] == [p.stem for p in paths]  # the caller's order
    assert sorted(fake.started) == sorted(sizes)  # each once
    assert fake.started[:2] == ["spf", "cnam"]  # the largest first: it bounds the time of the whole
    assert 1 < fake.most <= UPLOAD_THREADS


def test_a_failure_stops_what_has_not_started_and_the_first_is_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = pending(tmp_path, {"spf": 1000, "cnam": 900, "ars-11": 800, **{f"ars-{i}": 10 for i in range(20, 40)}})
    refused = SecurityError("the relay refused the manifest")
    fake = FakeUploads(fail={"cnam": Unavailable("relay gone"), "spf": refused})
    monkeypatch.setattr(send, "upload", fake)
    with pytest.raises(SecurityError) as raised:
        upload_all(None, None, paths)  # type: ignore[arg-type]
    assert raised.value is refused  # spf comes first in the caller's order
    assert len(fake.started) <= 2 * UPLOAD_THREADS  # the rest were never started: they stay pending
    assert fake.running == 0  # nothing left running when it returns


def test_one_payload_is_uploaded_on_the_callers_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads = []

    def upload(party: Any, client: Any, pending_path: Path, progress: Any = None) -> Sent:
        threads.append(threading.current_thread())
        return Sent("t", "spf", 1, "0" * 64)

    monkeypatch.setattr(send, "upload", upload)
    assert [s.recipient for s in upload_all(None, None, pending(tmp_path, {"spf": 1}))] == ["spf"]  # type: ignore[arg-type]
    assert threads == [threading.current_thread()]


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])  # SystemExit: any BaseException (Terminated)
def test_an_interrupt_starts_nothing_more_and_stops_what_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupt: type[BaseException]
) -> None:
    """Ctrl-C, or SIGTERM (the CLI's ``Terminated``) from cron's timeout or systemd, while the main thread waits:
    the queued uploads are cancelled, those under way stop at their next chunk, and the interrupt propagates."""
    paths = pending(tmp_path, {f"ars-{i:02d}": 10 + i for i in range(12)})
    fake = FakeUploads(pause=0.5)
    monkeypatch.setattr(send, "upload", fake)

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.1)  # the first uploads are under way
        raise interrupt

    monkeypatch.setattr(send, "wait", interrupted)
    started = time.monotonic()
    with pytest.raises(interrupt):
        upload_all(None, None, paths)  # type: ignore[arg-type]
    assert len(fake.started) == UPLOAD_THREADS  # nothing queued was started
    assert sorted(fake.stopped) == sorted(fake.started)  # those under way stopped between chunks
    assert fake.running == 0
    assert time.monotonic() - started < 0.45  # not one whole upload's time


@pytest.mark.parametrize("incident", [SecurityError("refused"), AuditTampered("forked"), IntegrityError("bad")])
def test_a_security_failure_is_raised_before_an_earlier_retryable_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, incident: SecurityError
) -> None:
    """An incident (exit 3) in one thread is not hidden behind an earlier payload's ``Unavailable`` (exit 1)."""
    paths = pending(tmp_path, {"spf": 1000, "cnam": 900, "ars-11": 800})
    fake = FakeUploads(fail={"spf": Unavailable("relay gone"), "ars-11": incident})
    monkeypatch.setattr(send, "upload", fake)
    with pytest.raises(SecurityError) as raised:
        upload_all(None, None, paths)  # type: ignore[arg-type]
    assert raised.value is incident


def test_the_clients_upload_stops_between_chunks() -> None:
    """``RelayClient.upload`` checks ``stop`` before each chunk: set while one is sent, no further one is."""
    from labrelay.client.api import RelayClient  # noqa: PLC0415
    from labrelay.errors import OperationalError  # noqa: PLC0415

    stop = threading.Event()
    regions: list[int] = []
    client = RelayClient.__new__(RelayClient)

    def region(transfer_id: str, source: Any, offset: int, length: int) -> int:
        regions.append(offset)
        stop.set()  # the interrupt arrives while this chunk is sent
        return offset + length

    client.upload_offset = lambda transfer_id: 0  # type: ignore[method-assign]
    client.upload_region = region  # type: ignore[method-assign]
    with pytest.raises(OperationalError, match="stopped at byte 10 of 40"):
        client.upload("t", None, 40, 10, stop=stop)  # type: ignore[arg-type]
    assert regions == [0]
