"""Crash safety: the relay (and, at scale, the worker) is killed with SIGKILL at 50 random moments while labs upload,
a recipient downloads and sends receipts, and the reaper expires and deletes short-lived transfers. After each
restart:

- no partial payload is visible: everything a recipient can list downloads whole and matches its signed hash;
- no acknowledged upload is lost: every chunk the relay acknowledged is still counted, every upload it
  acknowledged as complete is still there (or delivered);
- an acknowledged receipt stays acknowledged: the transfer is delivered and never served again;
- nothing past its deadline is served;
- ``audit verify`` passes.

On the embedded default the one relay process is killed; on the scaled configuration a random choice of replica,
replicas, worker, or all of them.
"""

from __future__ import annotations

import hashlib
import os
import random  # noqa: TID251 - seeded, reproducible kill moments; nothing secret
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from labrelay.client.files import read_json
from labrelay.client.keystore import Party
from labrelay.client.send import seal, verified_recipients
from labrelay.clock import SystemClock
from labrelay.crypto.envelopes import envelope_payload
from labrelay.domain.transfers import Manifest, Receipt, ReceiptStatus
from labrelay.errors import LabrelayError, NotFound
from labrelay.runtime import audit_verify
from tests.conftest import Scaled, World, make_world
from tests.scaled import ReplicaSet

KILLS = int(os.environ.get("LABRELAY_CRASH_KILLS", "50"))
CHUNK = 48 * 1024


@dataclass
class Ledger:
    """What the relay acknowledged to the test's clients, across every cycle."""

    manifests: dict[str, Manifest] = field(default_factory=dict)
    acked: dict[str, int] = field(default_factory=dict)  # transfer id → highest acknowledged upload offset
    complete: set[str] = field(default_factory=set)  # uploads acknowledged whole
    receipted: set[str] = field(default_factory=set)  # receipts acknowledged
    short_lived: set[str] = field(default_factory=set)
    verified: set[str] = field(default_factory=set)  # served whole after a restart: published bytes never change
    closed: set[str] = field(default_factory=set)  # refused after their receipt or deadline: never served again
    actions: int = 0
    errors: int = 0


class Driver(threading.Thread):
    """A lab sending (and resuming) uploads, cnam fetching and acknowledging, until ``stop``."""

    def __init__(self, world: World, ledger: Ledger, rng: random.Random, stop: threading.Event, work: Path) -> None:
        super().__init__(daemon=True)
        self.world, self.ledger, self.rng, self.stop, self.work = world, ledger, rng, stop, work
        self.lab: Party = world.parties["lab-paris-01"]
        self.cnam: Party = world.parties["cnam"]

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                choice = self.rng.random()
                if choice < 0.45:
                    self.send(short=self.rng.random() < 0.25)
                elif choice < 0.65:
                    self.resume()
                else:
                    self.fetch()
                self.ledger.actions += 1
            except (LabrelayError, OSError):
                self.ledger.errors += 1  # the relay is being killed: expected
                time.sleep(0.05)

    def send(self, short: bool) -> None:
        source = self.work / f"p{self.rng.randrange(1 << 30)}.bin"
        source.write_bytes(os.urandom(self.rng.randrange(1, 6) * CHUNK + self.rng.randrange(1, CHUNK)))
        entry = next(e for e in self._directory() if e.name == "cnam")
        ttl = timedelta(seconds=3) if short else timedelta(hours=2)
        (state,) = seal(self.lab, source, [entry], ttl, SystemClock())
        envelope = read_json(state)["manifest"]
        manifest = Manifest.from_payload(envelope_payload(envelope))
        self.ledger.manifests[manifest.transfer_id] = manifest
        if short:
            self.ledger.short_lived.add(manifest.transfer_id)
        with self.world.client(self.lab.name) as client:
            client.create_transfer(envelope)
            self.ledger.acked.setdefault(manifest.transfer_id, 0)
            self._upload(client, manifest, 0)

    def _directory(self) -> list:
        with self.world.client(self.lab.name) as client:
            return verified_recipients(self.lab, client, ["cnam"], SystemClock())

    def _upload(self, client, manifest: Manifest, offset: int) -> None:
        spool = self.lab.outbox / f"{manifest.transfer_id}.age"
        with spool.open("rb") as fh:
            while offset < manifest.size and not self.stop.is_set():
                offset = client.upload_region(manifest.transfer_id, fh, offset, min(CHUNK, manifest.size - offset))
                self.ledger.acked[manifest.transfer_id] = max(self.ledger.acked.get(manifest.transfer_id, 0), offset)
        if offset == manifest.size:
            self.ledger.complete.add(manifest.transfer_id)

    def resume(self) -> None:
        unfinished = [t for t in self.ledger.acked if t not in self.ledger.complete]
        unfinished = [t for t in unfinished if t not in self.ledger.short_lived]
        if not unfinished:
            return
        tid = self.rng.choice(unfinished)
        with self.world.client(self.lab.name) as client:
            offset = client.upload_offset(tid)
            assert offset >= self.ledger.acked.get(tid, 0), f"{tid}: acknowledged bytes lost"
            self._upload(client, self.ledger.manifests[tid], offset)

    def fetch(self) -> None:
        with self.world.client(self.cnam.name) as client:
            inbox = client.transfers("inbox")
            if not inbox:
                return
            item = self.rng.choice(inbox)
            tid = item["transfer_id"]
            manifest = self.ledger.manifests[tid]
            digest, size = _download(client, tid)
            assert (size, digest) == (manifest.size, manifest.sha256), f"{tid}: served a partial or wrong payload"
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
            client.send_receipt(tid, self.cnam.sign(receipt.to_payload()))
            self.ledger.receipted.add(tid)


def _download(client, tid: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    for chunk in client.download(tid):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _check(world: World, ledger: Ledger) -> None:
    now = datetime.now(UTC)
    with world.client("lab-paris-01") as lab, world.client("cnam") as cnam:
        states = {t["transfer_id"]: t for t in lab.transfers("outbox")}
        for tid, offset in ledger.acked.items():
            state = states[tid]["state"]
            if state == "uploading":
                assert lab.upload_offset(tid) >= offset, f"{tid}: an acknowledged chunk was lost"
        for tid in ledger.complete:
            state = states[tid]["state"]
            if tid in ledger.short_lived:
                assert state in ("available", "delivered", "expired"), (tid, state)
            else:
                assert state in ("available", "delivered"), f"{tid}: an acknowledged upload is {state}"
        for tid in ledger.receipted:
            assert states[tid]["state"] == "delivered", f"{tid}: an acknowledged receipt was lost"
        listed_at = datetime.now(UTC)
        for item in cnam.transfers("inbox"):
            tid = item["transfer_id"]
            manifest = ledger.manifests[tid]
            assert manifest.deadline > listed_at, f"{tid}: listed past its deadline"
            if tid in ledger.verified:
                continue
            try:
                got = _download(cnam, tid)
            except NotFound:  # a short-lived transfer whose deadline passed since the listing
                assert manifest.deadline <= datetime.now(UTC), f"{tid}: listed but not served"
                continue
            assert got == (manifest.sha256, manifest.size), f"{tid}: partial payload visible"
            ledger.verified.add(tid)
        for tid in ledger.short_lived | ledger.receipted:
            if tid not in ledger.closed and (tid in ledger.receipted or ledger.manifests[tid].deadline <= now):
                with pytest.raises(LabrelayError):
                    _download(cnam, tid)
                ledger.closed.add(tid)
    report = audit_verify(world.relay.data, SystemClock())
    assert report.ok, report


def _kill_and_restart(world: World, rng: random.Random) -> str:
    relay = world.relay
    if not isinstance(relay, ReplicaSet):
        relay.kill()
        relay.start()
        return "relay"
    procs = {"replica-0": relay.replicas[0], "replica-1": relay.replicas[1], "worker": relay.workers[0]}
    choice = rng.choice([["replica-0"], ["replica-1"], ["worker"], ["replica-0", "worker"], list(procs)])
    for name in choice:
        procs[name].kill()
    for name in choice:
        procs[name].start()
    relay.rebalance()
    return "+".join(choice)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 50 kill-and-restart cycles; the scaled one restarts replicas and workers
@pytest.mark.threat("T21")
def test_kill_at_random_moments(tmp_path: Path, relay_factory, deployment: Scaled | None) -> None:
    settings = {"reaper_interval": '"1s"', "detect_lock_on": '"none"'}
    world = make_world(tmp_path / "world", relay_factory, settings=settings, scaled=deployment)
    ledger = Ledger()
    rng = random.Random(20261129)
    work = tmp_path / "work"
    work.mkdir()
    killed: list[str] = []
    for _cycle in range(KILLS):
        stop = threading.Event()
        drivers = [Driver(world, ledger, random.Random(rng.random()), stop, work) for _ in range(2)]
        for d in drivers:
            d.start()
        time.sleep(rng.uniform(0.2, 1.5))
        killed.append(_kill_and_restart(world, rng))
        stop.set()
        for d in drivers:
            d.join(60)
        _check(world, ledger)
    # The kills landed on real work: uploads acknowledged in part and whole, receipts, expiries.
    assert len(ledger.complete) >= KILLS // 2, ledger
    assert ledger.receipted
    assert ledger.short_lived
    assert any(t not in ledger.complete for t in ledger.acked), "no kill landed mid-upload"
    print(
        f"{KILLS} kills ({', '.join(sorted(set(killed)))}): {len(ledger.manifests)} transfers, "
        f"{len(ledger.complete)} complete, {len(ledger.receipted)} receipted, {ledger.errors} client errors"
    )
