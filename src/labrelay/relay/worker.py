"""``labrelay worker``: the relay's background jobs, run by one leader among any number of worker processes.

At scale, relay replicas only answer requests; the jobs that must run once per relay, not once per replica, run
here: the reaper (expiry, deletion, epoch keys, recovery after a crash), detection (it tails the shared audit log,
so a probe sent to any replica counts), and the checkpointer (it verifies each new stretch of the audit chain and
keeps the signed heads as a witness outside the database). Leadership comes from a ``Leader`` (a PostgreSQL
advisory lock); the other workers wait and take over within a few seconds when the leader dies.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from labrelay.domain.audit import GENESIS, AuditEvent, AuditLink, Checkpoint, Outcome, verify_chain
from labrelay.errors import LabrelayError
from labrelay.ports import AuditLog, Clock, Leader, Witness
from labrelay.relay.alerts import Alert, AlertDispatcher
from labrelay.relay.auditor import Auditor
from labrelay.relay.detector import Detector

log = structlog.get_logger("labrelay.worker")


@dataclass
class Job:
    """A background job: ``run`` every ``interval`` seconds while leading; ``start`` when leadership is won."""

    name: str
    interval: float
    run: Callable[[], object]
    start: Callable[[], None] | None = None
    due: float = field(default=0.0, compare=False)


class AuditTail:
    """Feeds the detector (and the ``also`` listeners: the delivery monitor) every audit link appended by any
    process, in order, from where it started."""

    def __init__(
        self,
        audit_log: AuditLog,
        detector: Detector,
        clock: Clock,
        also: Sequence[Callable[[AuditLink], None]] = (),
    ) -> None:
        self._log = audit_log
        self._detector = detector
        self._clock = clock
        self._also = list(also)
        self.position = 0

    def _feed(self, rec: AuditLink) -> None:
        self._detector(rec)
        for listener in self._also:
            try:
                listener(rec)
            except Exception as exc:  # noqa: BLE001 - a listener's failure must not stop detection
                log.error("audit listener failed", error=type(exc).__name__)

    def start(self) -> None:
        """On winning leadership: the volume history, then the links of the last detection window (a previous
        leader may have died before seeing them; counting them twice can only raise an alert again)."""
        now = self._clock.now()
        self._detector.load_history(self._log, now)
        head = self._log.checkpoint("head")
        self.position = head.seq if head is not None else 0
        for rec in self._log.links_since(now - self._detector.rules.window):
            self._feed(rec)
            self.position = max(self.position, rec.seq)  # appended since the head was read: fed once, not twice

    def run(self) -> int:
        seen = 0
        for rec in self._log.links(self.position):
            self._feed(rec)
            self.position = rec.seq
            seen += 1
        return seen


class Checkpointer:
    """Watches the audit chain while it is written, and hands each verified signed head to a ``Witness`` (a
    checkpoints file kept away from the database). Each run:

    - verifies the new stretch of the chain, up to the signed head;
    - checks that the links at the heads it witnessed before still have the hashes it saw (a history rewritten
      and re-hashed by someone with the database and the relay's key shows at once);
    - every ``full_every`` runs (and at start), walks the whole chain from its anchor (a single link edited in
      place, without re-hashing, shows there).

    A chain that does not verify raises an ``audit-chain`` alert at once: an operator rewriting the log is seen
    while it happens, not at the next audit."""

    KEPT = 32

    def __init__(
        self,
        audit_log: AuditLog,
        alerts: AlertDispatcher,
        clock: Clock,
        witness: Witness,
        *,
        full_every: int = 60,
    ) -> None:
        self._log = audit_log
        self._alerts = alerts
        self._clock = clock
        self._witness = witness
        self._full_every = full_every
        self._runs = 0
        self._seq = 0
        self._hash: str | None = None
        self.witnessed: list[Checkpoint] = []
        self.failures = 0
        self._alerted: set[tuple[int, str]] = set()

    def start(self) -> None:
        self._runs = 0
        self._seq, self._hash = 0, None

    def run(self) -> Checkpoint | None:
        if self._runs % self._full_every == 0:
            self._seq, self._hash = 0, None  # from the anchor again
        self._runs += 1
        head = self._log.checkpoint("head")
        for held in self.witnessed:
            now_hash = self._log.hash_at(held.seq)
            if now_hash is not None and now_hash != held.hash:
                self._fail(held.seq, "its hash changed since the relay signed it (history rewritten)")
                return None
        if head is None or head.seq <= self._seq:
            return head
        start_seq, start_hash = self._seq, self._hash
        if start_hash is None:
            anchor = self._log.checkpoint("anchor")
            start_seq, start_hash = (anchor.seq, anchor.hash) if anchor is not None else (0, GENESIS)
        links = [rec for rec in self._log.links(start_seq) if rec.seq <= head.seq]
        report = verify_chain(links, start_prev=start_hash, start_seq=start_seq + 1)
        if not report.ok:
            bad = report.first_bad_seq if report.first_bad_seq is not None else head.seq
            self._fail(bad, report.problem or "the chain does not follow")
            return None
        if not links or links[-1].seq != head.seq or links[-1].hash != head.hash:
            self._fail(head.seq, "the chain does not end at its signed head")
            return None
        self._seq, self._hash = head.seq, head.hash
        self.witnessed = [*self.witnessed, head][-self.KEPT :]
        self._witness.observe(head)
        return head

    def _fail(self, seq: int, problem: str) -> None:
        self.failures += 1
        log.error("audit chain does not verify", first_bad=seq, problem=problem)
        if (seq, problem) in self._alerted:
            return  # raised already; it stays logged at every run until someone looks
        self._alerted.add((seq, problem))
        self._alerts.submit(
            Alert(
                rule="audit-chain",
                subject="audit-log",
                at=self._clock.now(),
                count=1,
                threshold=1,
                window_seconds=0,
                locked=False,
                audit_seq=0,  # no link: appending to a log that does not verify would bury the evidence
                summary=f"the audit log does not verify at record {seq}: {problem}; run labrelay audit verify",
            )
        )


class Worker:
    """Campaigns for leadership; while leading, runs each job when due; stops when ``stop`` is set."""

    def __init__(
        self,
        leader: Leader,
        jobs: Sequence[Job],
        auditor: Auditor,
        *,
        tick: float = 0.5,
        campaign: float = 2.0,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._leader = leader
        self._jobs = list(jobs)
        self._auditor = auditor
        self._tick = tick
        self._campaign = campaign
        self._on_change = on_change
        self.leading = False

    def _record(self, event: AuditEvent, outcome: Outcome = Outcome.OK, **details: str) -> None:
        try:
            self._auditor.record(event, outcome=outcome, **details)
        except LabrelayError as exc:
            log.error("worker could not write to the audit log", error=exc.code)

    def _set_leading(self, leading: bool) -> None:
        self.leading = leading
        if self._on_change is not None:
            self._on_change(leading)

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                if not self.leading:
                    if not self._leader.try_acquire():
                        stop.wait(self._campaign)
                        continue
                    self._set_leading(True)
                    log.info("worker leads")
                    self._record(AuditEvent.WORKER_LEAD)
                    self._start_jobs()
                elif not self._leader.still_leader():
                    self._set_leading(False)
                    log.warning("worker lost leadership; campaigning again")
                    continue
                self._run_due()
                stop.wait(self._tick)
        finally:
            if self.leading:
                self._record(AuditEvent.WORKER_STANDBY)
            self._leader.release()
            self._set_leading(False)

    def _start_jobs(self) -> None:
        for job in self._jobs:
            job.due = 0.0
            if job.start is not None:
                try:
                    job.start()
                except Exception as exc:  # noqa: BLE001 - retried at the next leadership
                    log.error("worker job failed to start", job=job.name, error=type(exc).__name__)
                    self._leader.release()
                    self._set_leading(False)
                    return

    def _run_due(self) -> None:
        for job in self._jobs:
            now = time.monotonic()
            if now < job.due or not self.leading:
                continue
            job.due = now + job.interval
            try:
                job.run()
            except Exception as exc:  # noqa: BLE001 - a job outlives any one failure; its next run retries
                log.error("worker job failed", job=job.name, error=type(exc).__name__)
                self._record(AuditEvent.REAPER_RUN, Outcome.ERROR, job=job.name, error=type(exc).__name__)
