"""The demo's own checks against the work it reports (issue 22, goal 4: wall time at most twice the reported work).

``labrelay demo --records N`` (default 20,000) run as the README's quick start runs it, in its own process under GNU
time: a relay on a free loopback port, the authority, the lab and the 20 recipients enrolled, a synthetic batch
generated, validated, routed, minimised, sealed and sent, every recipient fetching its share. The *reported work* is
what the demo's summary times (``timings_s``: setup with the relay's start, generate, validate_route_seal_send,
fetch); the wall time is the whole process's, the demo's own checks included: the batch's identifying values read,
the relay's files searched for them while the payloads are stored and after the fetches, the audit chain verified,
each recipient's share checked against the policy (``check_timings_s``), the relay stopped. Recorded per run: wall,
CPU (user + system of the demo and its relay, GNU time), the reported work and the ratio, the checks' own timings,
the identifying values searched against those of the batch (counted here independently, with the csv module: the
search must cover every one) and the bytes of the relay's files searched. Figures are medians of ``--repeat`` runs.

Results: ``OUT/demo.json`` (default docs/bench/). Run it with ``./dev bench demo`` (``--records N``, ``--repeat N``).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.memory import OUT, WORK, machine, timed
from bench.pq import _cpu_s

GOAL_RATIO = 2.0
SENSITIVE = ("nir", "nom", "prenom", "email", "telephone", "prescripteur_nom", "prescripteur_telephone")


def identifying_values(batch: Path) -> int:
    """The batch's identifying values as the demo defines them (six characters or more: each value, and each word of
    it), counted with the csv module rather than the demo's own code."""
    found: set[str] = set()
    with batch.open(encoding="utf-8", errors="replace", newline="") as fh:
        for row in csv.DictReader(fh):
            for column in SENSITIVE:
                value = row.get(column) or ""
                found.update(p for p in [value, *value.split()] if len(p) >= 6)
    return len(found)


def run_once(records: int, work: Path) -> dict[str, Any]:
    """One ``labrelay demo`` in its own process under GNU time: its figures and its summary's."""
    workdir = work / "demo"
    if workdir.exists():
        shutil.rmtree(workdir)
    log = work / "demo.time.log"
    measured = timed(
        [sys.executable, "-m", "labrelay", "--quiet", "demo", "--records", str(records), "--workdir", str(workdir)], log
    )
    summary = json.loads((workdir / "summary.json").read_text())
    if not summary["ok"]:
        raise RuntimeError(f"the demo's checks failed; see {workdir / 'summary.json'}")
    work_s = summary["timings_s"]["total"]
    checks = summary["checks"]
    return {
        "wall_s": measured["wall_s"],
        "cpu_s": round(_cpu_s(log), 2),
        "peak_rss_mb": measured["peak_rss_mb"],
        "reported_work_s": work_s,
        "ratio": round(measured["wall_s"] / work_s, 3),
        "timings_s": summary["timings_s"],
        "check_timings_s": summary["check_timings_s"],
        "identifying_values_searched": checks["identifying_values_searched"],
        "identifying_values_of_batch": identifying_values(workdir / "lab" / "results.csv"),
        "relay_bytes_searched": checks["relay_bytes_searched"],
        "records_read": summary["records"]["read"],
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench demo", description=__doc__)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of the demo (medians)")
    parser.add_argument("--out", type=Path, default=OUT, help="where demo.json goes")
    parser.add_argument("--work", type=Path, default=WORK, help="where the demo runs")
    args = parser.parse_args(argv)
    work = args.work / "demo-bench"
    work.mkdir(parents=True, exist_ok=True)
    measured_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    runs = [run_once(args.records, work) for _ in range(args.repeat)]
    median = {
        key: round(statistics.median(r[key] for r in runs), 3)
        for key in ("wall_s", "cpu_s", "reported_work_s", "ratio", "relay_bytes_searched")
    }
    report = {
        "machine": machine(),
        "measured_at": measured_at,
        "records": args.records,
        "goal_ratio_at_most": GOAL_RATIO,
        "median": median,
        "met": median["ratio"] <= GOAL_RATIO,
        "identifying_values_searched": runs[0]["identifying_values_searched"],
        "identifying_values_of_batch": runs[0]["identifying_values_of_batch"],
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "demo.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(
        f"demo --records {args.records}: wall {median['wall_s']} s, reported work {median['reported_work_s']} s, "
        f"ratio {median['ratio']} (goal ≤ {GOAL_RATIO}: {'met' if report['met'] else 'NOT met'}); "
        f"{report['identifying_values_searched']} values searched of {report['identifying_values_of_batch']}, "
        f"{median['relay_bytes_searched']} bytes of the relay's files"
    )
