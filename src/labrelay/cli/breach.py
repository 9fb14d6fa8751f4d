"""``labrelay breach``: the DPO's commands. They read the senders' ledgers and the relay's audit export; they never
talk to the relay."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, BinaryIO

import typer

from labrelay.cli import options, ui
from labrelay.clock import SystemClock
from labrelay.domain.timeutil import from_rfc3339
from labrelay.errors import IntegrityError, UsageError

if TYPE_CHECKING:  # polars loads only when a breach command runs
    import polars as pl

    from labrelay.breach.scope import Scope


def _instant(text: str, what: str) -> datetime:
    try:
        return from_rfc3339(text)
    except ValueError:
        raise UsageError(f"{what}: not an instant: {text!r}", hint="e.g. 2026-11-28T09:00:00Z") from None


def _warnings(result: Scope) -> None:
    for item in result.unmatched:
        ui.warn(f"{item} matches no party or transfer of the ledgers and audit")
    if result.unledgered:
        ui.warn(
            f"{len(result.unledgered)} exposed transfer(s) are in no ledger given (content unknown; see scope.json, "
            "unledgered)"
        )
    if result.audit.first_seq != 1:
        ui.warn(
            "the audit export does not start at record 1 (pruned or partial): transfers whose creation is not in it "
            "are assumed stored from their sending to their deadline"
        )


def register_breach(app: typer.Typer) -> None:
    breach_app = typer.Typer(
        help="Breach response (DPO): scope an incident, name the affected persons, draft the notifications.",
        no_args_is_help=True,
    )
    app.add_typer(breach_app, name="breach")
    breach_app.command("scope")(scope)
    breach_app.command("notify")(notify)


def scope(
    ledger: Annotated[list[Path], typer.Option("--ledger", help="A sender's ledger directory (repeatable).")],
    audit: Annotated[Path, typer.Option("--audit", help="The relay's audit export (labrelay audit export).")],
    out: Annotated[Path, typer.Option("--out", help="Directory for scope.json, scope.md, affected.csv.")],
    storage_copied_at: Annotated[
        str | None, typer.Option(help="The relay's storage, database or backups were copied as of this instant.")
    ] = None,
    window: Annotated[
        tuple[str, str] | None, typer.Option(help="The relay was accessed between these two instants.")
    ] = None,
    transfer: Annotated[list[str] | None, typer.Option("--transfer", help="An exposed transfer (repeatable).")] = None,
    compromised: Annotated[
        list[str] | None,
        typer.Option("--compromised", help="NAME@INSTANT: a party's private keys in other hands since then."),
    ] = None,
    as_: Annotated[
        Path | None, typer.Option("--as", help="The DPO's directory: its key opens the ledgers to name persons.")
    ] = None,
) -> None:
    """Which transfers the incident exposed, as ciphertext only or as readable data, and — with --as DPO —
    every affected person, counted by category."""
    from labrelay.breach.scope import (  # noqa: PLC0415 - loads polars
        compute_scope,
        load_ledgers,
        name_persons,
        write_scope,
    )
    from labrelay.domain.breach import Incident  # noqa: PLC0415 - only this command needs it

    hurt: dict[str, datetime] = {}
    for item in compromised or []:
        name, _, since = item.partition("@")
        if not name or not since:
            raise UsageError(f"--compromised {item!r}: write NAME@INSTANT")
        hurt[name] = _instant(since, "--compromised")
    incident = Incident(
        storage_copied_at=_instant(storage_copied_at, "--storage-copied-at") if storage_copied_at else None,
        window=(_instant(window[0], "--window"), _instant(window[1], "--window")) if window else None,
        transfers=frozenset(transfer or ()),
        compromised=hurt,
    )
    if incident.window and incident.window[0] > incident.window[1]:
        raise UsageError("--window: the first instant is after the second")
    if not (incident.storage_copied_at or incident.window or incident.transfers or incident.compromised):
        raise UsageError("say what happened: --storage-copied-at, --window, --transfer or --compromised")
    started = time.perf_counter()
    ledgers = load_ledgers(ledger)
    result = compute_scope(ledgers, audit, incident, SystemClock().now())
    if as_ is not None:
        from labrelay.client.keystore import Party  # noqa: PLC0415 - only the commands that sign need it

        name_persons(result, ledgers, Party.load(as_).identities, out)
    write_scope(result, out, named=as_ is not None)
    doc = result.as_dict()
    ui.out.print(
        "transfers: "
        + ", ".join(f"{k} {v}" for k, v in doc["transfers"].items() if k != "none")
        + (
            f"; persons with readable data: {result.persons['readable_patients']} patients, "
            f"{result.persons['readable_professionals']} professionals"
            if result.persons
            else "; persons: not named (give --as DPO_DIR)"
        ),
        markup=False,
    )
    _warnings(result)
    ui.err.print(f"scope written to {out} in {time.perf_counter() - started:.1f} s", markup=False)


def notify(
    scope_dir: Annotated[Path, typer.Option("--scope", help="The directory breach scope wrote.")],
    controller: Annotated[Path, typer.Option("--controller", help="The controller's details (TOML).")],
    out: Annotated[Path | None, typer.Option("--out", help="Where to write (default: the scope directory).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=100_000, help="Letters and e-mails per file.")] = 1000,
    pdf: Annotated[bool, typer.Option(help="Print the letters as PDF (WeasyPrint); --no-pdf writes HTML.")] = True,
) -> None:
    """Draft the GDPR art. 33 notification for the CNIL (Markdown and JSON) and, for every person whose data
    was readable, the art. 34 letter (PDF) and e-mail (mbox), in batches."""
    from labrelay.breach.notify import (  # noqa: PLC0415 - loads polars, and WeasyPrint to print
        Controller,
        art33,
        art34,
        measures_text,
        nature_text,
        write_art33,
    )

    target = out or scope_dir
    try:
        scope = json.loads((scope_dir / "scope.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{scope_dir}: no scope.json ({exc})", hint="run labrelay breach scope first") from None
    who = Controller.load(controller)
    now = SystemClock().now()
    markdown, doc = art33(scope, who, now)
    write_art33(target, markdown, doc)
    ui.out.print(f"art. 33 draft: {target / 'notification-cnil.md'}", markup=False)
    if not doc["art34"]["owed"]:
        ui.out.print("art. 34: no communication owed (only encrypted data was exposed; art. 34(3)(a))", markup=False)
        return
    affected_path = scope_dir / "affected.csv"
    if not affected_path.is_file():
        raise UsageError("readable data was exposed but the persons are not named", hint="breach scope --as DPO")
    persons = scope.get("persons") or {}
    expected = int(persons.get("readable_patients", 0)) + int(persons.get("readable_professionals", 0))
    started = time.perf_counter()
    with _staging(target) as staging, affected_path.open("rb") as fh:
        # The list is checked whole before any letter is written, then read again in blocks from the same file.
        digest = hashlib.sha256()
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
        if digest.hexdigest() != scope.get("affected_sha256"):
            raise IntegrityError(
                f"{affected_path} is not the list this scope named",
                hint="run labrelay breach scope --as DPO_DIR again into this directory",
            )
        fh.seek(0)
        with ui.TerminalProgress(options.quiet()) as progress:
            task = progress.task("art. 34 letters and e-mails", expected, "persons")
            letters = art34(
                _affected_blocks(fh, affected_path),
                who,
                nature_text(scope),
                measures_text(who),
                staging,
                now,
                batch_size=batch_size,
                pdf=pdf,
                on_progress=task.advance,
            )
            task.done()
        if letters.persons != expected:  # counts reconcile: the list holds the persons its scope counted
            raise IntegrityError(
                f"{affected_path} holds {letters.persons} persons, its scope counted {expected}; "
                "no letter or e-mail was written",
                hint="run labrelay breach scope --as DPO_DIR again into this directory",
            )
        _publish(staging, target)
    elapsed = time.perf_counter() - started
    ui.out.print(
        f"art. 34: {letters.letters} letters in {letters.files} file(s), {letters.emails} e-mails, "
        f"{letters.to_call} to call (no address), in {elapsed:.1f} s",
        markup=False,
    )


ART34_OUTPUTS = ("lettres", "courriels", "a-appeler.csv")


@contextlib.contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """A private directory (0700) inside ``target`` for the art. 34 letters, e-mails and call list: removed with
    whatever it holds unless ``_publish`` moved it all into ``target``, so that a run refused part-way (counts
    that do not reconcile, a malformed list, an interrupt) leaves no letter naming persons behind. Refused first if
    ``target`` already holds letters or e-mails from an earlier run."""
    for sub in ART34_OUTPUTS[:2]:
        folder = target / sub
        if folder.exists() and any(folder.iterdir()):
            raise UsageError(
                f"{folder} already holds letters or e-mails from an earlier run",
                hint="write to a new directory with --out, so that no batch is mixed with another",
            )
    staging = Path(tempfile.mkdtemp(prefix=".art34-", dir=target))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(staging: Path, target: Path) -> None:
    """Move what ``art34`` wrote into ``staging`` to ``target`` (a rename each: same file system)."""
    for name in ART34_OUTPUTS:
        written = staging / name
        if written.exists():
            os.replace(written, target / name)  # onto an empty directory at most (checked by ``_staging``)


def _affected_blocks(fh: BinaryIO, path: Path) -> Iterator[pl.DataFrame]:
    """``affected.csv`` in blocks (bounded memory at any number of persons)."""
    from labrelay.breach.blocks import Malformed, read_blocks  # noqa: PLC0415 - loads polars
    from labrelay.breach.scope import AFFECTED_COLUMNS  # noqa: PLC0415 - loads polars

    try:
        yield from read_blocks(fh, AFFECTED_COLUMNS)
    except Malformed as exc:
        raise IntegrityError(f"{path}: not an affected list ({exc.message})") from None
