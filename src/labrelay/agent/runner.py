"""The agent's process: a thread per party, the health listener, the signals.

SIGTERM and SIGINT only ask the threads to stop: each finishes the unit it is in (a file's send and its move, a
fetch pass and its hooks), so nothing is left half-written, and the process exits 0. A party's thread that dies on
a bug (``worker.crashed``) stops every thread the same way and the process exits 1: systemd's
``Restart=on-failure`` starts it again (rather than a process that looks alive while a party is served by
none). ``--once`` makes one pass over every party, one after the other, and returns the worst exit code of what
it met (0, 1 operational or data, 2 usage, 3 security), as the CLI's commands do.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType
from typing import TextIO

from labrelay.agent.events import EventLog
from labrelay.agent.health import HealthServer, Metrics
from labrelay.agent.lab import LabWorker
from labrelay.agent.policy import error_fields
from labrelay.agent.recipient import RecipientWorker
from labrelay.agent.settings import AgentSettings
from labrelay.agent.worker import Context, Worker
from labrelay.client.lock import AGENT_LOCK_FILE, party_lock
from labrelay.clock import SystemClock
from labrelay.errors import PartyBusy, UsageError


def build(settings: AgentSettings, server: str, cacert: Path | None, retries: int, stream: TextIO) -> list[Worker]:
    """Every party's worker, loaded (a party directory that cannot be loaded is refused here, before anything
    runs)."""
    clock = SystemClock()
    ctx = Context(
        server=server,
        cacert=cacert,
        retries=retries,
        lock_wait=settings.lock_wait,
        log=EventLog(stream, clock),
        metrics=Metrics(),
        clock=clock,
        stop=threading.Event(),
    )
    workers: list[Worker] = [LabWorker(s, ctx) for s in settings.labs]
    workers += [RecipientWorker(s, ctx) for s in settings.recipients]
    return workers


def run_agent(
    settings: AgentSettings, server: str, cacert: Path | None, retries: int, stream: TextIO, *, once: bool
) -> int:
    """Run until SIGTERM/SIGINT (0), or one pass with ``once`` (the worst exit code)."""
    workers = build(settings, server, cacert, retries, stream)
    ctx = workers[0].ctx
    with _one_agent_per_party(workers), _stop_on_signals(ctx.stop):
        if once:
            return _once(workers)
        return _forever(settings, workers)


@contextmanager
def _one_agent_per_party(workers: list[Worker]) -> Iterator[None]:
    """Each party's agent lock, held for the whole run: a second agent for a party (another ``listen``, or
    ``--once`` beside the service) would take the first one's file in ``.taking/`` for one a crash left, and give
    one file two endings. Refused at once, exit 2: a setting to change, not a moment to wait out."""
    with ExitStack() as held:
        for worker in workers:
            try:
                held.enter_context(party_lock(worker.party.path, worker.party.name, "agent", lock_file=AGENT_LOCK_FILE))
            except PartyBusy as busy:
                raise UsageError(
                    busy.message,
                    hint="one agent per party: stop the other, or remove this party from one agent's settings",
                ) from None
        yield


def _once(workers: list[Worker]) -> int:
    ctx = workers[0].ctx
    ctx.log.emit("agent.started", once=True, parties=[w.party.name for w in workers])
    try:
        for worker in workers:
            worker.status.running(True)
            worker.run_once()
    finally:
        for worker in workers:
            worker.close()
    worst = max(w.worst for w in workers)
    ctx.log.emit("agent.stopped", once=True, exit_code=worst)
    return worst


def _forever(settings: AgentSettings, workers: list[Worker]) -> int:
    ctx = workers[0].ctx
    health = HealthServer(settings.listen, ctx.metrics, [w.status for w in workers])
    health.start()
    crashed = threading.Event()
    threads = [
        threading.Thread(target=_thread, args=(w, crashed), name=f"agent-{w.side}-{w.party.name}", daemon=True)
        for w in workers
    ]
    ctx.log.emit(
        "agent.started",
        url=health.url,
        parties=[{"party": w.party.name, "side": w.side} for w in workers],
    )
    for thread in threads:
        thread.start()
    try:
        while not ctx.stop.wait(0.5):
            pass
        ctx.log.emit("agent.stopping")
        for thread in threads:
            thread.join()
    finally:
        health.stop()
    code = 1 if crashed.is_set() else 0
    ctx.log.emit("agent.stopped", exit_code=code)
    return code


def _thread(worker: Worker, crashed: threading.Event) -> None:
    worker.status.running(True)
    try:
        worker.run()
    except Exception as exc:  # noqa: BLE001 - a bug: said, then the whole process stops with 1 (systemd restarts it)
        worker.emit("worker.crashed", **error_fields(exc))
        crashed.set()
        worker.ctx.stop.set()
    finally:
        worker.status.running(False)
        worker.close()


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set ``stop`` instead of raising (only the main thread may install handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def ask(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, ask) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
