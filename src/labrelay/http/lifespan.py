"""The relay process's life around its requests: what runs before the first, beside them, and after the last.

At start: the frozen gauge, the upload threads, the edge's limit reports (``limit:hit`` audit events), and, in the
embedded default, one reaper pass before the first request is served. Beside the requests: nonce pruning, the cut
sweep (uploads and downloads of parties that may no longer act are closed) and, in the embedded default, the reaper
and the delivery monitor every ``reaper_interval``. At stop: ``relay:stop`` in the audit trail, the alert sinks closed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import structlog
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from labrelay import __version__
from labrelay.domain.audit import AuditEvent, Outcome
from labrelay.domain.parties import EntryStatus
from labrelay.errors import LabrelayError, PartyLocked, PartyRevoked, RelayFrozen, TooManyRequests
from labrelay.http.edge import EdgeState
from labrelay.http.services import RelayServices
from labrelay.relay.auditor import Auditor

log = structlog.get_logger("labrelay.http")

NONCE_PRUNE_SECONDS = 60
CUT_SWEEP_SECONDS = 1.0


class LimitAudit:
    """The edge's limit reports (on the event loop) as ``limit:hit`` audit events, written on worker threads."""

    def __init__(self, auditor: Auditor) -> None:
        self._auditor = auditor
        self._writes: set[asyncio.Task[Any]] = set()

    def __call__(self, limit: str, party: str | None, remote_address: str | None) -> None:
        task = asyncio.get_running_loop().create_task(
            run_in_threadpool(
                self._auditor.record,
                AuditEvent.LIMIT_HIT,
                outcome=Outcome.REFUSED,
                actor=party,
                reason=TooManyRequests.code,
                limit=limit,
                remote=remote_address,
            )
        )
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    services: RelayServices = app.state.services
    edge: EdgeState = app.state.edge
    services.metrics.frozen.set(1 if await run_in_threadpool(services.control.frozen) else 0)
    app.state.uploads = anyio.CapacityLimiter(services.edge.max_uploads)
    edge.on_limit = LimitAudit(services.auditor)
    tasks = [asyncio.create_task(_prune_nonces(services)), asyncio.create_task(_cut_sweep(services, edge))]
    await _start(services)
    if services.background:
        tasks.append(asyncio.create_task(_reap(services)))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await run_in_threadpool(services.auditor.record, AuditEvent.RELAY_STOP)
        if services.alerts is not None:
            await run_in_threadpool(services.alerts.close)


async def _start(services: RelayServices) -> None:
    """``relay:start`` in the audit trail; in the embedded default, after a reaper pass."""
    if services.background:
        reaped = await run_in_threadpool(services.reaper.run_once)  # before the first request is served
        await run_in_threadpool(
            services.auditor.record,
            AuditEvent.RELAY_START,
            version=__version__,
            recovered=reaped.repaired,
            expired=reaped.expired,
        )
    else:  # a replica: the leading worker recovers, reaps and detects for every replica
        await run_in_threadpool(services.auditor.record, AuditEvent.RELAY_START, version=__version__, replica=True)


async def _reap(services: RelayServices) -> None:
    while True:
        await _monitor(services)  # after each reaper pass (the start's included): its expiries, then no-fetch
        await asyncio.sleep(services.reaper_interval)
        try:
            await run_in_threadpool(services.reaper.run_once)
        except Exception as exc:  # noqa: BLE001 - the reaper outlives any one failure; the next pass retries
            log.error("reaper pass failed", error=type(exc).__name__)
            with contextlib.suppress(Exception):
                await run_in_threadpool(
                    services.auditor.record, AuditEvent.REAPER_RUN, outcome=Outcome.ERROR, reason=type(exc).__name__
                )


async def _monitor(services: RelayServices) -> None:
    """The delivery monitor's check (labrelay.relay.monitoring): undelivered payloads, recipients not fetching."""
    if services.monitor is None:
        return
    try:
        await run_in_threadpool(services.monitor.run)
    except Exception as exc:  # noqa: BLE001 - the monitor outlives any one failure (the database away, a bug)
        log.error("delivery monitor failed", error=type(exc).__name__)


async def _cut_sweep(services: RelayServices, edge: EdgeState) -> None:
    """Every second, close the uploads and downloads of parties that may no longer act: locked or revoked by any
    replica, the worker's detection, the console or ``admin`` on the data directory; all of them when frozen."""
    while True:
        await asyncio.sleep(CUT_SWEEP_SECONDS)
        parties = edge.parties_in_flight()
        if not parties:
            continue
        try:
            if await run_in_threadpool(services.control.frozen):
                edge.cut(None, RelayFrozen("the relay was frozen by its administrator"))
                continue
            for party in parties:
                why = await run_in_threadpool(_refusal, services, party)
                if why is not None:
                    edge.cut(party, why)
        except Exception as exc:  # noqa: BLE001 - the sweep outlives any one failure (the database away, a bug)
            log.error("cut sweep failed", error=type(exc).__name__)


def _refusal(services: RelayServices, party: str) -> LabrelayError | None:
    """Why ``party`` may no longer act (a lock, a revocation, no entry in force), or None."""
    held = services.control.refusal(party)
    if held is not None:
        return held
    status = services.directory.resolve(party).status
    if status is EntryStatus.REVOKED:
        return PartyRevoked(f"{party} is revoked in the directory")
    if status is not EntryStatus.ACTIVE:
        return PartyLocked(f"{party} has no directory entry in force ({status.value})")
    return None


async def _prune_nonces(services: RelayServices) -> None:
    while True:
        await asyncio.sleep(NONCE_PRUNE_SECONDS)
        with contextlib.suppress(LabrelayError):
            await run_in_threadpool(services.auth.prune_nonces)
