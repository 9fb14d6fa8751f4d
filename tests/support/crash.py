"""Killing the relay (and, at scale, its replicas and worker) with SIGKILL while it works, then checking what it
kept: the machinery of tests/integration/test_crash.py and of ``./dev bench crash``.

A *scheduled* kill lands where the driver says it is, in one phase of a transfer's life:

- ``mid-chunk``: half of an upload chunk is on the wire; the driver holds the rest back until the kill;
- ``last-chunk``: the last byte of the last chunk has left; the relay is verifying and publishing it;
- ``receipt``: a recipient that downloaded and checked a payload is sending its receipt;
- ``reaper``: a short-lived transfer has just passed its deadline, within one reaper interval;

and a *random* kill lands at a random moment while two drivers send, resume and fetch at random. Each phase has the
outcome it must have, checked after the restart (``Crasher.check``), on top of the invariants that hold after
every kill:

- no partial payload is visible: everything a recipient can list downloads whole and matches its signed hash;
- no acknowledged upload byte is lost; an upload acknowledged whole is published (or delivered, or expired);
- an acknowledged receipt stays acknowledged: the transfer is delivered and never served again;
- nothing past its deadline is listed or served;
- the audit chain verifies, walked incrementally from the last record checked.
"""

from __future__ import annotations

import hashlib
import os
import random  # noqa: TID251 - seeded, reproducible kill moments; nothing secret
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from labrelay.client.api import RelayClient
from labrelay.client.keystore import Party
from labrelay.client.send import seal, verified_recipients
from labrelay.clock import SystemClock
from labrelay.config import load_settings
from labrelay.crypto.envelopes import envelope_payload
from labrelay.domain.audit import GENESIS, verify_chain
from labrelay.domain.transfers import Manifest, Receipt, ReceiptStatus
from labrelay.errors import LabrelayError, NotFound
from labrelay.jsonfile import read_json
from labrelay.runtime import engine_for
from labrelay.storage.sql.audit import SqlAuditLog
from labrelay.storage.sql.engine import Database
from tests.support.scaled import ReplicaSet
from tests.support.world import World

CHUNK = 48 * 1024
PHASES = ("mid-chunk", "last-chunk", "receipt", "reaper")
REAPER_INTERVAL = 1.0  # seconds: the crash world's reaper_interval
SHORT_TTL = timedelta(seconds=3)


class CrashFailure(AssertionError):
    """An invariant did not hold after a kill."""


def expect(condition: object, message: str) -> None:
    if not condition:
        raise CrashFailure(message)


@dataclass
class Acknowledged:
    """What the relay acknowledged to the drivers, across every cycle."""

    manifests: dict[str, Manifest] = field(default_factory=dict)
    acked: dict[str, int] = field(default_factory=dict)  # transfer id → highest acknowledged upload offset
    complete: set[str] = field(default_factory=set)  # uploads acknowledged whole
    receipted: set[str] = field(default_factory=set)  # receipts acknowledged
    short_lived: set[str] = field(default_factory=set)
    verified: set[str] = field(default_factory=set)  # served whole after a restart: published bytes never change
    closed: set[str] = field(default_factory=set)  # refused after their receipt or deadline: never served again
    actions: int = 0
    errors: int = 0


class Gate:
    """A file for ``RelayClient.upload_region`` that tells the killer when the body of one chunk is on the wire.

    ``upload_region`` reads the chunk twice: once for its digest, once as the body. On the body pass, with
    ``hold=True`` the gate hands over half of the chunk, signals ``reached`` and waits for ``released`` (the kill)
    before the rest; with ``hold=False`` it signals as the last byte goes out."""

    def __init__(self, inner: BinaryIO, start: int, length: int, reached: threading.Event, hold: bool) -> None:
        self.inner, self.start, self.length, self.reached, self.hold = inner, start, length, reached, hold
        self.released = threading.Event()
        self._passes = 0
        self._sent = 0

    def seek(self, offset: int, whence: int = 0) -> int:
        if offset == self.start and whence == 0:
            self._passes += 1
        return self.inner.seek(offset, whence)

    def read(self, size: int = -1) -> bytes:
        if self._passes < 2:  # the digest pass
            return self.inner.read(size)
        if self.hold:
            if self._sent == 0:
                block = self.inner.read(min(size, self.length // 2))
                self._sent += len(block)
                return block
            self.reached.set()
            self.released.wait(120)
            return self.inner.read(size)
        block = self.inner.read(size)
        self._sent += len(block)
        if self._sent >= self.length:
            self.reached.set()
        return block


@dataclass
class Crasher:
    """Drives one world through kills: ``cycle(phase)`` runs the phase's driver, kills and restarts what the phase
    needs killed when the driver says so, then checks every invariant and the phase's own outcome."""

    world: World
    rng: random.Random
    work: Path
    acknowledged: Acknowledged = field(default_factory=Acknowledged)
    landed: Counter[str] = field(default_factory=Counter)  # the phase each kill landed in
    killed: Counter[str] = field(default_factory=Counter)  # the processes killed
    audit_seq: int = 0
    audit_hash: str = GENESIS

    @property
    def lab(self) -> Party:
        return self.world.parties["lab-paris-01"]

    @property
    def cnam(self) -> Party:
        return self.world.parties["cnam"]

    def client(self, name: str) -> RelayClient:
        return self.world.client(name)

    # ------------------------------------------------------------------ one cycle

    def cycle(self, phase: str) -> str:
        """One kill in ``phase`` (one of PHASES, or "random"); returns the phase it landed in."""
        landed = self._random_cycle() if phase == "random" else self._scheduled_cycle(phase)
        self.landed[landed] += 1
        self.check()
        return landed

    def _scheduled_cycle(self, phase: str) -> str:
        reached = threading.Event()
        outcome: dict[str, Any] = {}
        gate_box: list[Gate] = []
        driver: Callable[[], None] = {
            "mid-chunk": lambda: self._upload_gated(reached, gate_box, outcome, hold=True),
            "last-chunk": lambda: self._upload_gated(reached, gate_box, outcome, hold=False),
            "receipt": lambda: self._receipt(reached, outcome),
            "reaper": lambda: self._reaper(reached, outcome),
        }[phase]

        def run() -> None:
            try:
                driver()
            except (LabrelayError, OSError) as exc:  # the kill cut the driver's request: expected
                outcome["error"] = exc

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        expect(reached.wait(120), f"the {phase} driver never reached its phase: {outcome}")
        if phase in ("receipt", "last-chunk"):
            time.sleep(self.rng.uniform(0.0, 0.01))  # the receipt's request is being sent or handled
        elif phase == "reaper":
            time.sleep(self.rng.uniform(0.0, REAPER_INTERVAL))  # within the reaper pass that expires it
        self._kill_and_restart(phase)
        for gate in gate_box:
            gate.released.set()
        thread.join(120)
        expect(not thread.is_alive(), f"the {phase} driver did not finish after the kill")
        self._settle(phase, outcome)
        return phase

    def _new_payload(self, chunks: int) -> Path:
        source = self.work / f"p{self.rng.randrange(1 << 30)}.bin"
        source.write_bytes(os.urandom((chunks - 1) * CHUNK + self.rng.randrange(CHUNK // 2, CHUNK)))
        return source

    def create(self, client: RelayClient, source: Path, ttl: timedelta) -> Manifest:
        entry = next(e for e in verified_recipients(self.lab, client, ["cnam"], SystemClock()) if e.name == "cnam")
        (state,) = seal(self.lab, source, [entry], ttl, SystemClock())
        envelope = read_json(state)["manifest"]
        manifest = Manifest.from_payload(envelope_payload(envelope))
        self.acknowledged.manifests[manifest.transfer_id] = manifest
        client.create_transfer(envelope)
        self.acknowledged.acked.setdefault(manifest.transfer_id, 0)
        return manifest

    def upload_chunk(self, client: RelayClient, manifest: Manifest, fh: Any, offset: int) -> int:
        tid = manifest.transfer_id
        offset = client.upload_region(tid, fh, offset, min(CHUNK, manifest.size - offset))
        self.acknowledged.acked[tid] = max(self.acknowledged.acked.get(tid, 0), offset)
        if offset == manifest.size:
            self.acknowledged.complete.add(tid)
        return offset

    def _upload_gated(
        self, reached: threading.Event, gate_box: list[Gate], outcome: dict[str, Any], hold: bool
    ) -> None:
        """Two chunks (mid-chunk: four) of which the first goes whole; the kill lands in the second (mid-chunk) or
        as the last byte of the last chunk leaves (last-chunk)."""
        source = self._new_payload(4 if hold else 2)
        with self.client(self.lab.name) as client:
            manifest = self.create(client, source, timedelta(hours=2))
            outcome["transfer_id"] = manifest.transfer_id
            spool = self.lab.ensure_outbox() / f"{manifest.transfer_id}.age"
            with spool.open("rb") as fh:
                offset = self.upload_chunk(client, manifest, fh, 0)
                outcome["before"] = offset
                length = min(CHUNK, manifest.size - offset)
                gate = Gate(fh, offset, length, reached, hold)
                gate_box.append(gate)
                self.upload_chunk(client, manifest, gate, offset)

    def _receipt(self, reached: threading.Event, outcome: dict[str, Any]) -> None:
        source = self._new_payload(1)
        with self.client(self.lab.name) as client:
            manifest = self.create(client, source, timedelta(hours=2))
            with (self.lab.ensure_outbox() / f"{manifest.transfer_id}.age").open("rb") as fh:
                self.upload_chunk(client, manifest, fh, 0)
        outcome["transfer_id"] = manifest.transfer_id
        with self.client(self.cnam.name) as client:
            self.fetch_one(client, manifest.transfer_id, before_receipt=reached.set)

    def _reaper(self, reached: threading.Event, outcome: dict[str, Any]) -> None:
        source = self._new_payload(1)
        with self.client(self.lab.name) as client:
            manifest = self.create(client, source, SHORT_TTL)
            self.acknowledged.short_lived.add(manifest.transfer_id)
            with (self.lab.ensure_outbox() / f"{manifest.transfer_id}.age").open("rb") as fh:
                self.upload_chunk(client, manifest, fh, 0)
        outcome["transfer_id"] = manifest.transfer_id
        left = (manifest.deadline - datetime.now(UTC)).total_seconds()
        time.sleep(max(0.0, left))
        reached.set()

    def fetch_one(self, client: RelayClient, tid: str, before_receipt: Callable[[], None] | None = None) -> None:
        manifest = self.acknowledged.manifests[tid]
        digest, size = download(client, tid)
        expect((size, digest) == (manifest.size, manifest.sha256), f"{tid}: served a partial or wrong payload")
        receipt = Receipt(
            transfer_id=tid,
            sender=manifest.sender,
            recipient="cnam",
            sha256=digest,
            size=size,
            record_count=None,
            status=ReceiptStatus.RECEIVED,
            received_at=datetime.now(UTC),
        )
        if before_receipt is not None:
            before_receipt()
        client.send_receipt(tid, self.cnam.sign(receipt.to_payload()))
        self.acknowledged.receipted.add(tid)

    def _settle(self, phase: str, outcome: dict[str, Any]) -> None:
        """The phase's own outcome after the restart, then the transfer finished the way a client would."""
        tid: str = outcome["transfer_id"]
        manifest = self.acknowledged.manifests[tid]
        with self.client(self.lab.name) as lab:
            state = {t["transfer_id"]: t["state"] for t in lab.transfers("outbox")}[tid]
            if phase == "mid-chunk":
                # Half a chunk was on the wire: it is not counted, and the upload goes on from the last whole one.
                expect(state == "uploading", f"{tid}: a transfer cut mid-chunk is {state}")
                offset = lab.upload_offset(tid)
                expect(
                    offset == outcome["before"], f"{tid}: offset {offset} after a cut chunk, not {outcome['before']}"
                )
            if phase == "last-chunk":
                acked_whole = tid in self.acknowledged.complete
                expect(
                    state == "available" if acked_whole else state in ("uploading", "available"),
                    f"{tid}: {state} after a kill on its last chunk (acknowledged whole: {acked_whole})",
                )
            if phase in ("mid-chunk", "last-chunk") and state == "uploading":
                with (self.lab.ensure_outbox() / f"{tid}.age").open("rb") as fh:
                    offset = lab.upload_offset(tid)
                    while offset < manifest.size:
                        offset = self.upload_chunk(lab, manifest, fh, offset)
            if phase == "receipt":
                acked = tid in self.acknowledged.receipted
                expect(
                    state == "delivered" if acked else state in ("available", "delivered"),
                    f"{tid}: {state} after a kill during its receipt (acknowledged: {acked})",
                )
        if phase in ("mid-chunk", "last-chunk") or (phase == "receipt" and state == "available"):
            with self.client(self.cnam.name) as cnam:
                self.fetch_one(cnam, tid)  # whole, and its receipt acknowledged now
        if phase == "reaper":
            # Past its deadline: never served again, and its bytes are gone once a reaper pass has run.
            with self.client(self.cnam.name) as cnam:
                expect(tid not in {t["transfer_id"] for t in cnam.transfers("inbox")}, f"{tid}: listed after expiry")
                try:
                    download(cnam, tid)
                except LabrelayError:
                    pass
                else:
                    raise CrashFailure(f"{tid}: served past its deadline after a kill in the reaper pass")
            deadline = time.monotonic() + 30
            while tid in self.world.stored():
                expect(time.monotonic() < deadline, f"{tid}: its bytes outlived the reaper passes after the restart")
                time.sleep(0.2)

    # ------------------------------------------------------------------ random moments

    def _random_cycle(self) -> str:
        stop = threading.Event()
        drivers = [RandomDriver(self, random.Random(self.rng.random()), stop) for _ in range(2)]
        for d in drivers:
            d.start()
        time.sleep(self.rng.uniform(0.2, 1.5))
        phases = sorted({d.phase for d in drivers})
        self._kill_and_restart("random")
        stop.set()
        for d in drivers:
            d.join(60)
        return "random:" + "+".join(phases)

    # ------------------------------------------------------------------ kill, restart, check

    def _kill_and_restart(self, phase: str) -> None:
        relay = self.world.relay
        if not isinstance(relay, ReplicaSet):
            relay.kill()
            relay.start()
            self.killed["relay"] += 1
            return
        procs = {"replica-0": relay.replicas[0], "replica-1": relay.replicas[1], "worker": relay.workers[0]}
        if phase == "reaper":  # the worker runs the reaper at scale
            choices = [["worker"], ["replica-0", "worker"], list(procs)]
        elif phase == "random":
            choices = [["replica-0"], ["replica-1"], ["worker"], ["replica-0", "worker"], list(procs)]
        else:  # the request is on one replica or the other: kill both (and the worker, now and then)
            choices = [["replica-0", "replica-1"], list(procs)]
        choice = self.rng.choice(choices)
        for name in choice:
            procs[name].kill()
        for name in choice:
            procs[name].start()
        relay.rebalance()
        self.killed["+".join(choice)] += 1

    def check(self) -> None:
        """Every invariant, after a restart."""
        acknowledged, now = self.acknowledged, datetime.now(UTC)
        with self.client(self.lab.name) as lab, self.client(self.cnam.name) as cnam:
            states = {t["transfer_id"]: t for t in lab.transfers("outbox")}
            for tid, offset in acknowledged.acked.items():
                if states[tid]["state"] == "uploading":
                    expect(lab.upload_offset(tid) >= offset, f"{tid}: an acknowledged chunk was lost")
            for tid in acknowledged.complete:
                state = states[tid]["state"]
                allowed = (
                    ("available", "delivered", "expired")
                    if tid in acknowledged.short_lived
                    else ("available", "delivered")
                )
                expect(state in allowed, f"{tid}: an upload acknowledged whole is {state}")
            for tid in acknowledged.receipted:
                expect(states[tid]["state"] == "delivered", f"{tid}: an acknowledged receipt was lost")
            listed_at = datetime.now(UTC)
            for item in cnam.transfers("inbox"):
                tid = item["transfer_id"]
                manifest = acknowledged.manifests[tid]
                expect(manifest.deadline > listed_at, f"{tid}: listed past its deadline")
                if tid in acknowledged.verified:
                    continue
                try:
                    got = download(cnam, tid)
                except NotFound:  # a short-lived transfer whose deadline passed since the listing
                    expect(manifest.deadline <= datetime.now(UTC), f"{tid}: listed but not served")
                    continue
                expect(got == (manifest.sha256, manifest.size), f"{tid}: partial payload visible")
                acknowledged.verified.add(tid)
            for tid in acknowledged.short_lived | acknowledged.receipted:
                if tid not in acknowledged.closed and (
                    tid in acknowledged.receipted or acknowledged.manifests[tid].deadline <= now
                ):
                    try:
                        download(cnam, tid)
                    except LabrelayError:
                        acknowledged.closed.add(tid)
                    else:
                        raise CrashFailure(f"{tid}: served after its receipt or its deadline")
        self.verify_audit_chain()

    def verify_audit_chain(self) -> None:
        """The audit links appended since the last check link to it and to each other."""
        engine = engine_for(load_settings(self.world.relay.data))
        try:
            links = SqlAuditLog(Database(engine)).links(self.audit_seq)
            chain = verify_chain(links, start_prev=self.audit_hash, start_seq=self.audit_seq + 1)
        finally:
            engine.dispose()
        expect(chain.ok, f"audit chain broken at {chain.first_bad_seq}: {chain.problem}")
        self.audit_seq += chain.links
        self.audit_hash = chain.head

    def summary(self) -> str:
        acknowledged = self.acknowledged
        landed = ", ".join(f"{k} {v}" for k, v in sorted(self.landed.items()))
        return (
            f"{sum(self.landed.values())} kills ({landed}); killed {dict(self.killed)}; "
            f"{len(acknowledged.manifests)} transfers, {len(acknowledged.complete)} complete, "
            f"{len(acknowledged.receipted)} receipted, "
            f"{len(acknowledged.short_lived)} short-lived, {acknowledged.errors} client errors"
        )


class RandomDriver(threading.Thread):
    """A lab sending (and resuming) uploads, cnam fetching and acknowledging, at random until ``stop``; ``phase``
    says what it is doing now (what a kill interrupts)."""

    def __init__(self, crasher: Crasher, rng: random.Random, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.crasher, self.rng, self.stop = crasher, rng, stop
        self.phase = "idle"

    def run(self) -> None:
        acknowledged = self.crasher.acknowledged
        while not self.stop.is_set():
            try:
                choice = self.rng.random()
                if choice < 0.45:
                    self.send(short=self.rng.random() < 0.25)
                elif choice < 0.65:
                    self.resume()
                else:
                    self.fetch()
                acknowledged.actions += 1
            except (LabrelayError, OSError):
                acknowledged.errors += 1  # the relay is being killed: expected
                time.sleep(0.05)
            self.phase = "idle"

    def send(self, short: bool) -> None:
        c = self.crasher
        source = self.crasher.work / f"p{self.rng.randrange(1 << 30)}.bin"
        source.write_bytes(os.urandom(self.rng.randrange(1, 6) * CHUNK + self.rng.randrange(1, CHUNK)))
        with c.client(c.lab.name) as client:
            self.phase = "create"
            manifest = c.create(client, source, SHORT_TTL if short else timedelta(hours=2))
            if short:
                c.acknowledged.short_lived.add(manifest.transfer_id)
            self._upload(client, manifest, 0)

    def _upload(self, client: RelayClient, manifest: Manifest, offset: int) -> None:
        with (self.crasher.lab.ensure_outbox() / f"{manifest.transfer_id}.age").open("rb") as fh:
            while offset < manifest.size and not self.stop.is_set():
                self.phase = "last-chunk" if manifest.size - offset <= CHUNK else "mid-upload"
                offset = self.crasher.upload_chunk(client, manifest, fh, offset)

    def resume(self) -> None:
        c = self.crasher
        unfinished = [
            t for t in c.acknowledged.acked if t not in c.acknowledged.complete and t not in c.acknowledged.short_lived
        ]
        if not unfinished:
            return
        tid = self.rng.choice(unfinished)
        with c.client(c.lab.name) as client:
            self.phase = "resume"
            offset = client.upload_offset(tid)
            expect(offset >= c.acknowledged.acked.get(tid, 0), f"{tid}: acknowledged bytes lost")
            self._upload(client, c.acknowledged.manifests[tid], offset)

    def fetch(self) -> None:
        c = self.crasher
        with c.client(c.cnam.name) as client:
            self.phase = "list"
            inbox = client.transfers("inbox")
            if not inbox:
                return
            self.phase = "download"
            c.fetch_one(client, self.rng.choice(inbox)["transfer_id"], before_receipt=self._receipt)

    def _receipt(self) -> None:
        self.phase = "receipt"


def download(client: RelayClient, tid: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    for chunk in client.download(tid):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def schedule(kills: int, rng: random.Random) -> list[str]:
    """``kills`` phases: each scheduled phase in turn (so that ten kills cover each twice), then random moments."""
    scheduled = [PHASES[i % len(PHASES)] for i in range(kills - max(1, kills // 5))]
    return [*scheduled, *(["random"] * (kills - len(scheduled)))]
