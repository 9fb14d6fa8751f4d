"""A stop during a network cut: the client's back-off between retries ends at once, instead of outlasting systemd's
TimeoutStopSec (its retries would otherwise sleep for minutes)."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from labrelay.agent.events import EventLog
from labrelay.agent.health import Metrics, Status
from labrelay.agent.worker import Context, Stopping, Worker, stoppable_sleep
from labrelay.client.api import RelayClient
from labrelay.clock import SystemClock
from labrelay.crypto.keys import SigningKey
from labrelay.errors import OperationalError, Unavailable


def cut(requests: list[httpx.Request]) -> httpx.MockTransport:
    """A network that is cut: every connection fails."""

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        raise httpx.ConnectError("connection refused", request=request)

    return httpx.MockTransport(handler)


def test_a_stop_ends_the_clients_back_off_at_once() -> None:
    stop = threading.Event()
    stop.set()
    requests: list[httpx.Request] = []
    client = RelayClient(
        "http://127.0.0.1:9",
        "lab-a",
        SigningKey.generate(),
        SystemClock(),
        retries=1000,
        backoff=3600.0,
        transport=cut(requests),
        sleep=stoppable_sleep(stop),
    )
    with client, pytest.raises(Stopping) as caught:
        client.limits()
    assert len(requests) == 1  # the first attempt, then no wait at all
    assert isinstance(caught.value, OperationalError)  # the unit is retried at the next start, never failed/
    assert not isinstance(caught.value, Unavailable)  # and no retry loop of the client catches it


def test_without_a_stop_the_wait_is_the_clients_own() -> None:
    stop = threading.Event()
    stoppable_sleep(stop)(0.0)  # returns: nothing raised


def test_every_workers_client_waits_on_the_agents_stop(tmp_path: Path) -> None:
    clock = SystemClock()
    stop = threading.Event()
    ctx = Context("http://127.0.0.1:9", None, 1000, 1.0, EventLog(io.StringIO(), clock), Metrics(), clock, stop)
    w = Worker.__new__(Worker)
    w.party = SimpleNamespace(name="lab-a", path=tmp_path, signing_key=SigningKey.generate())  # type: ignore[assignment]
    w.ctx, w.status, w._client = ctx, Status("lab-a", "lab", ctx.metrics, clock), None
    stop.set()
    with pytest.raises(Stopping):
        w.client.retry.pause(1, Unavailable("relay unreachable"))  # the client's own wait: 0.5 s, doubling
    w.close()
