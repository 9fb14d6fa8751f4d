"""Crash at random: the relay (and, at scale, a random choice of replicas and worker) killed with SIGKILL at 50
random moments while two drivers send, resume and fetch, on each configuration; every invariant of
tests/integration/test_crash.py checked after each restart (tests/support/crash.py). The test suite kills on a
schedule (each phase twice, then two random moments); this is the long random run, and it prints where the kills
landed (what each driver was doing: create, mid-upload, last-chunk, resume, list, download, receipt, idle), so
that one can see the random moments cover the phases. Results: docs/bench/crash.json.

    ./dev bench crash [--kills 50] [--only embedded|scaled] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import os
import random  # noqa: TID251 - seeded, reproducible kill moments; nothing secret
import shutil
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.memory import OUT, WORK, machine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.crash import REAPER_INTERVAL, Crasher
from tests.support.pgserver import PostgresServer, _bindir
from tests.support.s3server import running_s3
from tests.support.world import RelayFactory, Scaled, make_world


def run(root: Path, kills: int, seed: int, scaled: Scaled | None) -> dict[str, Any]:
    settings = {"reaper_interval": f'"{REAPER_INTERVAL:.0f}s"', "detect_lock_on": '"none"'}
    factory = RelayFactory()
    try:
        world = make_world(root / "world", factory, settings=settings, scaled=scaled)
        work = root / "work"
        work.mkdir()
        crasher = Crasher(world, random.Random(seed), work)
        histogram: Counter[str] = Counter()
        started = time.monotonic()
        for i in range(kills):
            landed = crasher.cycle("random")
            for phase in landed.removeprefix("random:").split("+"):
                histogram[phase] += 1
            print(f"  kill {i + 1}/{kills}: drivers in {landed.removeprefix('random:')}", flush=True)
        return {
            "deployment": "scaled" if scaled else "embedded",
            "kills": kills,
            "seconds": round(time.monotonic() - started, 1),
            "driver_phases_at_kill": dict(sorted(histogram.items())),
            "processes_killed": dict(crasher.killed),
            "summary": crasher.summary(),
        }
    finally:
        factory.close()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench crash", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--only", choices=("embedded", "scaled"))
    parser.add_argument("--seed", type=int, default=20261129)
    parser.add_argument("--out", type=Path, default=OUT / "crash.json")
    args = parser.parse_args(argv)
    results = []
    if args.only != "scaled":
        root = WORK / "crash-embedded"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        print(f"== embedded: {args.kills} random kills", flush=True)
        results.append(run(root, args.kills, args.seed, None))
    if args.only != "embedded":
        bindir = _bindir()
        if bindir is None:
            raise SystemExit("PostgreSQL is not installed (Debian: apt-get install postgresql)")
        root = WORK / "crash-scaled"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        os.chmod(root, 0o755)  # noqa: S103 - the postgres user must reach its cluster inside
        pg = PostgresServer(bindir, root / "pg")
        pg.init()
        pg.start()
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "labrelay-bench")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "labrelay-bench")
        try:
            with running_s3() as s3:
                scaled = Scaled(pg.create_database(), s3.endpoint, s3.create_bucket(), pg, s3)
                print(f"== scaled: {args.kills} random kills", flush=True)
                results.append(run(root, args.kills, args.seed, scaled))
        finally:
            pg.stop("immediate")
    for result in results:
        print(f"{result['deployment']}: {result['summary']}")
        print(
            "  driver phases at the kills: " + ", ".join(f"{k} {v}" for k, v in result["driver_phases_at_kill"].items())
        )
    doc = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
