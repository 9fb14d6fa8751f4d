"""``labrelay demo``: the real thing on one machine, end to end, with a readable summary.

A relay process on a free loopback port (data in DIR/relay); a directory authority, a lab and every recipient of
the default policy (CNAM, one ARS per region, Santé publique France) under DIR/parties; the authority's signed
routing policy; a synthetic batch (or --input) validated, routed, minimised and sent; every recipient fetching,
verifying, decrypting and acknowledging its own payload into DIR/out/NAME. Then checks, each reported:
the counts reconcile, each recipient received only what the policy gives it, the audit chain holds, the receipts
emptied the relay's payload directory, and no NIR, name, e-mail or phone number of the batch is anywhere in the
relay's data. DIR/summary.json records it all.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from labrelay.cli import options, ui
from labrelay.cli.demo_relay import DemoRelay
from labrelay.cli.demo_scan import NeedleSet, ScanReport, scan_tree
from labrelay.client.api import RelayClient
from labrelay.client.fetch import Fetched, fetch_all
from labrelay.client.files import private_dir
from labrelay.client.keystore import Authority, Party
from labrelay.client.policy import default_policy_text
from labrelay.clock import SystemClock
from labrelay.domain.names import AUTHORITY_KEYID
from labrelay.domain.parties import Role, key_kind
from labrelay.domain.records import DIRECT_IDENTIFIERS
from labrelay.errors import IntegrityError, OperationalError, UsageError
from labrelay.refdata import department_of, department_regions

if TYPE_CHECKING:
    from labrelay.client.routed import RoutedSend

MARKER = ".labrelay-demo"
LAB = "lab-paris-01"
DEFAULT_RECORDS = 1000
SENSITIVE = ("nir", "nom", "prenom", "email", "telephone", "prescripteur_nom", "prescripteur_telephone")


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


def recipients() -> list[tuple[str, str | None]]:
    """The default policy's recipients: CNAM, SpF, and one ARS per INSEE region."""
    regions = sorted(set(department_regions().values()))
    return [("cnam", None), ("spf", None)] + [(f"ars-{region}", region) for region in regions]


DPO = "dpo-lab"  # the lab's data protection officer: its key opens the breach ledger


def _enrol_parties(authority: Authority, parties_dir: Path, url: str, clock: SystemClock) -> dict[str, Party]:
    """The lab and every recipient: keys made here, entries signed by the authority, registered."""
    pub = authority.path / "authority.pub"
    wanted: list[tuple[str, Role, str | None]] = [(LAB, Role.LAB, None), (DPO, Role.DPO, None)]
    wanted += [(name, Role.RECIPIENT, region) for name, region in recipients()]
    parties = {}
    for name, role, region in wanted:
        party = Party.create(parties_dir, name, role, region, pub, clock.now())
        envelope = authority.sign_entry(party, clock.now(), timedelta(days=365))
        party.save_entry(envelope)
        if role is Role.LAB:
            party.save_pseudonym_key(authority.pseudonym_key())
        with RelayClient(url, party.name, party.signing_key, clock) as client:
            client.register_entry(envelope)
        parties[name] = party
    return parties


def _needles(source: Path) -> NeedleSet:
    """The batch's identifying values (six bytes or more), to search the relay's files for."""
    import polars as pl  # noqa: PLC0415 - loaded by the demo only

    try:
        frame = pl.read_csv(source, infer_schema=False, columns=list(SENSITIVE), encoding="utf8-lossy")
    except (pl.exceptions.PolarsError, OSError):
        return NeedleSet(())  # not a CSV with these columns (HL7 or FHIR input): the summary reports 0 values searched
    values = {v for col in frame.columns for v in frame[col].drop_nulls().to_list()}
    parts = {p for v in values for p in ([v, *v.split()]) if len(p) >= 6}
    return NeedleSet(p.encode("utf-8") for p in parts)


def _fetch_everyone(
    parties: dict[str, Party],
    routed: RoutedSend,
    url: str,
    out_dir: Path,
    clock: SystemClock,
    progress: ui.TerminalProgress,
) -> dict[str, Fetched]:
    got: dict[str, Fetched] = {}
    for item in routed.sent:
        party = parties[item.recipient]
        with RelayClient(url, party.name, party.signing_key, clock) as client:
            report = fetch_all(party, client, out_dir / party.name, clock, progress=progress)
        if report.refused:
            raise report.refused[0][1]
        match = next((f for f in report.fetched if f.transfer_id == item.transfer_id), None)
        if match is None:
            raise IntegrityError(f"{party.name} did not receive transfer {item.transfer_id}")
        got[party.name] = match
    return got


def check_minimisation(outputs: dict[str, Path]) -> dict[str, Any]:
    """What each recipient received, against what the default policy allows it."""
    import polars as pl  # noqa: PLC0415 - loaded by the demo only

    region_of = department_regions()
    problems: list[str] = []
    for name, path in sorted(outputs.items()):
        frame = pl.read_csv(path, infer_schema=False)
        if name == "spf":
            leaked = sorted(set(frame.columns) & DIRECT_IDENTIFIERS)
            if leaked:
                problems.append(f"spf received {leaked}")
        elif name == "cnam":
            others = frame.filter(pl.col("resultat") != "POSITIF").height
            if others:
                problems.append(f"cnam received {others} results that are not positive")
        elif name.startswith("ars-"):
            region = name.split("-", 1)[1]
            if "nir" in frame.columns:
                problems.append(f"{name} received the NIR")
            outside = [c for c in frame["code_commune_insee"].to_list() if region_of.get(department_of(c)) != region]
            if outside:
                problems.append(f"{name} received {len(outside)} residents of other regions")
    return {"ok": not problems, "problems": problems}


@dataclass
class _Run:
    """What the demo's run left to check: the batch, what was sent and fetched, what the relay's data held."""

    source: Path
    generated: bool
    needles: NeedleSet
    routed: RoutedSend
    stored_while_waiting: ScanReport
    fetched: dict[str, Fetched]
    audit: dict[str, Any]
    payloads_left: list[str]
    plaintext_hits: ScanReport
    keys: dict[str, str]  # party → the kind of its age key (post-quantum or classic), lab excepted


def run_demo(
    workdir: Path, source: Path | None, records: int | None, keep_running: bool, progress: ui.TerminalProgress
) -> dict[str, Any]:
    from labrelay.operations import audit_summary, init_data_dir  # noqa: PLC0415 - the relay's stack loads only for the command that needs it

    clock = SystemClock()
    timings, checking = Timings(), Timings()  # the work, and the demo's own checks of it
    _prepare_workdir(workdir)
    parties_dir, relay_dir, out_dir = workdir / "parties", workdir / "relay", workdir / "out"
    lab_work = private_dir(workdir / "lab")  # the lab's plaintext: readable by its owner only

    with timings.phase("setup"):
        authority = Authority.init(parties_dir / "authority")
        init_data_dir(relay_dir, authority.path / "authority.pub")
        relay = DemoRelay(relay_dir, workdir / "relay.log")
        url = relay.start()
        progress.note(f"relay listening on {url} (data in {relay_dir})")
        with RelayClient(url, AUTHORITY_KEYID, authority.key, clock) as client:
            policy = client.register_policy(authority.sign_policy(default_policy_text(), clock.now()))
        parties = _enrol_parties(authority, parties_dir, url, clock)

    try:
        generated = source is None
        if source is None:
            source = _generate(lab_work / "results.csv", records, clock, timings, progress)
        with checking.phase("needles"):
            needles = _needles(source)
        routed = _send_batch(parties[LAB], url, source, clock, timings, progress)
        with checking.phase("scan_while_stored"):
            stored_while_waiting = scan_tree(relay_dir, needles)
        with timings.phase("fetch"):
            fetched = _fetch_everyone(parties, routed, url, out_dir, clock, progress)
        with checking.phase("audit"):
            audit = audit_summary(relay_dir)
        payloads_left = sorted(p.name for p in (relay_dir / "payloads").iterdir())
        with checking.phase("scan_after"):
            plaintext_hits = scan_tree(relay_dir, needles)
    finally:
        if not keep_running:
            relay.stop()

    keys = {name: key_kind(p.age_recipient) for name, p in parties.items() if name != LAB}
    run = _Run(
        source, generated, needles, routed, stored_while_waiting, fetched, audit, payloads_left, plaintext_hits, keys
    )
    where = {
        "url": url,
        "data_dir": str(relay_dir),
        "running": keep_running,
        "pid": relay.pid if keep_running else None,
    }
    result = _result(workdir, where, policy.get("version"), run, timings, checking)
    (workdir / "summary.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def _generate(
    path: Path, records: int | None, clock: SystemClock, timings: Timings, progress: ui.TerminalProgress
) -> Path:
    """A synthetic batch in the lab's private directory, readable by its owner only."""
    from labrelay.synthetic.generator import write_file  # noqa: PLC0415 - Faker loads slowly

    with timings.phase("generate"):
        write_file(path, records if records is not None else DEFAULT_RECORDS, today=clock.now().date())
    os.chmod(path, 0o600)
    progress.note(f"synthetic batch written to {path}")
    return path


def _send_batch(
    lab: Party, url: str, source: Path, clock: SystemClock, timings: Timings, progress: ui.TerminalProgress
) -> RoutedSend:
    """The lab's send of the batch: validated, routed, minimised, sealed, uploaded."""
    from labrelay.client.routed import SendOptions, send_results  # noqa: PLC0415 - heavy, demo only

    with timings.phase("validate_route_seal_send"), RelayClient(url, lab.name, lab.signing_key, clock) as client:
        return send_results(lab, client, source, clock, SendOptions(ttl=timedelta(days=7)), progress=progress)


def _result(
    workdir: Path, relay: dict[str, Any], policy_version: Any, run: _Run, timings: Timings, checking: Timings
) -> dict[str, Any]:
    """The demo's summary: where everything is, the counts and timings, every check and whether they all hold."""
    routed, fetched = run.routed, run.fetched
    with checking.phase("minimisation"):
        minimisation = check_minimisation({name: f.path for name, f in fetched.items()})
    if routed.summary is None:  # a fresh work directory: the batch cannot have been sent before
        raise OperationalError("the demo's batch was found already sent")
    summary = routed.summary.as_dict()
    sent_records = routed.summary.per_recipient
    ars_total = sum(n for name, n in sent_records.items() if name.startswith("ars-"))
    checks: dict[str, Any] = {
        # SpF gets every valid record, those held for a regional share no ARS covers included
        "every_valid_record_reached_spf": sent_records.get("spf", 0) == routed.summary.accepted + routed.summary.held,
        "every_accepted_record_reached_its_ars": ars_total == summary["accepted"],
        "received_equals_sent": all(
            (fetched[n].records if n in fetched else 0) == sent_records.get(n, 0) for n, _ in recipients()
        ),
        "minimisation": minimisation,
        "payloads_left_on_relay": len(run.payloads_left),
        "plaintext_files_on_relay_while_stored": run.stored_while_waiting.hits,
        "plaintext_files_on_relay_after": run.plaintext_hits.hits,
        "identifying_values_searched": len(run.needles),
        "relay_bytes_searched": run.stored_while_waiting.bytes + run.plaintext_hits.bytes,
        "age_keys": {kind: sorted(n for n, k in run.keys.items() if k == kind) for kind in set(run.keys.values())},
    }
    ok = bool(
        run.audit["chain_ok"]
        and summary["reconciled"]
        and not run.payloads_left
        and not run.plaintext_hits.hits
        and not run.stored_while_waiting.hits
        and minimisation["ok"]
        and checks["every_valid_record_reached_spf"]
        and checks["every_accepted_record_reached_its_ars"]
        and checks["received_equals_sent"]
    )
    return {
        "workdir": str(workdir),
        "relay": relay,
        "policy": policy_version,
        "input": {"file": str(run.source), "generated": run.generated, "format": summary["input_format"]},
        "records": {k: summary[k] for k in ("read", "accepted", "rejected", "held_for_review", "reconciled")},
        "reports": {"rejections": str(routed.rejections), "held_for_review": str(routed.review)},
        "recipients": {name: _received(workdir, name, sent_records, fetched) for name, _region in recipients()},
        "timings_s": {**timings.phases, "total": round(sum(timings.phases.values()), 3)},
        "check_timings_s": checking.phases,
        "audit": run.audit,
        "checks": checks,
        "ok": ok,
    }


def _received(workdir: Path, name: str, sent_records: dict[str, int], fetched: dict[str, Fetched]) -> dict[str, Any]:
    """What one recipient was sent, and what it received, decrypted and acknowledged."""
    got = fetched.get(name)
    return {
        "records_sent": sent_records.get(name, 0),
        "records_received": got.records if got is not None else 0,
        "transfer_id": got.transfer_id if got is not None else None,
        "receipt": "decrypted" if got is not None and got.acknowledged else None,
        "output": str(got.path.relative_to(workdir)) if got is not None else None,
    }


def _print(summary: dict[str, Any]) -> None:
    rec = summary["records"]
    c = summary["checks"]
    lines = [
        f"labrelay demo — {summary['workdir']}",
        f"relay       {summary['relay']['url']}  (data: {summary['relay']['data_dir']}); policy {summary['policy']}",
        f"records     read {rec['read']}, accepted {rec['accepted']}, rejected {rec['rejected']}, "
        f"held for review {rec['held_for_review']}  → {'reconciled' if rec['reconciled'] else 'NOT RECONCILED'}",
    ]
    for name, r in summary["recipients"].items():
        if r["records_sent"]:
            lines.append(
                f"  {name:8} {r['records_sent']:>7} records sent, {r['records_received']:>7} received and "
                f"decrypted; receipt {r['receipt']}"
            )
    quiet = [n for n, r in summary["recipients"].items() if not r["records_sent"]]
    if quiet:
        lines.append(f"  nothing for: {', '.join(quiet)}")
    lines.append("timings     " + ", ".join(f"{k} {v:.2f}s" for k, v in summary["timings_s"].items()))
    lines.append(
        f"audit       {summary['audit']['records']} events, hash chain "
        f"{'intact' if summary['audit']['chain_ok'] else 'BROKEN'}"
    )
    kinds = c["age_keys"]
    classic = kinds.get("classic", [])
    lines.append(
        f"keys        {len(kinds.get('post-quantum', []))} post-quantum (ML-KEM-768 + X25519)"
        + (f", {len(classic)} classic: {', '.join(classic)}" if classic else ": every recipient and the DPO")
    )
    mini = c["minimisation"]
    lines.append(
        "minimised   "
        + (
            "each recipient received only what the policy gives it"
            if mini["ok"]
            else "PROBLEMS: " + "; ".join(mini["problems"])
        )
    )
    lines.append(
        f"relay data  payloads left {c['payloads_left_on_relay']}; files with batch plaintext: "
        f"{len(c['plaintext_files_on_relay_while_stored'])} while stored, "
        f"{len(c['plaintext_files_on_relay_after'])} after ({c['identifying_values_searched']} values "
        "searched)"
    )
    lines.append(f"reports     rejections: {summary['reports']['rejections']}")
    lines.append("result      " + ("OK" if summary["ok"] else "FAILED"))
    if summary["relay"]["running"]:
        lines.append(
            f"the relay keeps running (pid {summary['relay']['pid']}); stop it with: kill {summary['relay']['pid']}"
        )
    ui.print_lines(ui.out, "\n".join(lines))


def demo_command(
    input_file: Annotated[
        Path | None,
        typer.Option("--input", help="A lab-results file (CSV, HL7 v2 or FHIR) to send instead of a synthetic batch."),
    ] = None,
    records: Annotated[
        int | None, typer.Option("--records", min=1, help=f"Size of the synthetic batch (default {DEFAULT_RECORDS}).")
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
    quiet = options.quiet()
    with ui.TerminalProgress(quiet) as progress:
        summary = run_demo(
            workdir.resolve(), input_file.resolve() if input_file else None, records, keep_running, progress
        )
    _print(summary)
    if not summary["ok"]:
        raise typer.Exit(ui.EXIT_OPERATIONAL)
