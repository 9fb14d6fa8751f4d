"""Post-quantum keys: what they cost (issue 21). One run, one machine, two measurements.

- ``transfer``: the 1.4-million-record batch sent and fetched with every party's age key hybrid post-quantum
  (ML-KEM-768 + X25519, ``age1pq1…``, the default), and the same with every key classic X25519 (``age1…``). Two
  worlds side by side: each its own authority, its own relay (``labrelay serve`` on the embedded default, under GNU
  time), the signed default policy and the same 22 parties (lab, DPO, CNAM, SpF, an ARS per region). A round is
  ``labrelay send`` (validate, route and minimise, seal the 20 payloads and the DPO's ledger, sign, upload), then
  ``labrelay fetch`` by each of the 20 recipients in turn, each in its own process, as in ``bench compare``. Each
  world goes first in turn from round to round, so that the machine's drift falls on all. Figures are medians of
  ``--repeat`` rounds; the ratio is hybrid / classic of the medians of send + fetch (issue 21's goal: within 5%),
  each round's own ratio beside it. Wall time on a shared 2-core machine varies by ±25% from run to run, more than
  the effect looked for; so the CPU time of every process of a round is measured too (GNU time's user + system for
  send and each fetch, the relay's from /proc before and after the round) and its ratio given beside. ``--control``
  adds a second classic world: its ratio to the first, two worlds alike, is the noise floor. A fetch that succeeds
  shows which key sealed the payload: an identity opens only the stanzas of its own type, and a file never mixes
  the two.
- ``age``: the age format alone, on ``--age-mb`` MiB of random bytes (what gzip output looks like to a cipher), file
  to file, each measurement in a fresh process. labrelay's reader and writer (crypto/age_format.py through
  crypto/age_stream.py, which hashes the ciphertext with SHA-256 as it passes: the hash the sender signs and the
  recipient checks) to a classic and to a hybrid recipient, against pyrage 1.x (Rust, what age_stream used before
  issue 21) through the same hashing wrappers as it was used; and each without the hashing ("bare"). Throughput is
  the size over the time of the call alone (not the interpreter's start-up), in wall time and in CPU time. Memory:
  the peak resident set size during the call minus the resident size before it, and tracemalloc's peak in a
  separate run (tracing slows the calls; pyrage's own buffers are Rust's and invisible to it). Each implementation
  decrypts the other's ciphertext, and every plaintext is checked against the source's SHA-256. The per-payload
  cost of the header (the KEM) is measured in-process: sealing and opening an empty payload, classic and hybrid.

Results: ``OUT/pq.json`` (default docs/bench/); the tables for docs/performance.md are printed. Run it with
``./dev bench pq`` (``--records N`` for a smaller batch, ``--only transfer|age``, ``--age-mb N``).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.breach import _enrol
from bench.compare import _records
from bench.memory import OUT, WORK, TimedRelay, batch, machine, timed
from labrelay.client.api import RelayClient
from labrelay.client.keystore import Authority, Party
from labrelay.client.policy import default_policy_text
from labrelay.clock import SystemClock
from labrelay.crypto.keys import AgeIdentity
from labrelay.operations import init_data_dir

GOAL_RATIO = 1.05
CLI = [sys.executable, "-m", "labrelay", "--quiet"]
KINDS = ("classic", "hybrid")
READ = 1 << 20  # what age_stream.encrypt reads from its source at a time


# ------------------------------------------------------------------ send + fetch, hybrid against classic


def _cpu_s(log: Path) -> float:
    """User + system CPU seconds of a process, from its GNU time log."""
    text = log.read_text()
    found = [re.search(rf"{what} time \(seconds\): ([\d.]+)", text) for what in ("User", "System")]
    if not all(found):
        raise RuntimeError(f"GNU time output not understood in {log}")
    return sum(float(m.group(1)) for m in found if m)


def _relay_cpu_s(pid: int) -> float:
    """CPU seconds the relay has used so far (its own and its reaped children's), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _policy(kind: str) -> str:
    """The default policy; for the classic world, without a post-quantum requirement if it has one."""
    text = default_policy_text()
    return text if kind == "hybrid" else re.sub(r"(?m)^(\s*require_pq\s*=\s*)true\b", r"\1false", text)


class World:
    """An authority, a relay and the 22 parties, every age key of one kind."""

    def __init__(self, kind: str, run_dir: Path) -> None:
        self.kind = kind
        self.run_dir = run_dir
        run_dir.mkdir(parents=True)
        authority = Authority.init(run_dir / "authority")
        init_data_dir(run_dir / "relay", authority.path / "authority.pub")
        self.relay = TimedRelay(run_dir)
        self.url = self.relay.url
        try:
            clock = SystemClock()
            with RelayClient(self.url, "@authority", authority.key, clock) as client:
                client.register_policy(authority.sign_policy(_policy(kind), clock.now()))
            self.parties: dict[str, Party] = _enrol(run_dir, self.url, authority, classic=kind == "classic")
            wrong = [n for n, p in self.parties.items() if p.age_recipient.startswith("age1pq1") != (kind == "hybrid")]
            if wrong:
                raise RuntimeError(f"{kind} world: {', '.join(wrong)} enrolled with the other kind of key")
        except BaseException:
            self.relay.stop()
            raise
        self.rounds = 0

    @property
    def recipients(self) -> dict[str, Party]:
        return {n: p for n, p in self.parties.items() if n not in ("lab-bench", "dpo")}

    def send_fetch(self, source: Path) -> dict[str, Any]:
        """One send of the batch, then every recipient's fetch in turn."""
        n = self.rounds
        self.rounds += 1
        again = ["--again"] if n else []  # the same file is otherwise recognised as already sent
        lab = str(self.parties["lab-bench"].path)
        relay_cpu = _relay_cpu_s(self.relay.pid)
        send_log = self.run_dir / f"send-{n}.log"
        send = timed([*CLI, "send", str(source), "--as", lab, "--server", self.url, *again], send_log)
        send["cpu_s"] = _cpu_s(send_log)
        fetches: dict[str, dict[str, Any]] = {}
        for name, party in self.recipients.items():
            out = self.run_dir / "fetched" / name
            log = self.run_dir / f"fetch-{n}-{name}.log"
            fetches[name] = timed(
                [*CLI, "fetch", "--as", str(party.path), "--server", self.url, "--out", str(out)], log
            )
            fetches[name]["cpu_s"] = _cpu_s(log)
            fetches[name]["records"] = _records(out)
            shutil.rmtree(out)
        relay_cpu = _relay_cpu_s(self.relay.pid) - relay_cpu
        fetch_s = round(sum(f["wall_s"] for f in fetches.values()), 2)
        fetch_cpu = sum(f["cpu_s"] for f in fetches.values())
        return {
            "send": send,
            "fetch": {
                "wall_s": fetch_s,
                "cpu_s": round(fetch_cpu, 2),
                "peak_rss_mb": max(f["peak_rss_mb"] for f in fetches.values()),
                "records_delivered": sum(f["records"] for f in fetches.values()),
                "each_s": {name: f["wall_s"] for name, f in fetches.items()},
            },
            "send_fetch_s": round(send["wall_s"] + fetch_s, 2),
            "relay_cpu_s": round(relay_cpu, 2),
            # CPU time of every process of the round, the relay's included: what the keys cost in work, far less
            # sensitive than wall time to other load on the machine.
            "cpu_s": round(send["cpu_s"] + fetch_cpu + relay_cpu, 2),
        }


def _median(values: list[float]) -> float:
    return round(float(statistics.median(values)), 2)


def _ratios(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """World ``a`` over world ``b``: of the medians, and round by round."""
    pairs = list(zip(a["each_round"], b["each_round"], strict=True))
    return {
        "send_fetch": round(a["send_fetch_s"] / b["send_fetch_s"], 3),
        "send": round(a["send_s"] / b["send_s"], 3),
        "fetch": round(a["fetch_s"] / b["fetch_s"], 3),
        "send_fetch_each_round": [round(x["send_fetch_s"] / y["send_fetch_s"], 3) for x, y in pairs],
        "cpu": round(a["cpu_s"] / b["cpu_s"], 3),
        "cpu_each_round": [round(x["cpu_s"] / y["cpu_s"], 3) for x, y in pairs],
    }


def transfer(source: Path, run_dir: Path, repeat: int, control: bool) -> dict[str, Any]:
    """Send + fetch in each world, ``repeat`` rounds; with ``control``, a second classic world too, whose ratio to
    the first (two worlds alike) is the noise floor the hybrid one is read against."""
    shutil.rmtree(run_dir, ignore_errors=True)
    labels = [*KINDS, *(["classic_control"] if control else [])]
    worlds: dict[str, World] = {}
    rounds: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    try:
        for label in labels:
            worlds[label] = World(label.removesuffix("_control"), run_dir / label)
        for n in range(repeat):
            # Each world goes first in turn, so that a drift of the machine's speed falls on all of them.
            for label in labels[n % len(labels) :] + labels[: n % len(labels)]:
                print(f"round {n + 1}/{repeat}: {label} send + fetch …", file=sys.stderr)
                rounds[label].append(worlds[label].send_fetch(source))
    finally:
        relays = {label: world.relay.stop() for label, world in worlds.items()}
    delivered = {r["fetch"]["records_delivered"] for runs in rounds.values() for r in runs}
    if len(delivered) != 1:
        raise RuntimeError(f"the rounds delivered different numbers of records: {sorted(delivered)}")
    result: dict[str, Any] = {"records_delivered": delivered.pop(), "rounds": repeat}
    for label in labels:
        runs = rounds[label]
        result[label] = {
            "recipient_prefix": "age1pq1" if label == "hybrid" else "age1 (X25519)",
            "send_s": _median([r["send"]["wall_s"] for r in runs]),
            "fetch_s": _median([r["fetch"]["wall_s"] for r in runs]),
            "send_fetch_s": _median([r["send_fetch_s"] for r in runs]),
            "send_cpu_s": _median([r["send"]["cpu_s"] for r in runs]),
            "fetch_cpu_s": _median([r["fetch"]["cpu_s"] for r in runs]),
            "relay_cpu_s": _median([r["relay_cpu_s"] for r in runs]),
            "cpu_s": _median([r["cpu_s"] for r in runs]),
            "send_peak_rss_mb": max(r["send"]["peak_rss_mb"] for r in runs),
            "fetch_peak_rss_mb": max(r["fetch"]["peak_rss_mb"] for r in runs),
            "relay_peak_rss_mb": relays[label]["peak_rss_mb"],
            "each_round": [
                {
                    "send_s": r["send"]["wall_s"],
                    "fetch_s": r["fetch"]["wall_s"],
                    "send_fetch_s": r["send_fetch_s"],
                    "cpu_s": r["cpu_s"],
                    "send_cpu_s": r["send"]["cpu_s"],
                    "fetch_cpu_s": r["fetch"]["cpu_s"],
                    "relay_cpu_s": r["relay_cpu_s"],
                }
                for r in runs
            ],
        }
    result["ratio"] = _ratios(result["hybrid"], result["classic"])
    if control:
        result["control_ratio"] = _ratios(result["classic_control"], result["classic"])
        result["hybrid_over_control"] = _ratios(result["hybrid"], result["classic_control"])
    result["met"] = result["ratio"]["send_fetch"] <= GOAL_RATIO
    result["met_cpu"] = result["ratio"]["cpu"] <= GOAL_RATIO
    shutil.rmtree(run_dir)
    return result


# ------------------------------------------------------------------ the age format: ours against pyrage


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(op: str, impl: str, key: Path, src: Path, dst: Path, trace: bool) -> dict[str, Any]:
    """Runs in the measured process: one encryption or decryption of ``src`` into ``dst``."""
    import tracemalloc  # noqa: PLC0415 - only the child traces

    from labrelay.crypto import age_format, age_stream  # noqa: PLC0415

    [identity] = AgeIdentity.load_all(key)
    if impl.startswith("pyrage"):
        import pyrage  # noqa: PLC0415 - optional: what age_stream used before issue 21

        native = pyrage.x25519.Identity.from_str(identity.secret)
    before = _status_mb("VmRSS")
    if trace:
        tracemalloc.start()
    started, cpu = time.perf_counter(), time.process_time()
    with src.open("rb") as source, dst.open("wb") as sink:
        if op == "encrypt" and impl == "ours":
            age_stream.encrypt(source, sink, [identity.recipient])
        elif op == "encrypt" and impl == "ours-bare":
            writer = age_format.Writer(sink, [identity.recipient])
            while block := source.read(READ):
                writer.write(block)
            writer.close()
        elif op == "encrypt" and impl == "pyrage":  # as age_stream.encrypt was
            out = age_stream.HashingWriter(sink)
            pyrage.encrypt_io(source, out, [native.to_public()])
            out.flush()
        elif op == "encrypt" and impl == "pyrage-bare":
            pyrage.encrypt_io(source, sink, [native.to_public()])
        elif op == "decrypt" and impl == "ours":
            age_stream.decrypt(source, sink, [identity], expect=None)
        elif op == "decrypt" and impl == "ours-bare":
            age_format.decrypt(source, sink, [identity.key])
        elif op == "decrypt" and impl == "pyrage":  # as age_stream.decrypt was
            reader = age_stream.HashingReader(source)
            pyrage.decrypt_io(reader, sink, [native])
            reader.read(1)
        elif op == "decrypt" and impl == "pyrage-bare":
            pyrage.decrypt_io(source, sink, [native])
        else:
            raise ValueError(f"unknown {op} {impl}")
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    traced = tracemalloc.get_traced_memory()[1] / 2**20 if trace else None
    peak = _status_mb("VmHWM")
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "rss_before_mb": round(before, 1),
        "peak_rss_mb": round(peak, 1),
        "tracemalloc_peak_mib": None if traced is None else round(traced, 3),
    }


def _measure(op: str, impl: str, key: Path, src: Path, dst: Path, *, trace: bool = False) -> dict[str, Any]:
    args = [sys.executable, "-m", "bench", "pq", "--child", op, impl, str(key), str(src), str(dst)]
    proc = subprocess.run(
        [*args, *(["--trace"] if trace else [])],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{op} {impl} failed: {proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _random_file(work: Path, mib: int) -> Path:
    path = work / f"random-{mib}MiB.bin"
    if not path.exists() or path.stat().st_size != mib << 20:
        work.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as out:
            for _ in range(mib):
                out.write(os.urandom(1 << 20))
    return path


def header_cost(samples: int = 200) -> dict[str, Any]:
    """Per payload, whatever its size: sealing an empty payload (the header: file key wrapped to one recipient,
    MAC) and opening it, in this process; median over ``samples``, in milliseconds."""
    from labrelay.crypto import age_format  # noqa: PLC0415

    result: dict[str, Any] = {}
    for kind in KINDS:
        identity = AgeIdentity.generate(classic=kind == "classic")
        recipient, key = identity.recipient, identity.key
        seal, open_ = [], []
        for _ in range(samples):
            sink = io.BytesIO()
            started = time.perf_counter()
            age_format.Writer(sink, [recipient]).close()
            seal.append(time.perf_counter() - started)
            sealed = sink.getvalue()
            started = time.perf_counter()
            age_format.decrypt(io.BytesIO(sealed), io.BytesIO(), [key])
            open_.append(time.perf_counter() - started)
        result[kind] = {
            "seal_ms": round(statistics.median(seal) * 1e3, 3),
            "open_ms": round(statistics.median(open_) * 1e3, 3),
            "header_bytes": len(sealed) - age_format.NONCE_BYTES - age_format.TAG,
        }
    return result


def age(work: Path, mib: int, repeat: int) -> dict[str, Any]:
    run_dir = work / "pq-age"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    source = _random_file(work, mib)
    size = source.stat().st_size
    digest = _sha256(source)
    keys = {}
    for kind in KINDS:
        keys[kind] = run_dir / f"{kind}.txt"
        AgeIdentity.generate(classic=kind == "classic").save(keys[kind], datetime.now(UTC).isoformat())
    has_pyrage = importlib.util.find_spec("pyrage") is not None
    ours = [("ours", "classic"), ("ours", "hybrid"), ("ours-bare", "classic"), ("ours-bare", "hybrid")]
    theirs = [("pyrage", "classic"), ("pyrage-bare", "classic")] if has_pyrage else []
    encrypts = ours + theirs

    def sealed(impl: str, kind: str, tag: str = "") -> Path:
        return run_dir / f"{impl}-{kind}{tag}.age"

    def made_by(impl: str, kind: str, tag: str = "") -> Path:
        """The ciphertext a decryption reads: the other implementation's where there is one (pyrage: classic)."""
        if kind == "hybrid" or not has_pyrage:
            return sealed("ours", kind, tag)
        return sealed("ours", kind, tag) if impl.startswith("pyrage") else sealed("pyrage", kind, tag)

    decrypts = encrypts
    runs: dict[str, list[dict[str, Any]]] = {}
    traced: dict[str, dict[str, Any]] = {}
    plain = run_dir / "plain"
    for n in range(repeat):
        order = encrypts if n % 2 == 0 else list(reversed(encrypts))
        for impl, kind in order:
            print(f"age round {n + 1}/{repeat}: encrypt {impl} {kind} …", file=sys.stderr)
            runs.setdefault(f"encrypt {impl} {kind}", []).append(
                _measure("encrypt", impl, keys[kind], source, sealed(impl, kind))
            )
        for impl, kind in decrypts if n % 2 == 0 else list(reversed(decrypts)):
            print(f"age round {n + 1}/{repeat}: decrypt {impl} {kind} …", file=sys.stderr)
            runs.setdefault(f"decrypt {impl} {kind}", []).append(
                _measure("decrypt", impl, keys[kind], made_by(impl, kind), plain)
            )
            if _sha256(plain) != digest:
                raise RuntimeError(f"decrypt {impl} {kind} did not give the source back")
            plain.unlink()
    # Once more, traced: on the whole file and on a sixteenth of it (a peak that does not grow with the payload is
    # what streaming means).
    small = run_dir / "small.bin"
    with source.open("rb") as whole, small.open("wb") as part:
        part.write(whole.read(max(1, mib // 16) << 20))
    for tag, plaintext in (("", source), ("-small", small)):
        for impl, kind in encrypts:
            traced[f"encrypt {impl} {kind}{tag}"] = _measure(
                "encrypt", impl, keys[kind], plaintext, sealed(impl, kind, tag), trace=True
            )
        for impl, kind in decrypts:
            traced[f"decrypt {impl} {kind}{tag}"] = _measure(
                "decrypt", impl, keys[kind], made_by(impl, kind, tag), plain, trace=True
            )
            plain.unlink()
    results: dict[str, Any] = {}
    for label, measured in runs.items():
        seconds = statistics.median(m["seconds"] for m in measured)
        cpu = statistics.median(m["cpu_seconds"] for m in measured)
        results[label] = {
            "seconds": round(seconds, 3),
            "mb_per_s": round(size / 1e6 / seconds),
            "cpu_seconds": round(cpu, 3),
            "mb_per_cpu_s": round(size / 1e6 / cpu),
            "each_mb_per_s": [round(size / 1e6 / m["seconds"]) for m in measured],
            "rss_growth_mb": round(max(m["peak_rss_mb"] - m["rss_before_mb"] for m in measured), 1),
            "tracemalloc_peak_mib": traced[label]["tracemalloc_peak_mib"],
            "tracemalloc_peak_mib_small": traced[f"{label}-small"]["tracemalloc_peak_mib"],
        }
    small_size = small.stat().st_size
    shutil.rmtree(run_dir)
    report: dict[str, Any] = {
        "bytes": size,
        "small_bytes": small_size,
        "pyrage": _pyrage_version() if has_pyrage else None,
        "cryptography": _version("cryptography"),
        "results": results,
        "header": header_cost(),
    }
    for measure in ("mb_per_s", "mb_per_cpu_s"):
        ratio: dict[str, float] = {}
        for op in ("encrypt", "decrypt"):
            if has_pyrage:
                ratio[f"{op}_ours_over_pyrage"] = round(
                    results[f"{op} ours classic"][measure] / results[f"{op} pyrage classic"][measure], 2
                )
                ratio[f"{op}_bare_ours_over_pyrage"] = round(
                    results[f"{op} ours-bare classic"][measure] / results[f"{op} pyrage-bare classic"][measure], 2
                )
            ratio[f"{op}_hybrid_over_classic"] = round(
                results[f"{op} ours hybrid"][measure] / results[f"{op} ours classic"][measure], 2
            )
        report["throughput_ratio" if measure == "mb_per_s" else "cpu_throughput_ratio"] = ratio
    return report


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _pyrage_version() -> str | None:
    return _version("pyrage")


# ------------------------------------------------------------------ report


def print_tables(report: dict[str, Any]) -> None:
    if "transfer" in report:
        t = report["transfer"]
        print(f"send + fetch, {t['batch_records']:,} records, median of {t['rounds']} rounds:\n")
        print(
            "| keys | send (s) | fetch, 20 in turn (s) | send + fetch (s) | each round (s) | CPU, every process (s) "
            "| each round (CPU s) | peak RSS send / fetch / relay (MB) |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for kind in [*KINDS, *(["classic_control"] if "classic_control" in t else [])]:
            k = t[kind]
            each = ", ".join(str(r["send_fetch_s"]) for r in k["each_round"])
            each_cpu = ", ".join(str(r["cpu_s"]) for r in k["each_round"])
            print(
                f"| {kind} ({k['recipient_prefix']}) | {k['send_s']} | {k['fetch_s']} | {k['send_fetch_s']} | "
                f"{each} | {k['cpu_s']} | {each_cpu} | "
                f"{k['send_peak_rss_mb']} / {k['fetch_peak_rss_mb']} / {k['relay_peak_rss_mb']} |"
            )
        print(f"\nhybrid / classic: {json.dumps(t['ratio'])}; within 5%: {t['met']} (CPU: {t['met_cpu']})")
        if "control_ratio" in t:
            print(f"control, classic / classic (the noise floor): {json.dumps(t['control_ratio'])}")
            print(f"hybrid / the control classic world: {json.dumps(t['hybrid_over_control'])}")
        print()
    if "age" in report:
        a = report["age"]
        print(f"age format, {a['bytes'] / 2**20:.0f} MiB file to file (pyrage {a['pyrage']}):\n")
        small = f"{a['small_bytes'] / 2**20:.0f} MiB"
        print(
            "| operation | MB/s (median) | each run | MB per CPU s | RSS growth (MB) "
            f"| tracemalloc peak (MiB), at {small} |"
        )
        print("|---|---|---|---|---|---|")
        for label, r in a["results"].items():
            print(
                f"| {label} | {r['mb_per_s']} | {', '.join(map(str, r['each_mb_per_s']))} | {r['mb_per_cpu_s']} | "
                f"{r['rss_growth_mb']} | {r['tracemalloc_peak_mib']}, {r['tracemalloc_peak_mib_small']} |"
            )
        print(f"\nthroughput ratios: {json.dumps(a['throughput_ratio'])}")
        print(f"CPU throughput ratios: {json.dumps(a['cpu_throughput_ratio'])}")
        print(f"per payload (header only): {json.dumps(a['header'])}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench pq", description=__doc__)
    parser.add_argument("--records", type=int, default=1_400_000)
    parser.add_argument("--repeat", type=int, default=3, help="rounds of each measurement (medians)")
    parser.add_argument("--age-mb", type=int, default=256, help="MiB of random bytes for the age measurement")
    parser.add_argument(
        "--control", action="store_true", help="a second classic world too: the noise floor between two alike"
    )
    parser.add_argument("--only", choices=("transfer", "age"), help="run one of the two (the other is kept from OUT)")
    parser.add_argument("--out", type=Path, default=OUT, help="where pq.json goes")
    parser.add_argument("--work", type=Path, default=WORK, help="where batches are cached and runs happen")
    parser.add_argument("--child", nargs=5, metavar=("OP", "IMPL", "KEY", "SRC", "DST"), help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        op, impl, key, src, dst = args.child
        print(json.dumps(child(op, impl, Path(key), Path(src), Path(dst), args.trace)))
        return
    out = args.out / "pq.json"
    report: dict[str, Any] = json.loads(out.read_text()) if args.only and out.exists() else {}
    report["machine"] = machine()
    if args.only != "age":
        source = batch(args.records, args.work)
        measured_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        result = transfer(source, args.work / "pq-transfer", args.repeat, args.control)
        report["transfer"] = {
            "measured_at": measured_at,
            "batch_records": args.records,
            "batch_bytes": source.stat().st_size,
            "goal_ratio_at_most": GOAL_RATIO,
            **result,
        }
    if args.only != "transfer":
        measured_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        report["age"] = {"measured_at": measured_at, **age(args.work, args.age_mb, args.repeat)}
    args.out.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_tables(report)
    print(f"\nwritten: {out}")
