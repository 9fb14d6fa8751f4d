"""labrelay against what a hospital's IT team would otherwise reach for: the ``age`` tool and OpenSSH ``sftp``.

One run, one machine, the same synthetic batch (1.4 million records, about 300 MB, from the project's generator),
then the same batch written twice over:

- baselines: ``age`` encrypt (one X25519 recipient), ``sftp`` put and get through a throwaway ``sshd`` on loopback
  (its own host key, one authorised key, no password), ``age`` decrypt; and polars reading the file;
- labrelay: ``labrelay validate``; validate + route in-process (the pipeline of send without sealing, as in
  ``bench validate``); ``labrelay send`` (validate, route and minimise under the signed default policy to CNAM,
  Santé publique France and every ARS, seal each payload, the breach ledger sealed to the DPO, sign, upload);
  ``labrelay fetch`` by every recipient (download, verify, decrypt, write, signed receipt).

Every command runs under GNU time (``/usr/bin/time -v``): wall time and peak resident memory. The baseline steps
and validate + route run ``--repeat`` times (median wall time, highest peak); send and the fetches once. The relay
is a real ``labrelay serve`` on the embedded default, under GNU time too, one per batch size. Every recipient
fetches in turn, each in its own process; then the lab sends the batch again and all twenty recipients fetch at
once (twenty processes on this machine's cores, against the one relay). Ratios are taken in the run:

- transfer: (send + every fetch in turn) / (age encrypt + sftp put + sftp get + age decrypt), goal at most 2
  (and, for information, the same with the recipients fetching at once);
- validate + route / polars read, goal at most 3;
- peak memory: relay below 200 MB, client (validate, send, each fetch) below 500 MB, each growing less than 10%
  when the batch doubles.

Results: ``OUT/compare.json`` and ``OUT/compare.png`` (default OUT: docs/bench/); a table for docs/performance.md is
printed. Run it with ``./dev bench compare`` (``--records N`` for a smaller batch, ``--single`` to skip the doubled
one).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.breach import _enrol
from bench.memory import OUT, TIME, WORK, TimedRelay, _same, batch, machine, parse_time, timed
from bench.validate import doubled, measure
from labrelay.client.api import RelayClient
from labrelay.client.keystore import Authority
from labrelay.client.policy import default_policy_text
from labrelay.clock import SystemClock
from labrelay.operations import init_data_dir

GOALS = {
    "transfer_ratio_at_most": 2.0,  # send + the slowest recipient's fetch (recipients fetch on their own machines)
    "transfer_in_turn_ratio_at_most": 3.0,  # send + every fetch, one after another
    "small_fetch_s_at_most": 0.3,
    "version_s_at_most": 0.15,
    "validate_route_ratio_at_most": 3.0,
    "relay_peak_rss_mb_below": 200,
    "client_peak_rss_mb_below": 500,
    "memory_growth_below": 0.10,
}
TOOLS = {"age": "age", "age-keygen": "age", "sftp": "openssh-client", "ssh-keygen": "openssh-client"}
SSHD = "/usr/sbin/sshd"
SMALL_RECORDS = 300  # the small fetch: one payload of this batch, SpF's share (every record)
SMALL_RUNS = 5  # small fetches and --version runs measured (median)


def _need_tools() -> None:
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    if not Path(SSHD).exists():
        missing.append("openssh-server")
    if not Path(TIME).exists():
        missing.append("time")
    if missing:
        sys.exit(f"bench compare needs {', '.join(missing)} (Debian: apt-get install {' '.join(missing)})")


def _compiled() -> None:
    """labrelay's modules compiled to bytecode once, as installing the wheel does (pip compiles at install time):
    otherwise, under PYTHONDONTWRITEBYTECODE, every CLI process would compile them from source again, a cost no
    installed labrelay pays. Third-party packages in the virtual environment are already compiled."""
    import compileall  # noqa: PLC0415 - only here

    import labrelay  # noqa: PLC0415

    compileall.compile_dir(Path(labrelay.__file__).parent, quiet=1)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Sshd:
    """A throwaway OpenSSH server on loopback: generated host and user keys, public-key login only."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        for name in ("host", "user"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
        shutil.copy(root / "user.pub", root / "authorized_keys")
        (root / "authorized_keys").chmod(0o600)
        self.port = _free_port()
        # The client pins the host key it was given, as an operator would: no trust on first use.
        (root / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {(root / 'host.pub').read_text()}")
        (root / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {root / 'host'}\n"
            f"AuthorizedKeysFile {root / 'authorized_keys'}\nPidFile {root / 'sshd.pid'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nUsePAM no\n"
            "StrictModes no\nSubsystem sftp internal-sftp\n"
        )
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(exist_ok=True)  # the privilege-separation directory sshd insists on as root
        self.log = (root / "sshd.log").open("w")
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(root / "sshd_config")], stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd stopped: {(root / 'sshd.log').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("sshd did not listen within 20 s") from None
                time.sleep(0.05)

    def sftp(self, command: str, log: Path) -> dict[str, float]:
        script = log.with_suffix(".sftp")
        script.write_text(command + "\n")
        return timed(
            [
                "sftp",
                "-q",
                "-b",
                str(script),
                "-i",
                str(self.root / "user"),
                "-P",
                str(self.port),
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                f"UserKnownHostsFile={self.root / 'known_hosts'}",
                f"{getpass.getuser()}@127.0.0.1",
            ],
            log,
        )

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def baselines(source: Path, run_dir: Path, sshd: Sshd, repeat: int) -> dict[str, Any]:
    """age encrypt, sftp put, sftp get, age decrypt of the whole file; polars reading it. Each step ``repeat``
    times: its median wall time, its highest peak memory."""
    key = run_dir / "age-key.txt"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True).stdout
    sealed, remote, got, opened = (run_dir / n for n in ("batch.age", "remote.age", "got.age", "batch.csv"))
    runs: dict[str, list[dict[str, float]]] = {"age_encrypt": [], "sftp_put": [], "sftp_get": [], "age_decrypt": []}
    for _ in range(repeat):
        for path in (sealed, remote, got, opened):
            path.unlink(missing_ok=True)
        encrypt = ["age", "-r", recipient.strip(), "-o", str(sealed), str(source)]
        runs["age_encrypt"].append(timed(encrypt, run_dir / "age-encrypt.log"))
        runs["sftp_put"].append(sshd.sftp(f"put {sealed} {remote}", run_dir / "sftp-put.log"))
        runs["sftp_get"].append(sshd.sftp(f"get {remote} {got}", run_dir / "sftp-get.log"))
        decrypt = ["age", "-d", "-i", str(key), "-o", str(opened), str(got)]
        runs["age_decrypt"].append(timed(decrypt, run_dir / "age-decrypt.log"))
        if not _same(opened, source):
            raise RuntimeError("the age + sftp round trip did not give the batch back")
    for path in (sealed, remote, got, opened):
        path.unlink()
    steps = {
        name: {"wall_s": round(_median(r, "wall_s"), 2), "peak_rss_mb": max(x["peak_rss_mb"] for x in r)}
        for name, r in runs.items()
    }
    polars = [measure("baseline", source) for _ in range(repeat)]
    return {
        **steps,
        "total_s": round(sum(s["wall_s"] for s in steps.values()), 2),
        "peak_rss_mb": max(s["peak_rss_mb"] for s in steps.values()),
        "polars_read": {
            "wall_s": round(_median(polars, "seconds"), 3),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in polars),
        },
    }


def labrelay(source: Path, run_dir: Path, repeat: int, *, small: bool = True) -> dict[str, Any]:
    """validate; validate + route (median of ``repeat``); send to every recipient and fetch by every recipient
    (once: they are the long steps); with ``small``, a small fetch and ``labrelay --version`` (median of
    ``SMALL_RUNS``); the relay's peak memory."""
    cli = [sys.executable, "-m", "labrelay", "--quiet"]
    validate = timed([*cli, "validate", str(source), "--summary", str(run_dir / "validate.json")], run_dir / "v.log")
    routes = [measure("labrelay", source) for _ in range(repeat)]
    authority = Authority.init(run_dir / "authority")
    init_data_dir(run_dir / "relay", authority.path / "authority.pub")
    relay = TimedRelay(run_dir)
    url = relay.url
    try:
        with RelayClient(url, "@authority", authority.key, SystemClock()) as client:
            client.register_policy(authority.sign_policy(default_policy_text(), datetime.now(UTC)))
        parties = _enrol(run_dir, url, authority)
        send = timed(
            [*cli, "send", str(source), "--as", str(parties["lab-bench"].path), "--server", url], run_dir / "send.log"
        )
        fetches: dict[str, dict[str, Any]] = {}
        for name, party in parties.items():
            if name in ("lab-bench", "dpo"):
                continue
            out = run_dir / "fetched" / name
            fetches[name] = timed(
                [*cli, "fetch", "--as", str(party.path), "--server", url, "--out", str(out)],
                run_dir / f"fetch-{name}.log",
            )
            fetches[name]["records"] = _records(out)
            shutil.rmtree(out)
        # The same batch again, then every recipient fetching at once, as separate organisations would: twenty
        # processes sharing this machine's cores, against one relay (whose peak memory this phase includes).
        resend = timed(  # --again: a new batch on purpose (the same file is otherwise recognised as sent)
            [*cli, "send", str(source), "--as", str(parties["lab-bench"].path), "--server", url, "--again"],
            run_dir / "send-again.log",
        )
        together = _fetch_together(cli, url, {n: p.path for n, p in parties.items() if n in fetches}, run_dir)
        lab, spf = parties["lab-bench"].path, parties["spf"].path
        quick = _small_fetches(cli, url, lab, spf, batch(SMALL_RECORDS, source.parent), run_dir) if small else None
    finally:
        relay_stats = relay.stop()
    summary = json.loads((run_dir / "validate.json").read_text())
    fetch_s = round(sum(f["wall_s"] for f in fetches.values()), 2)
    slowest = max(f["wall_s"] for f in fetches.values())
    extra = {"small_fetch": quick, "version": _version(cli, run_dir)} if quick is not None else {}
    return {
        "validate": {
            **validate,
            "read": summary.get("read"),
            "accepted": summary.get("accepted"),
            "held": summary.get("held_for_review"),
        },
        "validate_route": {
            "wall_s": round(_median(routes, "seconds"), 3),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in routes),
            "reconciled": all(r["reconciled"] for r in routes),
        },
        "send": send,
        "fetch": {
            "wall_s": fetch_s,
            "peak_rss_mb": max(f["peak_rss_mb"] for f in fetches.values()),
            "slowest_s": slowest,
            "slowest": max(fetches, key=lambda name: fetches[name]["wall_s"]),
            "recipients": len(fetches),
            "records_delivered": sum(f["records"] for f in fetches.values()),
            "each": fetches,
        },
        # Goal 1: every recipient holds its share once the slowest one's fetch ends (each on its own machine).
        "send_slowest_fetch_s": round(send["wall_s"] + slowest, 2),
        "send_fetch_s": round(send["wall_s"] + fetch_s, 2),  # every fetch in turn, one after another
        "send_again": resend,
        "fetch_together": together,
        "send_fetch_together_s": round(resend["wall_s"] + together["wall_s"], 2),
        "relay": relay_stats,
        "client_peak_rss_mb": max(
            validate["peak_rss_mb"], send["peak_rss_mb"], *(f["peak_rss_mb"] for f in fetches.values())
        ),
        **extra,
    }


def _cpu_s(log: Path) -> float:
    """User + system CPU seconds of a run under GNU time (its log)."""
    text = log.read_text()
    user = re.search(r"User time \(seconds\): ([\d.]+)", text)
    system = re.search(r"System time \(seconds\): ([\d.]+)", text)
    return round(float(user.group(1)) + float(system.group(1)), 2) if user and system else 0.0


def _small_fetches(cli: list[str], url: str, lab: Path, recipient: Path, small: Path, run_dir: Path) -> dict[str, Any]:
    """Goal 3: a small fetch. ``SMALL_RUNS`` times, a small batch is sent, then one recipient fetches its one small
    payload (verify the directory and policy, list the inbox, download, check, decrypt, write, signed receipt), in
    a fresh process as a recipient's script runs it. The median wall time, with the CPU time beside it (wall
    times are noisy on a shared machine)."""
    runs = []
    for n in range(SMALL_RUNS):
        out = run_dir / "small" / str(n)
        # --again: the same small file, a new batch each time
        timed([*cli, "send", str(small), "--as", str(lab), "--server", url, "--again"], run_dir / "small-send.log")
        log = run_dir / f"small-fetch-{n}.log"
        run = timed([*cli, "fetch", "--as", str(recipient), "--server", url, "--out", str(out)], log)
        runs.append({**run, "cpu_s": _cpu_s(log), "records": _records(out)})
    shutil.rmtree(run_dir / "small")
    return {
        "wall_s": round(_median(runs, "wall_s"), 2),
        "cpu_s": round(_median(runs, "cpu_s"), 2),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "records": runs[0]["records"],
        "runs": runs,
    }


def _version(cli: list[str], run_dir: Path) -> dict[str, Any]:
    """Goal 3: ``labrelay --version``, ``SMALL_RUNS`` times (median)."""
    runs = [timed([*cli, "--version"], run_dir / "version.log") for _ in range(SMALL_RUNS)]
    return {"wall_s": round(_median(runs, "wall_s"), 2), "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}


def _fetch_together(cli: list[str], url: str, parties: dict[str, Path], run_dir: Path) -> dict[str, Any]:
    """Every recipient's ``labrelay fetch`` started at once; wall time from the first start to the last exit."""
    logs = {name: run_dir / f"fetch-together-{name}.log" for name in parties}
    outs = {name: run_dir / "together" / name for name in parties}
    started = time.perf_counter()
    procs = {}
    for name, path in parties.items():
        with logs[name].open("w") as log:
            procs[name] = subprocess.Popen(
                [TIME, "-v", *cli, "fetch", "--as", str(path), "--server", url, "--out", str(outs[name])],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
    codes = {name: proc.wait(timeout=1800) for name, proc in procs.items()}
    wall = time.perf_counter() - started
    failed = sorted(name for name, code in codes.items() if code != 0)
    if failed:
        raise RuntimeError(f"fetch failed for {', '.join(failed)}; see {run_dir}/fetch-together-*.log")
    each = {name: parse_time(logs[name].read_text()) for name in parties}
    records = sum(_records(out) for out in outs.values())
    shutil.rmtree(run_dir / "together")
    return {
        "wall_s": round(wall, 2),
        "peak_rss_mb": max(e["peak_rss_mb"] for e in each.values()),
        "records_delivered": records,
    }


def _records(out: Path) -> int:
    """Records written by a fetch: data lines of every CSV payload (one header each)."""
    total = 0
    for path in out.rglob("*.csv"):
        with path.open("rb") as handle:
            total += sum(1 for _ in handle) - 1
    return total


def ratios(single: dict[str, Any], double: dict[str, Any] | None) -> dict[str, Any]:
    base, ours = single["baseline"], single["labrelay"]
    result: dict[str, Any] = {
        "transfer": round(ours["send_slowest_fetch_s"] / base["total_s"], 2),
        "transfer_in_turn": round(ours["send_fetch_s"] / base["total_s"], 2),
        # Not the goal's figure: the second send, then every recipient fetching at once on this same machine.
        "transfer_fetching_together": round(ours["send_fetch_together_s"] / base["total_s"], 2),
        "validate_route": round(ours["validate_route"]["wall_s"] / base["polars_read"]["wall_s"], 2),
        "relay_peak_rss_mb": ours["relay"]["peak_rss_mb"],
        "client_peak_rss_mb": ours["client_peak_rss_mb"],
    }
    if double:
        twice = double["labrelay"]
        result["double_transfer"] = round(twice["send_slowest_fetch_s"] / double["baseline"]["total_s"], 2)
        result["double_transfer_in_turn"] = round(twice["send_fetch_s"] / double["baseline"]["total_s"], 2)
        result["double_validate_route"] = round(
            twice["validate_route"]["wall_s"] / double["baseline"]["polars_read"]["wall_s"], 2
        )
        result["relay_memory_growth"] = round(twice["relay"]["peak_rss_mb"] / ours["relay"]["peak_rss_mb"] - 1, 3)
        result["client_memory_growth"] = round(twice["client_peak_rss_mb"] / ours["client_peak_rss_mb"] - 1, 3)
        result["send_fetch_time_growth"] = round(twice["send_fetch_s"] / ours["send_fetch_s"], 2)
    return result


def met(r: dict[str, Any], sizes: dict[str, Any]) -> dict[str, bool]:
    runs = [s["labrelay"] for s in sizes.values()]
    single = sizes["single"]["labrelay"]
    verdict = {
        "transfer": r["transfer"] <= GOALS["transfer_ratio_at_most"],
        "transfer_in_turn": r["transfer_in_turn"] <= GOALS["transfer_in_turn_ratio_at_most"],
        "small_fetch": single["small_fetch"]["wall_s"] <= GOALS["small_fetch_s_at_most"],
        "version": single["version"]["wall_s"] <= GOALS["version_s_at_most"],
        "validate_route": r["validate_route"] <= GOALS["validate_route_ratio_at_most"],
        "relay_memory": all(o["relay"]["peak_rss_mb"] < GOALS["relay_peak_rss_mb_below"] for o in runs),
        "client_memory": all(o["client_peak_rss_mb"] < GOALS["client_peak_rss_mb_below"] for o in runs),
    }
    if "relay_memory_growth" in r:
        verdict["relay_memory_growth"] = r["relay_memory_growth"] < GOALS["memory_growth_below"]
        verdict["client_memory_growth"] = r["client_memory_growth"] < GOALS["memory_growth_below"]
    return verdict


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    sizes = [k for k in ("single", "double") if k in report]
    labels = {k: f"{report[k]['records']:,} records ({report[k]['bytes'] / 1e6:.0f} MB)" for k in sizes}
    fig, (times, memory) = plt.subplots(1, 2, figsize=(13, 6.5), gridspec_kw={"width_ratios": [3, 2]})
    base_steps = [("age_encrypt", "age encrypt"), ("sftp_put", "sftp put"), ("sftp_get", "sftp get")]
    base_steps.append(("age_decrypt", "age decrypt"))
    blues = ["#9ecae1", "#6baed6", "#4292c6", "#2171b5"]
    longest = max(report[s]["labrelay"]["send_fetch_s"] for s in sizes)
    bars, width = [], 0.38
    for i, size in enumerate(sizes):
        base, ours = report[size]["baseline"], report[size]["labrelay"]
        # (label, [(part, seconds, colour)]) per bar
        stacks = [
            (
                f"{labels[size]}\nage + sftp",
                [(lbl, base[k]["wall_s"], blues[n]) for n, (k, lbl) in enumerate(base_steps)],
            ),
            (
                f"{labels[size]}\nlabrelay send + slowest fetch\n(each recipient on its machine)",
                [
                    ("send", ours["send"]["wall_s"], "#fdae6b"),
                    ("slowest fetch", ours["fetch"]["slowest_s"], "#e6550d"),
                ],
            ),
            (
                f"{labels[size]}\nlabrelay send + fetch\n(recipients in turn)",
                [("send", ours["send"]["wall_s"], "#fdae6b"), ("fetch (all)", ours["fetch"]["wall_s"], "#e6550d")],
            ),
            (
                f"{labels[size]}\nlabrelay send + fetch\n(recipients at once)",
                [
                    ("send", ours["send_again"]["wall_s"], "#fdd0a2"),
                    ("fetch", ours["fetch_together"]["wall_s"], "#fd8d3c"),
                ],
            ),
            (f"{labels[size]}\npolars read", [("polars read", base["polars_read"]["wall_s"], "#bdbdbd")]),
            (
                f"{labels[size]}\nvalidate + route",
                [("validate + route", ours["validate_route"]["wall_s"], "#756bb1")],
            ),
        ]
        for j, (name, parts) in enumerate(stacks):
            y = i * (len(stacks) + 0.6) + j
            left = 0.0
            for part, seconds, colour in parts:
                times.barh(y, seconds, left=left, height=width * 2, color=colour, edgecolor="white")
                if seconds > 0.0085 * (len(part) + 2) * longest:  # room for the label inside the bar
                    times.text(left + seconds / 2, y, part, ha="center", va="center", fontsize=7)
                left += seconds
            times.text(left, y, f" {left:.1f} s", va="center", fontsize=8)
            bars.append((y, name))
    times.set_yticks([y for y, _ in bars], [n for _, n in bars], fontsize=7)
    times.invert_yaxis()
    times.set_xlabel("wall time (s), lower is better")
    times.set_xlim(0, longest * 1.1)  # room for the totals written after the longest bar
    r = report["ratios"]
    single = report["single"]["labrelay"]
    small = (
        f"\nsmall fetch {single['small_fetch']['wall_s']} s (goal <= 0.3 s); "
        f"labrelay --version {single['version']['wall_s']} s (goal <= 0.15 s)"
        if "small_fetch" in single
        else ""
    )
    times.set_title(
        f"send + slowest fetch = {r['transfer']}x age + sftp (goal <= 2x); in turn {r['transfer_in_turn']}x "
        f"(goal <= 3x)\nvalidate + route = {r['validate_route']}x polars read (goal <= 3x){small}",
        fontsize=8,
    )
    procs = [("relay", lambda o: o["relay"]["peak_rss_mb"]), ("send", lambda o: o["send"]["peak_rss_mb"])]
    procs += [("fetch", lambda o: o["fetch"]["peak_rss_mb"]), ("validate", lambda o: o["validate"]["peak_rss_mb"])]
    for i, size in enumerate(sizes):
        values = [get(report[size]["labrelay"]) for _, get in procs]
        xs = [x + (i - 0.5) * width for x in range(len(procs))]
        memory.bar(xs, values, width=width, label=labels[size], color=["#74c476", "#31a354"][i])
        for x, v in zip(xs, values, strict=True):
            memory.text(x, v, f"{v:.0f}", ha="center", va="bottom", fontsize=7)
    memory.set_xticks(range(len(procs)), [p for p, _ in procs])
    memory.axhline(GOALS["relay_peak_rss_mb_below"], color="#de2d26", ls="--", lw=1)
    memory.text(-0.45, GOALS["relay_peak_rss_mb_below"], "relay goal", color="#de2d26", fontsize=7, va="bottom")
    memory.axhline(GOALS["client_peak_rss_mb_below"], color="#de2d26", ls=":", lw=1)
    memory.text(-0.45, GOALS["client_peak_rss_mb_below"], "client goal", color="#de2d26", fontsize=7, va="bottom")
    memory.set_ylabel("peak resident memory (MB)")
    memory.set_title("peak memory per process (GNU time)", fontsize=9)
    memory.legend(fontsize=7, loc="upper right")
    fig.suptitle(
        f"labrelay vs age + OpenSSH sftp, one run on {report['machine']['cpus']} cores ({report['measured_at']})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(report: dict[str, Any]) -> None:
    sizes = [k for k in ("single", "double") if k in report]
    print("| step | " + " | ".join(f"{report[k]['records']:,} records: wall (s) / peak RSS (MB)" for k in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    rows: list[tuple[str, Any]] = [
        ("age encrypt", lambda s: s["baseline"]["age_encrypt"]),
        ("sftp put (loopback)", lambda s: s["baseline"]["sftp_put"]),
        ("sftp get (loopback)", lambda s: s["baseline"]["sftp_get"]),
        ("age decrypt", lambda s: s["baseline"]["age_decrypt"]),
        (
            "**age + sftp, total**",
            lambda s: {"wall_s": s["baseline"]["total_s"], "peak_rss_mb": s["baseline"]["peak_rss_mb"]},
        ),
        ("polars read_csv", lambda s: s["baseline"]["polars_read"]),
        ("labrelay validate", lambda s: s["labrelay"]["validate"]),
        ("validate + route (in-process)", lambda s: s["labrelay"]["validate_route"]),
        ("labrelay send (every recipient)", lambda s: s["labrelay"]["send"]),
        ("labrelay fetch, 20 recipients in turn (summed; peak of any)", lambda s: s["labrelay"]["fetch"]),
        (
            "labrelay fetch, the slowest recipient alone",
            lambda s: {
                "wall_s": s["labrelay"]["fetch"]["slowest_s"],
                "peak_rss_mb": s["labrelay"]["fetch"]["peak_rss_mb"],
            },
        ),
        (
            "**labrelay send + slowest fetch (goal 1)**",
            lambda s: {
                "wall_s": s["labrelay"]["send_slowest_fetch_s"],
                "peak_rss_mb": s["labrelay"]["client_peak_rss_mb"],
            },
        ),
        (
            "**labrelay send + fetch (in turn)**",
            lambda s: {"wall_s": s["labrelay"]["send_fetch_s"], "peak_rss_mb": s["labrelay"]["client_peak_rss_mb"]},
        ),
        ("labrelay send, again", lambda s: s["labrelay"]["send_again"]),
        ("labrelay fetch, 20 recipients at once (peak of any)", lambda s: s["labrelay"]["fetch_together"]),
        ("relay (labrelay serve, whole run)", lambda s: s["labrelay"]["relay"]),
    ]
    quick: list[tuple[str, str]] = [
        (f"labrelay fetch, small (median of {SMALL_RUNS})", "small_fetch"),
        (f"labrelay --version (median of {SMALL_RUNS})", "version"),
    ]
    rows += [(label, lambda s, key=key: s["labrelay"].get(key)) for label, key in quick]
    for label, get in rows:
        cells = [get(report[k]) for k in sizes]
        print(f"| {label} | " + " | ".join(f"{c['wall_s']} / {c['peak_rss_mb']}" if c else "—" for c in cells) + " |")
    print(f"\nratios: {json.dumps(report['ratios'])}\ngoals met: {json.dumps(report['met'])}")


def run_size(source: Path, run_dir: Path, repeat: int, *, small: bool = True) -> dict[str, Any]:
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    sshd = Sshd(run_dir / "sshd")
    try:
        print(f"baselines on {source.name} …", file=sys.stderr)
        base = baselines(source, run_dir, sshd, repeat)
    finally:
        sshd.stop()
    print(f"labrelay on {source.name} …", file=sys.stderr)
    ours = labrelay(source, run_dir, repeat, small=small)
    shutil.rmtree(run_dir)
    records = ours["validate"]["read"]
    return {"records": records, "bytes": source.stat().st_size, "baseline": base, "labrelay": ours}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench compare", description=__doc__)
    parser.add_argument("--records", type=int, default=1_400_000)
    parser.add_argument("--single", action="store_true", help="skip the doubled batch")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each baseline step and of validate + route")
    parser.add_argument("--out", type=Path, default=OUT, help="where compare.json and compare.png go")
    parser.add_argument("--work", type=Path, default=WORK, help="where batches are cached and runs happen")
    parser.add_argument("--replot", action="store_true", help="only redraw OUT/compare.png from OUT/compare.json")
    args = parser.parse_args(argv)
    if args.replot:
        plot(json.loads((args.out / "compare.json").read_text()), args.out / "compare.png")
        return
    _need_tools()
    _compiled()
    sources = {"single": batch(args.records, args.work)}
    if not args.single:
        sources["double"] = doubled(args.records, args.work)
    report: dict[str, Any] = {
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "goals": GOALS,
    }
    for label, source in sources.items():
        report[label] = run_size(source, args.work / f"compare-{label}", args.repeat, small=label == "single")
    report["ratios"] = ratios(report["single"], report.get("double"))
    report["met"] = met(report["ratios"], {k: report[k] for k in sources})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out / "compare.png")
    table(report)
    print(f"\nwritten: {args.out / 'compare.json'}, {args.out / 'compare.png'}")
