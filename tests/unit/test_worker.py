"""The worker: one leader at a time, jobs only while leading, takeover when the leader stops; the checkpointer
verifies the chain and catches what changed behind the relay's back."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import text

from labrelay.domain.audit import AuditEvent, Checkpoint
from labrelay.relay.alerts import Alert, AlertDispatcher
from labrelay.relay.worker import Checkpointer, Job, Worker
from labrelay.storage.fs import FileLeader
from tests.support.relay_setup import Setup


class Sink:
    name = "memory"

    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def send(self, alert: Alert) -> None:
        self.alerts.append(alert)


def test_file_leader_is_exclusive_and_released(tmp_path: Path) -> None:
    a, b = FileLeader(tmp_path / "worker.lock"), FileLeader(tmp_path / "worker.lock")
    assert a.try_acquire()
    assert a.try_acquire()  # already leading
    assert not b.try_acquire()
    a.release()
    assert not a.still_leader()
    assert b.try_acquire()
    b.release()


class Witnessed(list[Checkpoint]):
    """A witness keeping the heads it is shown, in memory."""

    def observe(self, checkpoint: Checkpoint) -> None:
        self.append(checkpoint)


class CountingLeader(FileLeader):
    """The file leader, counting the campaigns it answered: a test waits for them instead of sleeping."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.campaigns = 0

    def try_acquire(self) -> bool:
        self.campaigns += 1
        return super().try_acquire()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def test_one_worker_runs_the_jobs_and_another_takes_over(setup: Setup, tmp_path: Path) -> None:
    runs: dict[str, int] = {"a": 0, "b": 0}
    leaders = {name: CountingLeader(tmp_path / "worker.lock") for name in runs}

    def worker(name: str) -> Worker:
        job = Job("count", 0.01, lambda: runs.__setitem__(name, runs[name] + 1))
        return Worker(leaders[name], [job], setup.relay.services.auditor, tick=0.01, campaign=0.02)

    stop_a, stop_b = threading.Event(), threading.Event()
    a, b = worker("a"), worker("b")
    ta = threading.Thread(target=a.run, args=(stop_a,), daemon=True)
    tb = threading.Thread(target=b.run, args=(stop_b,), daemon=True)
    try:
        ta.start()
        wait_until(lambda: a.leading, "a leads")
        tb.start()
        # b campaigned several times while a led and ran its job: it never led, never ran a job.
        wait_until(lambda: leaders["b"].campaigns >= 5 and runs["a"] > 5, "b campaigned while a ran its job")
        assert a.leading
        assert not b.leading
        assert runs["b"] == 0
        stop_a.set()  # the leader stops: the other takes over within a campaign period
        ta.join(5)
        wait_until(lambda: b.leading and runs["b"] > 0, "b leads and runs the job")
    finally:  # a failed check must fail the test, not leave two workers running under it
        stop_a.set()
        stop_b.set()
        ta.join(5)
        if tb.is_alive():
            tb.join(5)
    counts = setup.relay.sql.audit.count_events()
    assert counts["worker:lead"] == 2
    assert counts["worker:standby"] == 2


def test_checkpointer_verifies_witnesses_and_alerts_on_a_changed_link(setup: Setup) -> None:
    sink = Sink()
    alerts = AlertDispatcher([sink])
    witnessed = Witnessed()
    auditor = setup.relay.services.auditor
    checkpointer = Checkpointer(setup.relay.sql.audit, alerts, setup.clock, witnessed, full_every=3)
    checkpointer.start()
    for _ in range(5):
        auditor.record(AuditEvent.TRANSFER_LIST, actor="cnam", box="inbox", count=0)
    head = checkpointer.run()
    assert head is not None
    assert witnessed == [head]
    assert checkpointer.failures == 0
    auditor.record(AuditEvent.TRANSFER_LIST, actor="cnam", box="inbox", count=1)
    assert checkpointer.run() == witnessed[-1]
    # A record edited in place (no re-hash): not in the new stretch, but the full walk (every third run) finds it.
    with setup.relay.sql.db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET reason = 'edited' WHERE seq = 2"))
    assert checkpointer.run() is not None  # the third run: incremental, nothing new to verify
    assert checkpointer.failures == 0
    assert checkpointer.run() is None  # the fourth: a full walk
    assert checkpointer.failures == 1
    checkpointer.run()  # still broken: logged again, not alerted again
    alerts.close()
    assert [a.rule for a in sink.alerts] == ["audit-chain"]
    assert "record 2" in sink.alerts[0].summary
