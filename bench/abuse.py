"""What an abusive lab and outsiders cost legitimate parties: signed-request latency, admin command latency and the
relay's memory, idle and under the attack of tests/support/abuse.py (45 stalled uploads, 150 idle and 150 half-sent
connections, 100 KB signature headers, a console sign-in flood), in one run on one machine. Also what one refusal of an
oversized signature header costs, against one ordinary signed request.

Figures: docs/threat-model.md, "Denial of service", and docs/bench/abuse.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.support.abuse import Abuse, admin_command, connect, uploading_transfer
from tests.support.world import RelayFactory, World, make_world

from bench.memory import OUT, WORK, machine
from labrelay.client.api import RelayClient
from labrelay.clock import SystemClock
from labrelay.domain.admin import AdminAction
from labrelay.domain.parties import Role

SAMPLES = 60


def latencies(world: World, party: str, n: int = SAMPLES) -> list[float]:
    """Seconds per signed inbox listing, ``n`` times on one keep-alive connection."""
    key = world.parties[party].signing_key
    out = []
    with RelayClient(world.url, party, key, SystemClock(), retries=0, timeout=60) as client:
        for _ in range(n):
            started = time.perf_counter()
            client.transfers("inbox")
            out.append(time.perf_counter() - started)
    return out


def admin_latency(world: World) -> float:
    took = [admin_command(world, action)[1] for action in (AdminAction.FREEZE, AdminAction.UNFREEZE)]
    return max(took)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def oversized_refusal(url: str, n: int = 200) -> float:
    """Seconds per refusal of a 100 KB Signature-Input, one request per connection as an attacker sends them (the
    relay answers 431, or 400 when h11 meets the section in pieces, and closes: a reset counts as a refusal)."""
    host = urlsplit(url).netloc
    head = (
        f"GET /v1/transfers?box=inbox HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n".encode()
        + b'Signature-Input: labrelay=("@method");nonce="'
        + b"n" * 100_000
        + b'"\r\nSignature: labrelay=:AA:\r\n\r\n'
    )
    started = time.perf_counter()
    for _ in range(n):
        with connect(url) as sock:
            try:
                sock.sendall(head)
                answer = sock.recv(64)
            except ConnectionResetError:
                answer = b""
        assert answer[9:12] in (b"431", b"400", b""), answer
    return (time.perf_counter() - started) / n


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(ordered[int(len(ordered) * 0.95) - 1] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def _attack(attack: Abuse, seconds: float, results: multiprocessing.Queue[dict[str, dict[str, int]]]) -> None:
    attack.start()
    time.sleep(seconds)
    attack.stop()
    results.put({kind: dict(counter) for kind, counter in sorted(attack.counts.items())})


def under(world: World, attack: Abuse, seconds: float, pid: int) -> dict[str, Any]:
    """Latencies and memory while ``attack`` runs for ``seconds`` in a process of its own (its threads must not
    share this process's interpreter lock with the requests measured); what the attack met."""
    results: multiprocessing.Queue[dict[str, dict[str, int]]] = multiprocessing.Queue()
    attacker = multiprocessing.get_context("fork").Process(target=_attack, args=(attack, seconds, results))
    attacker.start()
    try:
        time.sleep(min(5.0, seconds / 3))  # the attack holds what it can
        signed = latencies(world, "cnam")
        admin = admin_latency(world)
        rss = rss_mb(pid)
        counts = results.get(timeout=seconds + 60)
    finally:
        attacker.join(timeout=60)
    return {
        **summary(signed),
        "p50_ratio_to_idle": 0.0,
        "admin_ms": round(admin * 1000),
        "rss_mb": round(rss, 1),
        "attack": counts,
        "_p50": statistics.median(signed),
    }


def run(root: Path, seconds: float) -> dict[str, Any]:
    factory = RelayFactory()
    try:
        world = make_world(root, factory)
        world.add("ops-admin", Role.ADMIN)
        pid = int(json.loads(world.relay.ready.read_text())["pid"])
        transfer_id, ciphertext = uploading_transfer(world, root)
        latencies(world, "cnam", 10)  # warm up
        idle_signed = latencies(world, "cnam")
        idle = {**summary(idle_signed), "admin_ms": round(admin_latency(world) * 1000), "rss_mb": round(rss_mb(pid), 1)}
        ordinary = statistics.median(latencies(world, "cnam", 200))
        refusal = oversized_refusal(world.url)
        lab = world.parties["lab-paris-01"]
        scenarios = {}
        for name, kinds in (("stalled_uploads", ("slow-senders",)), ("everything_at_once", Abuse.kinds)):
            attack = Abuse(world.url, lab.name, lab.signing_key, transfer_id, ciphertext[:4096], kinds=kinds)
            result = under(world, attack, seconds, pid)
            result["p50_ratio_to_idle"] = round(result.pop("_p50") / statistics.median(idle_signed), 2)
            scenarios[name] = result
        return {
            "measured": datetime.now(UTC).strftime("%Y-%m-%d"),
            "machine": machine(),
            "attack_seconds": seconds,
            "idle": idle,
            **scenarios,
            "oversized_refusal_ms": round(refusal * 1000, 2),
            "ordinary_signed_request_ms": round(ordinary * 1000, 2),
            "refusal_to_request_ratio": round(refusal / ordinary, 2),
        }
    finally:
        factory.close()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench abuse", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="How long the attack runs.")
    parser.add_argument("--out", type=Path, default=OUT / "abuse.json")
    args = parser.parse_args(argv)
    root = WORK / "abuse"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    result = run(root, args.seconds)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
