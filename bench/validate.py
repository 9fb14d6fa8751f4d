"""Validate + route against polars merely reading the same file, in the same run; memory as the file doubles.

For each batch size (1.4M records, about 300 MB, and 2.8M), in a fresh child process each time:
- ``baseline``: ``polars.read_csv(path, infer_schema=False)`` (all columns as text: the default schema inference
  cannot read the NIR column, whose Corsican values are not numbers);
- ``labrelay``: the send pipeline without sealing: read (CSV reader), validate, route and minimise under the default
  policy with every recipient enrolled, pseudonyms included; outputs discarded.
Times are the median of ``--repeat`` runs; peak memory is GNU time's maximum resident set size of the labrelay
child. Results: docs/bench/validate.json; the table is printed for docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from bench.memory import OUT, TIME, WORK, batch, machine, parse_time

GOAL_RATIO = 3.0
GOAL_MB = 500


def child(mode: str, path: Path) -> dict[str, Any]:
    """Runs inside the measured process."""
    import polars as pl  # noqa: PLC0415 - imported where it is measured

    if mode == "baseline":
        started = time.perf_counter()
        frame = pl.read_csv(path, infer_schema=False)
        return {"seconds": time.perf_counter() - started, "rows": frame.height}
    from labrelay.batch.pipeline import RejectionReport, ReviewFile, Summary, open_reader, run  # noqa: PLC0415
    from labrelay.batch.route import Router  # noqa: PLC0415
    from labrelay.batch.validate import Validator  # noqa: PLC0415
    from labrelay.client.policy import default_policy_text  # noqa: PLC0415
    from labrelay.crypto.pseudonym import new_key  # noqa: PLC0415
    from labrelay.domain.policy import parse_policy  # noqa: PLC0415
    from labrelay.refdata import communes, department_regions  # noqa: PLC0415

    policy = parse_policy(default_policy_text())
    regions = set(department_regions().values())
    names = {"cnam", "spf"} | {f"ars-{r}" for r in regions}

    class Discard:
        def write_frame(self, frame: Any) -> None:
            pass

    validator = Validator(
        today=date(2026, 1, 15),
        loinc=policy.loinc,
        communes=[c.insee for c in communes()],
        department_regions=department_regions(),
    )
    router = Router(policy, regions, names, pseudonym_key=new_key())
    started = time.perf_counter()
    fmt, reader = open_reader(path)
    summary = run(
        reader,
        validator,
        summary=Summary(fmt),
        report=RejectionReport(None),
        review=ReviewFile(None),
        router=router,
        sinks={n: Discard() for n in names},
    )  # type: ignore[misc]
    return {
        "seconds": time.perf_counter() - started,
        "rows": summary.read,
        "accepted": summary.accepted,
        "reconciled": summary.reconciled,
    }


def measure(mode: str, path: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [TIME, "-v", sys.executable, "-m", "bench", "validate", "--child", mode, str(path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["peak_rss_mb"] = parse_time(proc.stderr)["peak_rss_mb"]
    return result


def doubled(records: int, work: Path = WORK) -> Path:
    """The batch written twice over (one header): the same records, twice the bytes."""
    path = work / f"results-{2 * records}.csv"
    if not path.exists():
        base = batch(records, work)
        with path.open("wb") as out, base.open("rb") as first:
            out.write(first.read())
            with base.open("rb") as second:
                second.readline()  # one header only
                out.write(second.read())
    return path


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench validate", description=__doc__)
    parser.add_argument("--records", type=int, default=1_400_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]))))
        return
    sizes = {"single": batch(args.records), "double": doubled(args.records)}
    results: dict[str, Any] = {}
    for label, path in sizes.items():
        base = [measure("baseline", path) for _ in range(args.repeat)]
        ours = [measure("labrelay", path) for _ in range(args.repeat)]
        results[label] = {
            "records": ours[0]["rows"],
            "bytes": path.stat().st_size,
            "polars_read_s": round(statistics.median(r["seconds"] for r in base), 2),
            "validate_route_s": round(statistics.median(r["seconds"] for r in ours), 2),
            "labrelay_peak_rss_mb": max(r["peak_rss_mb"] for r in ours),
            "polars_peak_rss_mb": max(r["peak_rss_mb"] for r in base),
            "reconciled": all(r["reconciled"] for r in ours),
        }
        results[label]["ratio"] = round(results[label]["validate_route_s"] / results[label]["polars_read_s"], 1)
    growth = results["double"]["labrelay_peak_rss_mb"] / results["single"]["labrelay_peak_rss_mb"] - 1
    report = {
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "goals": {"ratio_at_most": GOAL_RATIO, "peak_rss_mb_below": GOAL_MB, "memory_growth_below": 0.10},
        **results,
        "memory_growth_when_doubled": round(growth, 3),
        "met": {
            "ratio": results["single"]["ratio"] <= GOAL_RATIO,
            "memory": results["single"]["labrelay_peak_rss_mb"] < GOAL_MB
            and results["double"]["labrelay_peak_rss_mb"] < GOAL_MB,
            "memory_growth": growth < 0.10,
        },
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "validate.json").write_text(json.dumps(report, indent=2) + "\n")
    print("| batch | records | polars read (s) | validate + route (s) | ratio | labrelay peak RSS (MB) |")
    print("|---|---|---|---|---|---|")
    for label in ("single", "double"):
        r = results[label]
        print(
            f"| {label} | {r['records']:,} | {r['polars_read_s']} | {r['validate_route_s']} | {r['ratio']}x | "
            f"{r['labrelay_peak_rss_mb']} |"
        )
    print(f"\nmemory growth when doubled: {growth:+.1%}; goals met: {report['met']}")
