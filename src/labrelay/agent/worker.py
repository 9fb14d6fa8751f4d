"""What a party's thread shares, lab or recipient: its party loaded once, its relay client kept for the life of the
process (the audit checkpoints in the party's directory, as every command keeps them), its status and its log.

The client's waits between retries watch the agent's stop: a stop during a network cut ends the back-off at once
(``Stopping``, an operational error: the unit is left as it is, for the next start), instead of outlasting
systemd's ``TimeoutStopSec``."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labrelay.agent.events import EventLog
from labrelay.agent.health import Metrics, Status
from labrelay.client.api import RelayClient
from labrelay.client.checkpoints import CHECKPOINTS_FILE, CheckpointBook
from labrelay.client.keystore import Party
from labrelay.client.lock import party_lock
from labrelay.errors import OperationalError
from labrelay.ports import Clock


class Stopping(OperationalError):
    """The agent is stopping: a retry's wait was cut short; what it was doing is left for the next start."""

    code = "stopping"


def stoppable_sleep(stop: threading.Event) -> Callable[[float], None]:
    """A ``sleep`` for the client's retries that returns after ``seconds``, or raises ``Stopping`` as soon as
    ``stop`` is set (at once if it is already)."""

    def sleep(seconds: float) -> None:
        if stop.wait(seconds):
            raise Stopping("the agent is stopping: retries cut short")

    return sleep


@dataclass(frozen=True)
class Context:
    """What every party's thread is given."""

    server: str
    cacert: Path | None
    retries: int
    lock_wait: float
    log: EventLog
    metrics: Metrics
    clock: Clock
    stop: threading.Event


class Worker:
    side = ""

    def __init__(self, party_dir: Path, ctx: Context) -> None:
        self.party = Party.load(party_dir)
        self.ctx = ctx
        self.status = Status(self.party.name, self.side, ctx.metrics, ctx.clock)
        self.worst = 0  # the worst exit code seen (``--once``)
        self._client: RelayClient | None = None

    @property
    def client(self) -> RelayClient:
        if self._client is None:
            book = CheckpointBook(self.party.path / CHECKPOINTS_FILE)
            self._client = RelayClient(
                self.ctx.server,
                self.party.name,
                self.party.signing_key,
                self.ctx.clock,
                ca_bundle=self.ctx.cacert,
                checkpoints=book,
                retries=self.ctx.retries,
                sleep=stoppable_sleep(self.ctx.stop),
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The party's lock, as ``send`` and ``fetch`` take it: a manual run and the agent never collide."""
        with party_lock(self.party.path, self.party.name, "agent", wait=self.ctx.lock_wait):
            yield

    def emit(self, event: str, **fields: Any) -> None:
        self.ctx.log.emit(event, party=self.party.name, side=self.side, **fields)

    def note_exit(self, code: int) -> None:
        self.worst = max(self.worst, code)

    def run(self) -> None:
        """The thread's loop, until ``ctx.stop``."""
        raise NotImplementedError

    def run_once(self) -> bool:
        """One pass over everything (``--once``); True when it left nothing unfinished."""
        raise NotImplementedError
