"""``labrelay demo``: the real thing on one machine, end to end, with a readable summary.

A relay process on a free loopback port (data in DIR/relay), a directory authority and parties (DIR/parties),
a synthetic batch (or --input), sent by a lab to every recipient, fetched and acknowledged by each (DIR/out/NAME),
then checks: the audit chain, the relay's payload directory emptied by the receipts, and no NIR, name, e-mail or
phone number of the batch anywhere in the relay's data. DIR/summary.json records it all.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from labrelay.cli import ui
from labrelay.cli.process import RelayProcess
from labrelay.client.api import RelayClient
from labrelay.client.fetch import fetch_all
from labrelay.client.files import private_dir
from labrelay.client.keystore import Authority, Party
from labrelay.client.send import Sent, send_file
from labrelay.clock import SystemClock
from labrelay.domain.parties import Role
from labrelay.errors import IntegrityError, UsageError

MARKER = ".labrelay-demo"
LAB = "lab-paris-01"
RECIPIENTS: tuple[tuple[str, str | None], ...] = (("cnam", None), ("ars-11", "11"), ("spf", None))
DEFAULT_RECORDS = 1000
READY_TIMEOUT = 60.0


@dataclass
class Timings:
    phases: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = round(time.perf_counter() - started, 3)


@dataclass
class Intake:
    read: int = 0
    accepted: int = 0
    rejected: list[tuple[int, str, str]] = field(default_factory=list)
    needles: set[bytes] = field(default_factory=set)


def _prepare_workdir(workdir: Path) -> None:
    if workdir.exists() and any(workdir.iterdir()):
        if not (workdir / MARKER).exists():
            raise UsageError(
                f"{workdir} exists and is not a demo directory; refusing to touch it",
                hint="pass --workdir with a new or empty directory",
            )
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("created by labrelay demo; safe to delete\n")


def _intake(source: Path, accepted_out: Path) -> Intake:
    """Read the batch record by record. Issue-2 scope: structural checks (the field-level validation of the
    lab-results template comes with the domain readers). Every record is counted as accepted or rejected."""
    intake = Intake()
    with source.open("rb") as raw:
        head = raw.read(8192)
    encoding = "utf-8-sig" if head.startswith(b"\xef\xbb\xbf") else "utf-8"
    try:
        head.decode(encoding)
    except UnicodeDecodeError:
        encoding = "latin-1"
    text = head.decode(encoding, errors="replace")
    delimiter = ";" if text.count(";") > text.count(",") else ","
    fd = os.open(accepted_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # the lab's plaintext: 0600
    with (
        source.open(encoding=encoding, newline="") as fh,
        os.fdopen(fd, "w", encoding="utf-8", newline="") as out,
    ):
        reader = csv.reader(fh, delimiter=delimiter)
        writer = csv.writer(out, delimiter=",", lineterminator="\n")
        header = next(reader, None)
        if not header:
            raise UsageError(f"{source} is empty")
        writer.writerow(header)
        sensitive = [
            i for i, name in enumerate(header) if name.strip() in ("nir", "nom", "prenom", "email", "telephone")
        ]
        for number, row in enumerate(reader, start=1):
            intake.read += 1
            if len(row) != len(header):
                intake.rejected.append((number, "*", f"{len(row)} fields, the header has {len(header)}"))
                continue
            if any("\x00" in value for value in row):
                intake.rejected.append((number, "*", "NUL byte in a field"))
                continue
            writer.writerow(row)
            intake.accepted += 1
            for i in sensitive:
                value = row[i].strip()
                if len(value) >= 6:
                    intake.needles.add(value.encode("utf-8"))
    return intake


def _scan_for_plaintext(root: Path, needles: set[bytes], limit: int = 20000) -> list[str]:
    """Files under ``root`` that contain any needle (a sample of ``limit`` needles for big batches)."""
    sample = sorted(needles)[:limit]
    hits = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if any(n in data for n in sample):
            hits.append(str(path.relative_to(root)))
    return hits


def _enrol_parties(authority: Authority, parties_dir: Path, url: str, clock: SystemClock) -> dict[str, Party]:
    """The demo's lab and recipients: keys made here, entries signed by the authority, registered."""
    pub = authority.path / "authority.pub"
    wanted = [(LAB, Role.LAB, None)] + [(name, Role.RECIPIENT, region) for name, region in RECIPIENTS]
    parties = {}
    for name, role, region in wanted:
        party = Party.create(parties_dir, name, role, region, pub, clock.now())
        envelope = authority.sign_entry(party, clock.now(), timedelta(days=365))
        party.save_entry(envelope)
        with RelayClient(url, party.name, party.signing_key, clock) as client:
            client.register_entry(envelope)
        parties[name] = party
    return parties


def _fetch_everyone(
    parties: dict[str, Party],
    sent: list[Sent],
    url: str,
    out_dir: Path,
    workdir: Path,
    records_sent: int,
    clock: SystemClock,
    progress: ui.TerminalProgress,
) -> dict[str, Any]:
    """Each recipient fetches, verifies, decrypts and acknowledges its own transfer."""
    recipients: dict[str, Any] = {}
    for name, _region in RECIPIENTS:
        party = parties[name]
        with RelayClient(url, party.name, party.signing_key, clock) as client:
            report = fetch_all(party, client, out_dir / name, clock, progress=progress)
        if report.refused:
            raise report.refused[0][1]
        item = next(s for s in sent if s.recipient == name)
        got = next((f for f in report.fetched if f.transfer_id == item.transfer_id), None)
        if got is None:
            raise IntegrityError(f"{name} did not receive transfer {item.transfer_id}")
        recipients[name] = {
            "transfer_id": item.transfer_id,
            "bytes_ciphertext": item.size,
            "records_sent": records_sent,
            "records_received": got.records,
            "receipt": "decrypted" if got.acknowledged else "none",
            "output": str(got.path.relative_to(workdir)),
        }
    return recipients


def run_demo(
    workdir: Path, source: Path | None, records: int | None, keep_running: bool, progress: ui.TerminalProgress
) -> dict[str, Any]:
    from labrelay.runtime import audit_summary, init_data_dir  # noqa: PLC0415 - heavy, demo only

    clock = SystemClock()
    timings = Timings()
    _prepare_workdir(workdir)
    parties_dir, relay_dir, out_dir = workdir / "parties", workdir / "relay", workdir / "out"
    lab_work = private_dir(workdir / "lab")  # the lab's plaintext: readable by its owner only

    with timings.phase("setup"):
        authority = Authority.init(parties_dir / "authority")
        init_data_dir(relay_dir, authority.path / "authority.pub")
        relay = RelayProcess(relay_dir, workdir / "relay.log")
        url = relay.start()
        progress.note(f"relay listening on {url} (data in {relay_dir})")
        parties = _enrol_parties(authority, parties_dir, url, clock)

    try:
        generated = source is None
        if source is None:
            from labrelay.synthetic.generator import write_csv_file  # noqa: PLC0415 - Faker loads slowly

            source = lab_work / "results.csv"
            with timings.phase("generate"):
                write_csv_file(source, records if records is not None else DEFAULT_RECORDS, today=clock.now().date())
            progress.note(f"synthetic batch written to {source}")
        accepted_file = lab_work / "accepted.csv"
        with timings.phase("validate"):
            intake = _intake(source, accepted_file)
        if intake.rejected:
            with (workdir / "rejections.csv").open("w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh, lineterminator="\n")
                writer.writerow(["record", "field", "reason"])
                writer.writerows(intake.rejected)

        lab = parties[LAB]
        with timings.phase("send"), RelayClient(url, lab.name, lab.signing_key, clock) as client:
            sent = send_file(
                lab,
                client,
                accepted_file,
                [n for n, _ in RECIPIENTS],
                timedelta(days=7),
                clock,
                record_count=intake.accepted,
                progress=progress,
            )
        stored_while_waiting = _scan_for_plaintext(relay_dir, intake.needles)

        with timings.phase("fetch"):
            recipients = _fetch_everyone(parties, sent, url, out_dir, workdir, intake.accepted, clock, progress)

        audit = audit_summary(relay_dir)
        payloads_left = sorted(p.name for p in (relay_dir / "payloads").iterdir())
        plaintext_hits = _scan_for_plaintext(relay_dir, intake.needles)
    finally:
        if not keep_running:
            relay.stop()

    summary: dict[str, Any] = {
        "workdir": str(workdir),
        "relay": {
            "url": url,
            "data_dir": str(relay_dir),
            "running": keep_running,
            "pid": relay.pid if keep_running else None,
        },
        "input": {"file": str(source), "generated": generated},
        "records": {
            "read": intake.read,
            "accepted": intake.accepted,
            "rejected": len(intake.rejected),
            "held_for_review": 0,
            "reconciled": intake.read == intake.accepted + len(intake.rejected),
        },
        "routing": "none yet: every recipient receives the accepted batch (per-recipient minimisation is the "
        "routing policy's job)",
        "recipients": recipients,
        "timings_s": {**timings.phases, "total": round(sum(timings.phases.values()), 3)},
        "audit": audit,
        "checks": {
            "payloads_left_on_relay": len(payloads_left),
            "plaintext_files_on_relay_while_stored": stored_while_waiting,
            "plaintext_files_on_relay_after": plaintext_hits,
            "needles_searched": min(len(intake.needles), 20000),
        },
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    ok = (
        audit["chain_ok"]
        and not payloads_left
        and not plaintext_hits
        and not stored_while_waiting
        and summary["records"]["reconciled"]
    )
    summary["ok"] = ok
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def _print(summary: dict[str, Any]) -> None:
    rec = summary["records"]
    lines = [
        f"labrelay demo — {summary['workdir']}",
        f"relay       {summary['relay']['url']}  (data: {summary['relay']['data_dir']})",
        f"records     read {rec['read']}, accepted {rec['accepted']}, rejected {rec['rejected']}, "
        f"held for review {rec['held_for_review']}  → {'reconciled' if rec['reconciled'] else 'NOT RECONCILED'}",
    ]
    for name, r in summary["recipients"].items():
        lines.append(
            f"  {name:8} transfer {r['transfer_id']}  {r['bytes_ciphertext']:>12,} bytes sealed  "
            f"records received {r['records_received']}  receipt {r['receipt']}"
        )
    t = summary["timings_s"]
    lines.append("timings     " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items()))
    a = summary["audit"]
    lines.append(f"audit       {a['records']} events, hash chain {'intact' if a['chain_ok'] else 'BROKEN'}")
    c = summary["checks"]
    lines.append(
        f"relay data  payloads left {c['payloads_left_on_relay']}; files with batch plaintext: "
        f"{len(c['plaintext_files_on_relay_while_stored'])} while stored, "
        f"{len(c['plaintext_files_on_relay_after'])} after ({c['needles_searched']} values searched)"
    )
    lines.append("result      " + ("OK" if summary["ok"] else "FAILED"))
    if summary["relay"]["running"]:
        lines.append(
            f"the relay keeps running (pid {summary['relay']['pid']}); stop it with: kill {summary['relay']['pid']}"
        )
    ui.out.print("\n".join(lines), markup=False)


def demo_command(
    input_file: Annotated[
        Path | None, typer.Option("--input", help="A lab-results CSV to send instead of a synthetic batch.")
    ] = None,
    records: Annotated[
        int | None,
        typer.Option("--records", min=1, help=f"Size of the synthetic batch (default {DEFAULT_RECORDS})."),
    ] = None,
    workdir: Annotated[
        Path, typer.Option("--workdir", help="Where the demo lives (recreated if it was a demo).")
    ] = Path("labrelay-demo"),
    keep_running: Annotated[bool, typer.Option("--keep-running", help="Leave the relay running at the end.")] = False,
) -> None:
    """Run the whole flow for real on this machine and print what happened (DIR/summary.json)."""
    if input_file is not None and records is not None:
        raise UsageError("--input and --records are exclusive")
    if input_file is not None and not input_file.is_file():
        raise UsageError(f"{input_file} is not a readable file")
    quiet = bool(os.environ.get("LABRELAY_QUIET"))
    with ui.TerminalProgress(quiet) as progress:
        summary = run_demo(
            workdir.resolve(), input_file.resolve() if input_file else None, records, keep_running, progress
        )
    _print(summary)
    if not summary["ok"]:
        raise typer.Exit(ui.EXIT_OPERATIONAL)
