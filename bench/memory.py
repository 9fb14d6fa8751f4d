"""Peak memory of send and fetch for a 1.4-million-record batch (about 300 MB), on each side.

Every process runs under ``/usr/bin/time -v`` (GNU time), whose "Maximum resident set size" is the figure:
the relay (``labrelay serve``), the sender (``labrelay send --as-is``: the file whole, unparsed) and the recipient
(``labrelay fetch``). The batch is made by the project's generator and cached under bench/work/. Results:
docs/bench/memory.json, and a table for docs/performance.md printed on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from labrelay.client.api import RelayClient
from labrelay.client.keystore import Authority, Party
from labrelay.client.policy import default_policy_text
from labrelay.clock import SystemClock
from labrelay.domain.names import AUTHORITY_KEYID
from labrelay.domain.parties import Role
from labrelay.operations import init_data_dir
from labrelay.synthetic.generator import write_csv_file

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "work"
OUT = ROOT / "docs" / "bench"
TIME = "/usr/bin/time"
GOAL_MB = 300


def machine() -> dict[str, object]:
    """What a benchmark's figures were measured on, recorded beside them."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.platform()}


def parse_time(text: str) -> dict[str, float]:
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    if not rss or not wall:
        raise RuntimeError(f"GNU time output not understood:\n{text[-2000:]}")
    parts = [float(p) for p in wall.group(1).split(":")]
    seconds = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    return {"peak_rss_mb": round(int(rss.group(1)) / 1024, 1), "wall_s": round(seconds, 2)}


def timed(args: list[str], log: Path) -> dict[str, float]:
    proc = subprocess.run([TIME, "-v", *args], capture_output=True, text=True, check=False)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{args[2:4]} failed ({proc.returncode}); see {log}")
    return parse_time(proc.stderr)


class TimedRelay:
    """``labrelay serve`` on a free loopback port under GNU time, whose figures for the relay are read when it stops."""

    def __init__(self, run_dir: Path) -> None:
        ready = run_dir / "ready.json"
        self.log = run_dir / "relay.time.log"
        serve = [sys.executable, "-m", "labrelay", "--quiet", "serve", "--data", str(run_dir / "relay")]
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [TIME, "-v", *serve, "--port", "0", "--ready-file", str(ready)], stdout=log, stderr=subprocess.STDOUT
            )
        while not ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(self.log.read_text()[-3000:])
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        self.url: str = info["url"]
        self.pid = int(info["pid"])  # the server, under GNU time

    def stop(self) -> dict[str, float]:
        """Ask the server to stop (GNU time reports when it exits); its wall time and peak memory."""
        os.kill(self.pid, signal.SIGTERM)
        self.proc.wait(timeout=60)
        return parse_time(self.log.read_text())


def batch(records: int, work: Path = WORK) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"results-{records}.csv"
    if not path.exists():
        print(f"generating {records} synthetic records into {path} …", file=sys.stderr)
        write_csv_file(path, records, seed=2021, today=date(2026, 1, 15))
    return path


def run(records: int) -> dict[str, Any]:
    if not Path(TIME).exists():
        sys.exit("GNU time is needed: apt-get install time")
    source = batch(records)
    run_dir = WORK / "memory-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    clock = SystemClock()
    authority = Authority.init(run_dir / "authority")
    init_data_dir(run_dir / "relay", authority.path / "authority.pub")
    relay = TimedRelay(run_dir)
    url, server_pid = relay.url, relay.pid
    idle_mb = _rss_mb(server_pid)
    with RelayClient(url, AUTHORITY_KEYID, authority.key, clock) as client:  # CNAM may receive unparsed files
        client.register_policy(authority.sign_policy(default_policy_text(), clock.now()))
    parties = {}
    for name, role in (("lab-bench", Role.LAB), ("cnam", Role.RECIPIENT)):
        party = Party.create(run_dir / "parties", name, role, None, authority.path / "authority.pub", clock.now())
        envelope = authority.sign_entry(party, clock.now(), timedelta(days=1))
        party.save_entry(envelope)
        with RelayClient(url, name, party.signing_key, clock) as client:
            client.register_entry(envelope)
        parties[name] = party
    cli = [sys.executable, "-m", "labrelay", "--quiet"]
    lab = str(parties["lab-bench"].path)
    try:
        send = timed(
            [*cli, "send", str(source), "--as-is", "--to", "cnam", "--as", lab, "--server", url],
            run_dir / "send.time.log",
        )
        fetch = timed(
            [*cli, "fetch", "--as", str(parties["cnam"].path), "--server", url, "--out", str(run_dir / "out")],
            run_dir / "fetch.time.log",
        )
    finally:
        relay_stats = relay.stop()
    [output] = list((run_dir / "out").glob("*.csv"))
    identical = output.stat().st_size == source.stat().st_size and _same(output, source)
    result = {
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "batch": {"records": records, "bytes": source.stat().st_size},
        "relay": {**relay_stats, "idle_rss_mb": idle_mb},
        "send": send,
        "fetch": fetch,
        "goal_peak_rss_mb": GOAL_MB,
        "output_identical": identical,
        "met": all(s["peak_rss_mb"] < GOAL_MB for s in (relay_stats, send, fetch)) and identical,
    }
    shutil.rmtree(run_dir / "out", ignore_errors=True)
    return result


def _rss_mb(pid: int) -> float:
    """Current resident memory of a process, from /proc (the relay's baseline before any transfer)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _same(a: Path, b: Path) -> bool:
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench memory", description=__doc__)
    parser.add_argument("--records", type=int, default=1_400_000)
    args = parser.parse_args(argv)
    result = run(args.records)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "memory.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| process | peak RSS (MB) | wall (s) |\n|---|---|---|")
    for side in ("relay", "send", "fetch"):
        print(f"| {side} | {result[side]['peak_rss_mb']} | {result[side]['wall_s']} |")
    batch_info = result["batch"]
    print(f"\nrelay at rest: {result['relay']['idle_rss_mb']} MB")
    print(
        f"batch: {batch_info['records']} records, {batch_info['bytes'] / 1e6:.0f} MB; goal < {GOAL_MB} MB each; "
        f"met: {result['met']}; output identical: {result['output_identical']}"
    )
