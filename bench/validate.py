"""Validate + route against polars merely reading the same file, in the same run; memory as the file doubles.

Two batches, each at two sizes (1.4M records, about 300 MB, and the same written twice over): the project's
(``labrelay.synthetic.generator``: UTF-8, ``,``, canonical values) and another generator's (``bench.foreign``:
Windows-1252, ``;``, CRLF, quoted text, values to normalise, 0.5% broken records). For each file, in a fresh child
process each time, interleaved so that the machine's load falls on both sides alike:
- ``baseline``: ``polars.read_csv(path, infer_schema=False)`` (all columns as text: the default schema inference
  cannot read the NIR column, whose Corsican values are not numbers; the foreign batch with its separator and
  encoding, ``encoding="windows-1252"``);
- ``labrelay``: the send pipeline without sealing: read (CSV reader), validate, route and minimise under the default
  policy with every recipient enrolled, pseudonyms included; outputs discarded.
Times are the median of ``--repeat`` runs of the measured section (the read, or the pipeline; imports and set-up
excluded), wall and CPU (user + system of every thread); peak memory is GNU time's maximum resident set size.
Results: docs/bench/validate.json; the table is printed for docs/performance.md.

``--digest FILE`` prints a digest of everything the pipeline produces for FILE (each recipient's records as CSV,
the persons index, the rejection report, the review file, the summary): run with another ``PYTHONPATH`` it checks
that a change to the reader, the rules or the router left every output byte for byte the same.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from bench.foreign import foreign_batch
from bench.memory import OUT, TIME, WORK, batch, machine, parse_time

GOAL_RATIO = 3.0
GOAL_MB = 500
TODAY = date(2026, 1, 15)
DIGEST_KEY = "5e" * 32  # a fixed pseudonym key, so that digests compare across runs


def _setup(key: str) -> tuple[Any, Any, set[str]]:
    import labrelay.batch.persons  # noqa: PLC0415 - loaded here, before any clock starts
    import labrelay.batch.pipeline  # noqa: F401, PLC0415
    from labrelay.batch.route import Router  # noqa: PLC0415
    from labrelay.batch.validate import Validator  # noqa: PLC0415
    from labrelay.client.policy import default_policy_text  # noqa: PLC0415
    from labrelay.domain.policy import parse_policy  # noqa: PLC0415
    from labrelay.refdata import communes, department_regions  # noqa: PLC0415

    policy = parse_policy(default_policy_text())
    regions = set(department_regions().values())
    names = {"cnam", "spf"} | {f"ars-{r}" for r in regions}
    validator = Validator(
        today=TODAY, loinc=policy.loinc, communes=[c.insee for c in communes()], department_regions=department_regions()
    )
    return validator, Router(policy, regions, names, pseudonym_key=key), names


def child(mode: str, path: Path) -> dict[str, Any]:
    """Runs inside the measured process."""
    import polars as pl  # noqa: PLC0415 - imported where it is measured

    if mode == "baseline":
        with path.open("rb") as fh:
            head = fh.readline()
        separator = ";" if head.count(b";") > head.count(b",") else ","
        encoding = "utf8" if _utf8(path) else "windows-1252"
        started, cpu = time.perf_counter(), time.process_time()
        # A plain read: a record with a field too many (the foreign batch has some) is cut, not refused.
        frame = pl.read_csv(
            path, infer_schema=False, separator=separator, encoding=encoding, truncate_ragged_lines=True
        )
        return {"seconds": time.perf_counter() - started, "cpu": time.process_time() - cpu, "rows": frame.height}
    from labrelay.crypto.pseudonym import new_key  # noqa: PLC0415

    class Discard:
        def write_frame(self, frame: Any) -> None:
            pass

    setup = _setup(new_key())  # the policy, the reference data: before the clock starts
    started, cpu = time.perf_counter(), time.process_time()
    summary = _pipeline(path, setup, lambda _name: Discard())
    return {
        "seconds": time.perf_counter() - started,
        "cpu": time.process_time() - cpu,
        "rows": summary.read,
        "accepted": summary.accepted,
        "rejected": summary.rejected,
        "held": summary.held,
        "reconciled": summary.reconciled,
    }


def _pipeline(
    path: Path,
    setup: tuple[Any, Any, set[str]],
    sink: Callable[[str], Any],
    report: io.StringIO | None = None,
    review: io.StringIO | None = None,
    persons: tuple[Any, str] | None = None,
) -> Any:
    """The send pipeline without sealing on ``path``, with ``_setup``'s validator and router: every recipient of the
    default policy gets ``sink(name)``; the persons index goes to ``persons`` (a stream, the pseudonym key) when
    given. Its summary."""
    from labrelay.batch.persons import PersonsIndexSink  # noqa: PLC0415
    from labrelay.batch.pipeline import RejectionReport, ReviewFile, Summary, open_reader, run  # noqa: PLC0415

    validator, router, names = setup
    fmt, reader = open_reader(path)
    return run(
        reader,
        validator,
        summary=Summary(fmt),
        report=RejectionReport(report),
        review=ReviewFile(review),
        router=router,
        sinks={n: sink(n) for n in names},
        persons=None if persons is None else PersonsIndexSink(persons[0], {n: f"t-{n}" for n in names}, persons[1]),
    )


def _utf8(path: Path) -> bool:
    with path.open("rb") as fh:
        try:
            fh.read(1 << 20).decode("utf-8")
        except UnicodeDecodeError as exc:
            return exc.start > (1 << 20) - 4  # a character cut at the end of the sample
    return True


def digest(path: Path) -> dict[str, Any]:
    """Digests of every output of the pipeline on ``path`` (fixed key and day): equal digests, equal outputs."""
    hashes: dict[str, Any] = {}

    class Hashing:
        def __init__(self, name: str) -> None:
            self.hash = hashes[name] = hashlib.sha256()

        def write_frame(self, frame: Any) -> None:
            buffer = io.BytesIO()
            # What a RecordSink writes: the recipient's fields, not the row ids the persons index matches them by.
            frame.drop("_lid", strict=False).write_csv(buffer, include_header=False)
            self.hash.update(buffer.getvalue())

    persons = hashlib.sha256()

    class Stream:
        def write(self, data: bytes) -> int:
            # Each block's lines sorted: digests compare with code from before the persons index kept its order.
            persons.update(b"\n".join(sorted(data.split(b"\n"))))
            return len(data)

    report, review = io.StringIO(), io.StringIO()
    summary = _pipeline(path, _setup(DIGEST_KEY), Hashing, report, review, (Stream(), DIGEST_KEY))
    outputs = {f"recipient {n}": h.hexdigest()[:16] for n, h in sorted(hashes.items())}
    outputs["persons index"] = persons.hexdigest()[:16]
    outputs["rejection report"] = hashlib.sha256(report.getvalue().encode()).hexdigest()[:16]
    outputs["review file"] = hashlib.sha256(review.getvalue().encode()).hexdigest()[:16]
    return {"summary": summary.as_dict(), "outputs": outputs}


def measure(mode: str, path: Path, src: Path | None = None) -> dict[str, Any]:
    """One child run; ``src``: another tree's ``src`` to import labrelay from (a before/after comparison)."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in (src or root / "src", root))}
    proc = subprocess.run(
        [TIME, "-v", sys.executable, "-m", "bench", "validate", "--child", mode, str(path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=root,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["peak_rss_mb"] = parse_time(proc.stderr)["peak_rss_mb"]
    result["process_cpu_s"] = _cpu(proc.stderr)  # the whole process, imports included
    return result


def _cpu(text: str) -> float:
    user = sys_ = 0.0
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("User time (seconds):"):
            user = float(line.rsplit(":", 1)[1])
        elif line.startswith("System time (seconds):"):
            sys_ = float(line.rsplit(":", 1)[1])
    return round(user + sys_, 2)


def doubled(records: int, work: Path = WORK) -> Path:
    """The project's batch written twice over (``bench compare`` uses it too)."""
    return written_twice(batch(records, work))


def written_twice(base: Path) -> Path:
    """``base`` written twice over (one header): the same records, twice the bytes."""
    stem, _, count = base.stem.rpartition("-")
    path = base.with_name(f"{stem}-{2 * int(count)}.csv")
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as out, base.open("rb") as first:
            out.write(first.read())
            with base.open("rb") as second:
                second.readline()  # one header only
                out.write(second.read())
        tmp.replace(path)
    return path


def _row(base: list[dict[str, Any]], ours: list[dict[str, Any]], path: Path) -> dict[str, Any]:
    row = {
        "records": ours[0]["rows"],
        "bytes": path.stat().st_size,
        "polars_read_s": round(statistics.median(r["seconds"] for r in base), 2),
        "polars_read_cpu_s": round(statistics.median(r["cpu"] for r in base), 2),
        "validate_route_s": round(statistics.median(r["seconds"] for r in ours), 2),
        "validate_route_cpu_s": round(statistics.median(r["cpu"] for r in ours), 2),
        "labrelay_peak_rss_mb": max(r["peak_rss_mb"] for r in ours),
        "polars_peak_rss_mb": max(r["peak_rss_mb"] for r in base),
        "accepted": ours[0]["accepted"],
        "rejected": ours[0]["rejected"],
        "held": ours[0]["held"],
        "reconciled": all(r["reconciled"] for r in ours),
        "ratios": [round(o["seconds"] / b["seconds"], 2) for b, o in zip(base, ours, strict=True)],
    }
    row["ratio"] = round(row["validate_route_s"] / row["polars_read_s"], 2)
    row["cpu_ratio"] = round(row["validate_route_cpu_s"] / row["polars_read_cpu_s"], 2)
    return row


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench validate", description=__doc__)
    parser.add_argument("--records", type=int, default=1_400_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=("project", "foreign"), help="one batch only")
    parser.add_argument("--single", action="store_true", help="the single size only (no doubled file)")
    parser.add_argument("--digest", metavar="FILE", type=Path, help="print the digest of every output for FILE")
    parser.add_argument(
        "--before", metavar="SRC", type=Path, help="also measure labrelay imported from SRC (another tree's src/)"
    )
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]))))
        return
    if args.digest:
        print(json.dumps(digest(args.digest), indent=2))
        return
    batches = {"project": batch(args.records), "foreign": foreign_batch(args.records, WORK)}
    files = {
        f"{name} {size}": path if size == "single" else written_twice(path)
        for name, path in batches.items()
        if args.only in (None, name)
        for size in (("single",) if args.single else ("single", "double"))
    }
    results: dict[str, Any] = {}
    for label, path in files.items():
        base: list[dict[str, Any]] = []
        ours: list[dict[str, Any]] = []
        before: list[dict[str, Any]] = []
        for _ in range(args.repeat):  # side by side: each labrelay run next to a polars run
            base.append(measure("baseline", path))
            ours.append(measure("labrelay", path))
            if args.before:
                before.append(measure("labrelay", path, args.before))
        results[label] = _row(base, ours, path)
        if before:
            results[f"{label} (before)"] = _row(base, before, path)
        print(label, json.dumps(results[label]), file=sys.stderr)
    report: dict[str, Any] = {
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "goals": {"ratio_at_most": GOAL_RATIO, "peak_rss_mb_below": GOAL_MB, "memory_growth_below": 0.10},
        **results,
    }
    met: dict[str, bool] = {}
    for name in batches:
        single, double = results.get(f"{name} single"), results.get(f"{name} double")
        if single:
            met[f"{name} ratio"] = single["ratio"] <= GOAL_RATIO
            met[f"{name} memory"] = single["labrelay_peak_rss_mb"] < GOAL_MB
        if single and double:
            growth = double["labrelay_peak_rss_mb"] / single["labrelay_peak_rss_mb"] - 1
            report[f"{name} memory_growth_when_doubled"] = round(growth, 3)
            met[f"{name} memory growth"] = growth < 0.10
    report["met"] = met
    if args.only is None and not args.single:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "validate.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        "| batch | records | polars read: wall / CPU (s) | validate + route: wall / CPU (s) | ratio (wall) | "
        "ratio (CPU) | labrelay peak RSS (MB) | accepted / rejected / held |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for label, r in results.items():
        print(
            f"| {label} | {r['records']:,} | {r['polars_read_s']} / {r['polars_read_cpu_s']} | "
            f"{r['validate_route_s']} / {r['validate_route_cpu_s']} | {r['ratio']}x | {r['cpu_ratio']}x | "
            f"{r['labrelay_peak_rss_mb']} | {r['accepted']:,} / {r['rejected']:,} / {r['held']:,} |"
        )
    print(f"\ngoals met: {met}")
