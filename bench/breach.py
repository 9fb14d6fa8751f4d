"""Breach response at the 2021 scale: a 1.4-million-record batch sent through a real relay (routed to CNAM, SpF
and every ARS, with the ledger sealed to the DPO), the relay's whole data directory copied, then:

- scenario A: ``breach scope --storage-copied-at`` with the DPO's key (every person of the batch looked up);
- scenario B: ``breach scope --compromised ars-11@…`` (nobody fetched: every Île-de-France record readable), then
  ``breach notify --no-pdf`` (the art. 33 draft, every e-mail and every letter as HTML, in batch files);
- the PDF letter rate: ``breach notify`` on the first ``--pdf-sample`` affected persons, with WeasyPrint;
- the same again with the batch doubled (``--double``, the default; 2.8 million records): the DPO's commands must
  stay within the same memory (issue 22, goal 5: <= 500 MB, flat when the ledgers double).

Every process runs under GNU time: peak RSS, wall time and CPU time (user + sys; on a machine shared with other
work, wall time is inflated and CPU time is the steadier figure). The batches are cached in ``$LABRELAY_BENCH_CACHE``
(default bench/work/).

The baseline, in the same run, is polars reading the batch file (``read_csv``, all columns as text): scope and
notification data should take well under 2 minutes, i.e. a small multiple of reading the file once.
Results: docs/bench/breach.json; a table for docs/performance.md is printed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from bench.memory import OUT, TIME, WORK, batch, machine
from bench.memory import timed as timed_rss
from labrelay.client.api import RelayClient
from labrelay.client.keystore import Authority, Party
from labrelay.clock import SystemClock
from labrelay.domain.parties import Role
from labrelay.operations import init_data_dir
from labrelay.refdata import department_regions

GOAL_S = 120.0
GOAL_MB = 500.0
FLAT = 1.10  # "flat": less than 10 % more memory when the ledgers double (as issue 22's goal 7 reads it)
CACHE = Path(os.environ.get("LABRELAY_BENCH_CACHE", str(WORK)))
CONTROLLER = """organisme = "Laboratoire (banc d'essai)"
adresse = "1 rue de l'Exemple, 75000 Paris"
representant = "La direction"
dpo_nom = "DPO"
dpo_email = "dpo@labo.example"
dpo_telephone = "01 00 00 00 00"
decouverte = "{aware}"
mesures_prises = ["Clé révoquée"]
"""


def _enrol(run_dir: Path, url: str, authority: Authority, *, classic: bool = False) -> dict[str, Party]:
    """The lab, the DPO, CNAM, SpF and an ARS per region, enrolled on the relay at ``url``; their age keys hybrid
    post-quantum (the default) or, with ``classic``, X25519 (bench pq compares the two)."""
    clock = SystemClock()
    wanted = [("lab-bench", Role.LAB, None), ("dpo", Role.DPO, None), ("cnam", Role.RECIPIENT, None)]
    wanted += [("spf", Role.RECIPIENT, None)]
    wanted += [(f"ars-{r}", Role.RECIPIENT, r) for r in sorted(set(department_regions().values()))]
    parties = {}
    for name, role, region in wanted:
        pub = authority.path / "authority.pub"
        party = Party.create(run_dir / "parties", name, role, region, pub, clock.now(), classic=classic)
        envelope = authority.sign_entry(party, clock.now(), timedelta(days=1))
        party.save_entry(envelope)
        if role is Role.LAB:
            party.save_pseudonym_key(authority.pseudonym_key())
        with RelayClient(url, name, party.signing_key, clock) as client:
            client.register_entry(envelope)
        parties[name] = party
    return parties


def timed(args: list[str], log: Path) -> dict[str, float]:
    """Peak RSS and wall time (``bench.memory.timed``), and the CPU time (user + sys) from the same GNU time log."""
    figures = timed_rss(args, log)
    text = log.read_text()
    cpu = sum(float(m) for m in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", text))
    return {**figures, "cpu_s": round(cpu, 2)}


def cached_batch(records: int) -> Path:
    """The generator's batch of ``records``, from the cache (made there once, under a temporary name)."""
    path = CACHE / f"results-{records}.csv"
    if path.exists():
        return path
    tmp = CACHE / f".build-{os.getpid()}"
    made = batch(records, tmp)
    made.rename(path)
    shutil.rmtree(tmp, ignore_errors=True)
    return path


def run(records: int, pdf_sample: int, name: str = "breach-run") -> dict[str, Any]:
    source = cached_batch(records)
    run_dir = WORK / name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    started = time.perf_counter()
    pl.read_csv(source, infer_schema=False)
    baseline = round(time.perf_counter() - started, 2)
    authority = Authority.init(run_dir / "authority")
    init_data_dir(run_dir / "relay", authority.path / "authority.pub")
    ready = run_dir / "ready.json"
    cli = [sys.executable, "-m", "labrelay", "--quiet"]
    relay = subprocess.Popen(
        [*cli, "serve", "--data", str(run_dir / "relay"), "--port", "0", "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while not ready.exists():
            time.sleep(0.05)
        url = json.loads(ready.read_text())["url"]
        with RelayClient(url, "@authority", authority.key, SystemClock()) as client:
            from labrelay.client.policy import default_policy_text  # noqa: PLC0415

            client.register_policy(authority.sign_policy(default_policy_text(), datetime.now(UTC)))
        parties = _enrol(run_dir, url, authority)
        lab, dpo = str(parties["lab-bench"].path), str(parties["dpo"].path)
        send = timed([*cli, "send", str(source), "--as", lab, "--server", url], run_dir / "send.time.log")
        copied_at = (datetime.now(UTC) + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        shutil.copytree(run_dir / "relay", run_dir / "stolen-copy")
        audit = run_dir / "audit.ndjson"
        subprocess.run([*cli, "audit", "export", "--data", str(run_dir / "relay"), "--out", str(audit)], check=True)
    finally:
        relay.terminate()
        relay.wait(timeout=60)
    ledger = str(Path(lab) / "ledger")
    common = ["--ledger", ledger, "--audit", str(audit), "--as", dpo]
    scope_a = timed(
        [*cli, "breach", "scope", *common, "--storage-copied-at", copied_at, "--out", str(run_dir / "a")],
        run_dir / "scope-a.time.log",
    )
    a = json.loads((run_dir / "a" / "scope.json").read_text())
    scope_b = timed(
        [*cli, "breach", "scope", *common, "--compromised", f"ars-11@{copied_at}", "--out", str(run_dir / "b")],
        run_dir / "scope-b.time.log",
    )
    b = json.loads((run_dir / "b" / "scope.json").read_text())
    controller = run_dir / "controller.toml"
    controller.write_text(CONTROLLER.format(aware=copied_at), encoding="utf-8")
    notify_b = timed(
        [*cli, "breach", "notify", "--scope", str(run_dir / "b"), "--controller", str(controller), "--no-pdf"],
        run_dir / "notify-b.time.log",
    )
    notified = _notified(run_dir / "b")
    result: dict[str, Any] = {
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "batch": {"records": records, "bytes": source.stat().st_size},
        "baseline_read_csv_s": baseline,
        "send": send,
        "scenario_a": {
            **scope_a,
            "transfers": a["transfers"],
            "persons": a["persons"],
            "ratio": round(scope_a["wall_s"] / baseline, 1),
        },
        "scenario_b": {
            "scope": {**scope_b, "ratio": round(scope_b["wall_s"] / baseline, 1)},
            "notify_no_pdf": notify_b,
            "transfers": b["transfers"],
            "persons": b["persons"],
            "scope_notify_wall_s": round(scope_b["wall_s"] + notify_b["wall_s"], 2),
            "scope_notify_cpu_s": round(scope_b["cpu_s"] + notify_b["cpu_s"], 2),
            "notified": notified,
        },
    }
    if pdf_sample:
        result["pdf_letters"] = _pdf_sample(cli, run_dir, controller, pdf_sample)
    shutil.rmtree(run_dir / "b" / "lettres", ignore_errors=True)  # 600 MB of HTML at 1.4 M records
    shutil.rmtree(run_dir / "b" / "courriels", ignore_errors=True)
    return result


def _notified(scope_dir: Path) -> dict[str, int]:
    """What notify wrote (letters as HTML, e-mails in mbox files, calls), counted in its files, and what the
    affected list says it should have written: every person named is reached, nothing dropped."""
    letters = sum(p.read_bytes().count(b'<section class="letter">') for p in (scope_dir / "lettres").glob("*.html"))
    emails = sum(p.read_bytes().count(b"\nTo: ") for p in (scope_dir / "courriels").glob("*.mbox"))
    calls = scope_dir / "a-appeler.csv"
    to_call = pl.read_csv(calls, infer_schema=False).height if calls.exists() else 0
    address = pl.col("adresse").fill_null("") != ""
    email = pl.col("email").fill_null("")
    writable = email.str.contains("@", literal=True) & ~email.str.contains(r'[\r\n,;<>" ]')
    want = (
        pl.scan_csv(scope_dir / "affected.csv", infer_schema=False)
        .select(
            address.sum().alias("letters"),
            writable.sum().alias("emails"),
            (~address & ~writable).sum().alias("to_call"),
        )
        .collect()
        .row(0, named=True)
    )
    got = {"letters": letters, "emails": emails, "to_call": to_call}
    if got != want:
        raise RuntimeError(f"notify wrote {got}, the affected list asks for {want}")
    return got


def _pdf_sample(cli: list[str], run_dir: Path, controller: Path, count: int) -> dict[str, Any]:
    """The first ``count`` persons of scope B as a scope of their own, printed as PDF letters."""
    sample = run_dir / "pdf-sample"
    sample.mkdir()
    affected = pl.read_csv(run_dir / "b" / "affected.csv", infer_schema=False, n_rows=count)
    affected.write_csv(sample / "affected.csv")
    sample_scope = json.loads((run_dir / "b" / "scope.json").read_text())
    sample_scope["affected_sha256"] = hashlib.sha256((sample / "affected.csv").read_bytes()).hexdigest()
    kinds = affected.get_column("kind")
    sample_scope["persons"] |= {
        "readable_patients": int((kinds == "patient").sum()),
        "readable_professionals": int((kinds == "professional").sum()),
    }
    (sample / "scope.json").write_text(json.dumps(sample_scope))  # the sample is a scope of its own
    pdf = timed(
        [*cli, "breach", "notify", "--scope", str(sample), "--controller", str(controller), "--batch-size", "100"],
        run_dir / "pdf.time.log",
    )
    return {**pdf, "letters": affected.height, "per_second": round(affected.height / pdf["wall_s"], 1)}


def verdict(result: dict[str, Any]) -> dict[str, Any]:
    """Issue 22, goal 5: scope A and B within GOAL_MB, flat when the ledgers double; scope + notify B within
    GOAL_S (wall; CPU time beside it)."""
    base, doubled = result, result.get("doubled")
    peaks = {
        "scope_a": base["scenario_a"]["peak_rss_mb"],
        "scope_b": base["scenario_b"]["scope"]["peak_rss_mb"],
        "notify_b": base["scenario_b"]["notify_no_pdf"]["peak_rss_mb"],
    }
    growth = None
    if doubled:
        twice = {
            "scope_a": doubled["scenario_a"]["peak_rss_mb"],
            "scope_b": doubled["scenario_b"]["scope"]["peak_rss_mb"],
            "notify_b": doubled["scenario_b"]["notify_no_pdf"]["peak_rss_mb"],
        }
        growth = {k: round(twice[k] / peaks[k], 2) for k in peaks}
    within = all(v <= GOAL_MB for v in peaks.values()) and (
        doubled is None or all(v <= GOAL_MB for v in twice.values())
    )
    return {
        "goal_peak_rss_mb": GOAL_MB,
        "goal_flat_growth": FLAT,
        "goal_s": GOAL_S,
        "rss_growth_when_doubled": growth,
        "memory_met": within and growth is not None and all(g < FLAT for g in growth.values()),
        "time_met_wall": base["scenario_b"]["scope_notify_wall_s"] <= GOAL_S,
        "time_met_cpu": base["scenario_b"]["scope_notify_cpu_s"] <= GOAL_S,
    }


def table(result: dict[str, Any]) -> None:
    print("| records | step | wall (s) | CPU (s) | peak RSS (MB) |\n|---|---|---|---|---|")
    for run_result in filter(None, (result, result.get("doubled"))):
        a, b = run_result["scenario_a"], run_result["scenario_b"]
        n = f"{run_result['batch']['records']:,}"
        rows = [
            ("send (validate, route, seal, ledger, upload)", run_result["send"]),
            (f"scope A: {a['persons']['ciphertext_only_patients']:,} persons looked up", a),
            (f"scope B: {b['persons']['readable_patients']:,} persons named", b["scope"]),
            ("notify B without PDF", b["notify_no_pdf"]),
        ]
        if "pdf_letters" in run_result:
            rows.append((f"PDF letters ({run_result['pdf_letters']['letters']})", run_result["pdf_letters"]))
        for label, f in rows:
            print(f"| {n} | {label} | {f['wall_s']} | {f.get('cpu_s', '-')} | {f['peak_rss_mb']} |")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench breach", description=__doc__)
    parser.add_argument("--records", type=int, default=1_400_000)
    parser.add_argument("--pdf-sample", type=int, default=500)
    parser.add_argument(
        "--double", action=argparse.BooleanOptionalAction, default=True, help="run again with 2x the records"
    )
    args = parser.parse_args(argv)
    if not Path(TIME).exists():
        sys.exit("GNU time is needed: apt-get install time")
    result = run(args.records, args.pdf_sample)
    if args.double:
        result["doubled"] = run(2 * args.records, 0, "breach-run-doubled")
        shutil.rmtree(WORK / "breach-run-doubled", ignore_errors=True)
    result["goal"] = verdict(result)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "breach.json").write_text(json.dumps(result, indent=2) + "\n")
    table(result)
    print(f"\nbaseline read_csv: {result['baseline_read_csv_s']} s; goal: {json.dumps(result['goal'])}")
