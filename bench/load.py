"""Load: 200 labs at once, each sending a 1,000-record batch (the project's synthetic CSV, sealed with age to CNAM),
then CNAM fetching every one (download, hash check, age decryption, signed receipt), against:

- the embedded default: one ``labrelay serve`` on SQLite and a local directory;
- the scaled configuration: two replicas behind a round-robin TCP balancer and one worker, on a real PostgreSQL
  (Debian's) and an S3-compatible server (moto), as in the test suite;
- the same replicas and worker on PostgreSQL with payloads in a directory they share (``scaled-local``): the
  difference with ``scaled`` is the cost of the S3 server (moto: an in-memory Python mock, not a production
  object store).

Both run in the same process, one after the other, on the same batches. Every lab runs the real client code
(``labrelay.client.send.upload``: create the transfer, upload resumably) on its own connection, in its own thread;
CNAM fetches with ``labrelay.client.fetch.fetch_one`` from 200 threads. Sealing happens before the clock starts:
the figure is the relay's, not age's. Reported: throughput (transfers, records and MB per second), latency per send
and per fetch (p50, p99, max), every failure (the goal is none), and on S3 the requests the S3 server answered during
the sends and during the fetches, by kind (LIST, PUT, GET, DELETE), from moto's access log: per transfer, and the
LISTs among them (the worker's reaper pass, every ``reaper_interval``, counts too: the log does not say who asked).
Results: docs/bench/load.json.

    ./dev bench load [--labs 200] [--records 1000] [--only embedded|scaled]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.memory import OUT, WORK, machine
from labrelay.client.api import RelayClient
from labrelay.client.fetch import fetch_one
from labrelay.client.keystore import Authority, Party
from labrelay.client.policy import default_policy_text
from labrelay.client.send import seal, upload, verified_recipients
from labrelay.client.trust import TrustedDirectory
from labrelay.clock import SystemClock
from labrelay.domain.names import AUTHORITY_KEYID
from labrelay.domain.parties import Role
from labrelay.operations import init_data_dir
from labrelay.synthetic.generator import write_csv_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.pgserver import PostgresServer, _bindir
from tests.support.processes import RelayProcess
from tests.support.s3server import running_s3
from tests.support.scaled import ReplicaSet

CLOCK = SystemClock()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def _edit(config: Path, settings: dict[str, str]) -> None:
    lines = [line for line in config.read_text().splitlines() if line.split(" = ")[0] not in settings]
    config.write_text("\n".join([*lines, *(f"{k} = {v}" for k, v in settings.items())]) + "\n")


def _client(url: str, party: Party) -> RelayClient:
    return RelayClient(url, party.name, party.signing_key, CLOCK, retries=3)


_REQUEST = re.compile(r'"([A-Z]+) (/[^ ?]*)(\?[^ ]*)? HTTP/[0-9.]+" ([0-9]{3})')


def s3_kind(method: str, path: str, query: str) -> str:
    """What one S3 request of moto's access log was: list, put, get, delete (DeleteObjects too) or other."""
    on_bucket = path.strip("/").count("/") == 0
    if method == "GET" and on_bucket:
        return "list"  # ListObjectsV2, ListObjectVersions: the bucket itself, with a prefix
    if method == "POST" and "delete" in query:
        return "delete"
    return {"PUT": "put", "GET": "get", "DELETE": "delete"}.get(method, "other")


class S3Requests:
    """Counts the S3 requests moto served (its access log), by kind, between two marks."""

    def __init__(self, log: Path) -> None:
        self._log = log
        self._at = self._size()

    def _size(self) -> int:
        return self._log.stat().st_size if self._log.exists() else 0

    def take(self) -> dict[str, int]:
        """The requests since the previous ``take`` (or since this counter was made), by kind, and in all."""
        end = self._size()
        with self._log.open("rb") as fh:
            fh.seek(self._at)
            text = fh.read(end - self._at).decode("utf-8", "replace")
        self._at = end
        counts = {"list": 0, "put": 0, "get": 0, "delete": 0, "other": 0}
        for method, path, query, _status in _REQUEST.findall(text):
            if path.startswith("/moto-api"):
                continue
            counts[s3_kind(method, path, query or "")] += 1
        counts["total"] = sum(counts.values())
        return counts


def run_load(  # noqa: PLR0915
    kind: str, url: str, root: Path, labs: int, records: int, s3_log: Path | None = None
) -> dict[str, Any]:
    authority = Authority.load(root / "authority")
    with RelayClient(url, AUTHORITY_KEYID, authority.key, CLOCK, retries=0) as client:
        client.register_policy(authority.sign_policy(default_policy_text(), CLOCK.now()))

    def enrol(name: str, role: Role) -> Party:
        party = Party.create(root / "parties", name, role, None, authority.path / "authority.pub", CLOCK.now())
        envelope = authority.sign_entry(party, CLOCK.now(), timedelta(days=1))
        party.save_entry(envelope)
        with _client(url, party) as client:
            client.register_entry(envelope)
        return party

    cnam = enrol("cnam", Role.RECIPIENT)
    lab_parties = [enrol(f"lab-{i:03d}", Role.LAB) for i in range(labs)]
    sources = WORK / f"load-{records}"
    sources.mkdir(parents=True, exist_ok=True)
    states: list[tuple[Party, Path]] = []
    for i, lab in enumerate(lab_parties):
        source = sources / f"lab-{i:03d}.csv"
        if not source.exists():
            write_csv_file(source, records, seed=1000 + i, today=date(2026, 11, 29))
        with _client(url, lab) as client:
            entries = verified_recipients(lab, client, ["cnam"], CLOCK)
        (state,) = seal(lab, source, entries, timedelta(hours=6), CLOCK, record_count=records)
        states.append((lab, state))
    payload_bytes = sum(p.stat().st_size for p in sources.glob("lab-*.csv") if int(p.stem[4:]) < labs)

    failures: list[str] = []
    gate = threading.Barrier(labs)

    def timed(label: str, fn: Callable[[], object]) -> float:
        started = time.perf_counter()
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
            failures.append(f"{label}: {type(exc).__name__}: {exc}")
        return time.perf_counter() - started

    def send(item: tuple[Party, Path]) -> float:
        lab, state = item
        gate.wait()  # the 200 labs start together
        with _client(url, lab) as client:
            return timed(lab.name, lambda: upload(lab, client, state))

    requests = S3Requests(s3_log) if s3_log is not None else None
    if requests is not None:
        requests.take()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=labs) as pool:
        send_latency = list(pool.map(send, states))
    send_wall = time.perf_counter() - started
    upload_requests = requests.take() if requests is not None else None

    with _client(url, cnam) as client:
        inbox = client.transfers("inbox")
        directory = TrustedDirectory(cnam.authority, client.directory(), CLOCK.now())
    out = root / "fetched"
    out.mkdir()
    fetch_gate = threading.Barrier(len(inbox)) if inbox else None

    def fetch(listing: dict[str, Any]) -> float:
        assert fetch_gate is not None
        fetch_gate.wait()
        with _client(url, cnam) as client:
            return timed(
                f"fetch {listing['transfer_id']}", lambda: fetch_one(cnam, client, directory, listing, out, CLOCK)
            )

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, len(inbox))) as pool:
        fetch_latency = list(pool.map(fetch, inbox))
    fetch_wall = time.perf_counter() - started
    download_requests = requests.take() if requests is not None else None

    fetched = len(list(out.glob("*.csv")))
    with _client(url, cnam) as client:
        left = len(client.transfers("inbox"))
    with _client(url, lab_parties[0]) as client:
        delivered = sum(1 for t in client.transfers("outbox") if t["state"] == "delivered")
    mb = payload_bytes / 1e6
    s3: dict[str, Any] = {}
    if upload_requests is not None and download_requests is not None:
        # moto's log does not say which process asked: the worker's reaper passes (every reaper_interval) count too.
        s3 = {
            "s3_requests": {
                "upload": upload_requests,
                "download": download_requests,
                "per_transfer": round((upload_requests["total"] + download_requests["total"]) / labs, 2),
                "lists_per_transfer": round((upload_requests["list"] + download_requests["list"]) / labs, 2),
            }
        }
    return s3 | {
        "deployment": kind,
        "labs": labs,
        "records_per_lab": records,
        "transfers_sent": labs - sum(1 for f in failures if f.startswith("lab-")),
        "transfers_fetched": fetched,
        "inbox_left": left,
        "first_lab_delivered": delivered,
        "failures": failures[:20],
        "failure_count": len(failures),
        "send": {
            "wall_s": round(send_wall, 2),
            "transfers_per_s": round(labs / send_wall, 1),
            "records_per_s": round(labs * records / send_wall),
            "mb_per_s": round(mb / send_wall, 2),
            "p50_s": pct(send_latency, 0.50),
            "p99_s": pct(send_latency, 0.99),
            "max_s": round(max(send_latency), 3),
            "mean_s": round(statistics.fmean(send_latency), 3),
        },
        "fetch": {
            "wall_s": round(fetch_wall, 2),
            "transfers_per_s": round(len(inbox) / fetch_wall, 1) if inbox else 0,
            "p50_s": pct(fetch_latency, 0.50) if fetch_latency else None,
            "p99_s": pct(fetch_latency, 0.99) if fetch_latency else None,
            "max_s": round(max(fetch_latency), 3) if fetch_latency else None,
        },
    }


def embedded(root: Path, labs: int, records: int) -> dict[str, Any]:
    authority = Authority.init(root / "authority")
    init_data_dir(root / "relay", authority.path / "authority.pub")
    _edit(root / "relay" / "relay.toml", {"detect_lock_on": '"none"'})
    relay = RelayProcess(root / "relay", root / "relay.log")
    relay.start()
    try:
        return run_load("embedded", relay.url, root, labs, records)
    finally:
        relay.stop()


def scaled(root: Path, labs: int, records: int, *, s3: bool = True) -> dict[str, Any]:
    bindir = _bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    pg_root = root / "pg"
    pg = PostgresServer(bindir, pg_root)
    pg_root.mkdir(parents=True)
    os.chmod(root, 0o755)  # noqa: S103 - the postgres user must reach its cluster inside
    pg.init()
    pg.start()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "labrelay-bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "labrelay-bench")
    try:
        with running_s3() as server:
            url = pg.create_database()
            authority = Authority.init(root / "authority")
            init_data_dir(root / "relay", authority.path / "authority.pub", database_url=url)
            settings = {"background": '"worker"', "detect_lock_on": '"none"'}
            if s3:
                settings |= {
                    "payload_store": '"s3"',
                    "s3_endpoint": f'"{server.endpoint}"',
                    "s3_bucket": f'"{server.create_bucket()}"',
                }
            _edit(root / "relay" / "relay.toml", settings)
            baseline = s3_alone(server, labs, records) if s3 else None
            relays = ReplicaSet(root / "relay", replicas=2, workers=1)
            relays.start()
            try:
                log = server.log if s3 else None
                result = run_load("scaled" if s3 else "scaled-local", relays.url, root, labs, records, log)
                assert relays.balancer is not None
                result["connections_per_replica"] = relays.balancer.connections
                if baseline is not None:
                    result["s3_alone"] = baseline
                return result
            finally:
                relays.close()
    finally:
        pg.stop("immediate")


def s3_alone(server: Any, labs: int, records: int) -> dict[str, Any]:
    """The S3 server by itself, same run: each of ``labs`` threads PUTs one object the size of a lab's payload,
    then each GETs one back, all at once (what the relay asks of it, at the least, per transfer)."""
    client = server.client(timeout=120.0)
    bucket = server.create_bucket()
    source = WORK / f"load-{records}" / "lab-000.csv"
    if not source.exists():
        source.parent.mkdir(parents=True, exist_ok=True)
        write_csv_file(source, records, seed=1000, today=date(2026, 11, 29))
    size = source.stat().st_size
    body = os.urandom(size)
    gate = threading.Barrier(labs)

    def put(i: int) -> float:
        gate.wait()
        started = time.perf_counter()
        client.put_object(Bucket=bucket, Key=f"o{i}", Body=body)
        return time.perf_counter() - started

    def get(i: int) -> float:
        gate.wait()
        started = time.perf_counter()
        client.get_object(Bucket=bucket, Key=f"o{i}")["Body"].read()
        return time.perf_counter() - started

    out: dict[str, Any] = {"object_bytes": size}
    for name, fn in (("put", put), ("get", get)):
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=labs) as pool:
            latency = list(pool.map(fn, range(labs)))
        wall = time.perf_counter() - started
        out[name] = {"wall_s": round(wall, 2), "per_s": round(labs / wall, 1), "p50_s": pct(latency, 0.5)}
    client.close()
    return out


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--labs", type=int, default=200)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--only", choices=("embedded", "scaled", "scaled-local"))
    parser.add_argument("--out", type=Path, default=OUT / "load.json")
    args = parser.parse_args(argv)
    results = []

    def scaled_local(root: Path, labs: int, records: int) -> dict[str, Any]:
        return scaled(root, labs, records, s3=False)

    for kind, fn in (("embedded", embedded), ("scaled-local", scaled_local), ("scaled", scaled)):
        if args.only and args.only != kind:
            continue
        root = WORK / f"load-{kind}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        print(f"== {kind}: {args.labs} labs x {args.records} records", flush=True)
        result = fn(root, args.labs, args.records)
        print(json.dumps(result, indent=2), flush=True)
        results.append(result)
    doc = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print("| deployment | sends/s | records/s | send p50 | send p99 | fetches/s | fetch p50 | fetch p99 | failures |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        s, f = r["send"], r["fetch"]
        print(
            f"| {r['deployment']} | {s['transfers_per_s']} | {s['records_per_s']} | {s['p50_s']} s | {s['p99_s']} s "
            f"| {f['transfers_per_s']} | {f['p50_s']} s | {f['p99_s']} s | {r['failure_count']} |"
        )
    for r in results:
        if "s3_alone" in r:
            a = r["s3_alone"]
            print(
                f"S3 server alone, {r['labs']} at once: {a['put']['per_s']} PUT/s, {a['get']['per_s']} GET/s "
                f"({a['object_bytes']} bytes each)"
            )
        if "s3_requests" in r:
            q = r["s3_requests"]
            print(
                f"S3 requests per transfer: {q['per_transfer']} ({q['lists_per_transfer']} LISTs); "
                f"upload {q['upload']}, download {q['download']}"
            )
    if any(r["failure_count"] or r["transfers_fetched"] != r["labs"] for r in results):
        raise SystemExit("load: some transfers failed or were not fetched")
