"""Breach response at the 2021 scale: a 1.4-million-record batch sent through a real relay (routed to CNAM, SpF
and every ARS, with the ledger sealed to the DPO), the relay's whole data directory copied, then:

- scenario A: ``breach scope --storage-copied-at`` with the DPO's key (every person of the batch looked up);
- scenario B: ``breach scope --compromised ars-11@…`` (nobody fetched: every Île-de-France record readable), then
  ``breach notify --no-pdf`` (the art. 33 draft, every e-mail and every letter as HTML, in batch files);
- the PDF letter rate: ``breach notify`` on the first ``--pdf-sample`` affected persons, with WeasyPrint.

The baseline, in the same run, is polars reading the batch file (``read_csv``, all columns as text): scope and
notification data should take well under 2 minutes, i.e. a small multiple of reading the file once.
Results: docs/bench/breach.json; a table for docs/performance.md is printed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from bench.memory import OUT, TIME, WORK, batch, machine, timed
from labrelay.client.api import RelayClient
from labrelay.client.keystore import Authority, Party
from labrelay.clock import SystemClock
from labrelay.domain.parties import Role
from labrelay.operations import init_data_dir
from labrelay.refdata import department_regions

GOAL_S = 120.0
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


def run(records: int, pdf_sample: int) -> dict[str, Any]:
    source = batch(records)
    run_dir = WORK / "breach-run"
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
    sample = run_dir / "pdf-sample"
    sample.mkdir()
    affected = pl.read_csv(run_dir / "b" / "affected.csv", infer_schema=False).head(pdf_sample)
    affected.write_csv(sample / "affected.csv")
    sample_scope = json.loads((run_dir / "b" / "scope.json").read_text())
    sample_scope["affected_sha256"] = hashlib.sha256((sample / "affected.csv").read_bytes()).hexdigest()
    (sample / "scope.json").write_text(json.dumps(sample_scope))  # the sample is a scope of its own
    pdf = timed(
        [*cli, "breach", "notify", "--scope", str(sample), "--controller", str(controller), "--batch-size", "100"],
        run_dir / "pdf.time.log",
    )
    return {
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
        },
        "pdf_letters": {**pdf, "letters": pdf_sample, "per_second": round(pdf_sample / pdf["wall_s"], 1)},
        "goal_s": GOAL_S,
        "met": scope_a["wall_s"] < GOAL_S and scope_b["wall_s"] + notify_b["wall_s"] < GOAL_S,
    }


def table(result: dict[str, Any]) -> None:
    a, b = result["scenario_a"], result["scenario_b"]
    rows = [
        ("polars read_csv (baseline)", {"wall_s": result["baseline_read_csv_s"], "peak_rss_mb": "-"}, 1),
        ("send (validate, route, seal, ledger, upload)", result["send"], "-"),
        (f"scope A: storage copied, {a['persons']['ciphertext_only_patients']} persons looked up", a, a["ratio"]),
        (
            f"scope B: ars-11 key stolen, {b['persons']['readable_patients']} persons named",
            b["scope"],
            b["scope"]["ratio"],
        ),
        ("notify B without PDF: art. 33, every e-mail and letter (HTML)", b["notify_no_pdf"], "-"),
        (f"PDF letters ({result['pdf_letters']['letters']})", result["pdf_letters"], "-"),
    ]
    print("| step | wall (s) | x read_csv | peak RSS (MB) |\n|---|---|---|---|")
    for label, figures, ratio in rows:
        print(f"| {label} | {figures['wall_s']} | {ratio} | {figures['peak_rss_mb']} |")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench breach", description=__doc__)
    parser.add_argument("--records", type=int, default=1_400_000)
    parser.add_argument("--pdf-sample", type=int, default=500)
    args = parser.parse_args(argv)
    if not Path(TIME).exists():
        sys.exit("GNU time is needed: apt-get install time")
    result = run(args.records, args.pdf_sample)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "breach.json").write_text(json.dumps(result, indent=2) + "\n")
    table(result)
    print(f"\nPDF rate: {result['pdf_letters']['per_second']} letters/s; goal < {GOAL_S:.0f} s; met: {result['met']}")
