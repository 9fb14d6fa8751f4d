"""``labrelay fetch`` (what waits for a recipient), ``labrelay receipt`` (after ``--raw``) and ``labrelay receipts``
(the sender's view of what its recipients acknowledged or refused)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from labrelay.cli import options, ui
from labrelay.cli.commands.common import (
    AsOpt,
    CaOpt,
    JsonOpt,
    ServerOpt,
    WaitOpt,
    party_client,
    wait_seconds,
    warn_overruled,
)
from labrelay.client.api import RelayClient
from labrelay.client.fetch import FetchReport, acknowledge, fetch_all
from labrelay.client.keystore import Party
from labrelay.client.lock import party_lock
from labrelay.client.progress import Stopwatch
from labrelay.client.receipts import batches_of, in_batches, verified_outbox
from labrelay.clock import SystemClock
from labrelay.domain.parties import short_key
from labrelay.errors import IntegrityError, UsageError

if TYPE_CHECKING:
    from labrelay.client.rotation import Destroyed


def _retire_after_fetch(party: Party, client: RelayClient) -> list[Destroyed]:
    """After a (decrypting) fetch, destroy retired identities nothing needs any more."""
    from labrelay.client.rotation import RETIRED_FILE, retire_due  # noqa: PLC0415 - only a fetch that decrypts needs it

    if not (party.path / RETIRED_FILE).exists():
        return []
    return retire_due(party, client, SystemClock().now())


def _print_fetch(report: FetchReport) -> None:
    for item in report.fetched:
        if item.again:
            done = "acknowledged again" if item.acknowledged else "not acknowledged yet (labrelay receipt)"
            ui.json_output.say(f"{item.transfer_id} was already received ({item.path}); {done}, not written again")
        elif item.duplicate_of is not None:
            ui.json_output.say(
                f"declined {item.transfer_id} from {item.sender}: a second copy of a source already received by "
                f"{item.duplicate_of} ({item.path}); acknowledged as a duplicate, not written"
            )
        else:
            count = f", {item.records} records" if item.records is not None else ""
            ack = "acknowledged" if item.acknowledged else "not acknowledged (--raw)"
            flags = ""
            if item.unparsed:
                flags += " [UNPARSED: sent outside the routing policy, not validated, not minimised]"
            if item.sent_again:
                flags += " [sent again on purpose by its sender]"
            ui.json_output.say(
                f"fetched {item.transfer_id} from {item.sender} (batch {item.batch_id[:8]}) → {item.path}{count}; "
                f"{ack}{flags}"
            )
    for transfer_id, exc in report.refused:
        ui.err.print(
            f"labrelay: {ui.kind_of(exc)}: {transfer_id}: {exc.diagnostics()} (refused: it will not be offered or "
            "downloaded again, and its sender is told)",
            markup=False,
        )
    for transfer_id, exc in report.failed:
        ui.err.print(f"labrelay: error: {transfer_id}: {exc.diagnostics()} (retried next run)", markup=False)
    if report.skipped:
        ui.err.print(f"{len(report.skipped)} payload(s) refused earlier: not downloaded again", markup=False)
    written = [f for f in report.fetched if not f.again and f.duplicate_of is None]
    if not report.fetched and not report.refused and not report.failed:
        ui.json_output.say("nothing waiting")
    elif written:
        unparsed = sum(1 for f in written if f.unparsed)
        ui.json_output.say(
            f"wrote {len(written)} payload(s), {report.records} records"
            + (f"; {unparsed} UNPARSED (outside the routing policy)" if unparsed else "")
        )


def fetch(
    as_: AsOpt,
    server: ServerOpt,
    out: Annotated[Path, typer.Option("--out", help="Directory to write into (yours alone: refused otherwise).")],
    raw: Annotated[
        bool,
        typer.Option(
            "--raw",
            help="Write each payload as received (a standard age file) with its manifest; no receipt.",
        ),
    ] = False,
    output_format: Annotated[
        str,
        typer.Option(
            "--format",
            help="csv (as sent, plus batch_id and sender), excel (French spreadsheets: ';', BOM, formulas "
            "escaped) or parquet (typed).",
        ),
    ] = "csv",
    json_out: JsonOpt = False,
    wait: WaitOpt = None,
    cacert: CaOpt = None,
) -> None:
    """Fetch what waits for this party: verify, download, check, decrypt, write, acknowledge. A payload that
    fails a check is refused once (exit 3), never downloaded again, and the others go on; a second copy of a
    source already received is declined. Exit 1 if some payload could not be finished now (retried next run)."""
    from labrelay.client.formats import OUTPUT_FORMATS  # noqa: PLC0415 - only this command needs it

    ui.json_output.enabled = json_out
    if output_format not in OUTPUT_FORMATS:
        raise UsageError(f"unknown --format {output_format!r}", hint=f"one of {', '.join(OUTPUT_FORMATS)}")
    watch = Stopwatch()
    party = Party.load(as_)
    with (
        party_lock(party.path, party.name, "fetch", wait=wait_seconds(wait)),
        party_client(server, party, cacert) as client,
        ui.TerminalProgress(options.quiet() or json_out) as progress,
    ):
        new_out = not out.exists() and not out.is_symlink()
        report = fetch_all(party, client, out, SystemClock(), raw=raw, progress=progress, output_format=output_format)
        destroyed = [] if raw else _retire_after_fetch(party, client)
    if new_out:  # a typo in --out would otherwise put results where no loader looks, silently
        ui.warn(f"created the output directory {out.resolve()}: it did not exist")
    for gone in destroyed:
        ui.json_output.say(f"destroyed retired identity {short_key(gone.recipient)}: no payload sealed to it remains")
    warn_overruled(destroyed)
    _print_fetch(report)
    code = max((ui.exit_code_for(e) for _, e in report.refused), default=ui.EXIT_OK)
    if report.failed:
        code = max(code, ui.EXIT_OPERATIONAL)
    ui.json_output.emit({"command": "fetch", "recipient": party.name, **report.as_dict()}, code)
    if not json_out and not options.quiet():
        ui.err.print(watch.line(report.records), markup=False)
    if code:
        raise typer.Exit(code)


def receipt(
    transfer_id: Annotated[str, typer.Argument(help="The transfer to acknowledge.")],
    as_: AsOpt,
    server: ServerOpt,
    file: Annotated[
        Path | None,
        typer.Option("--file", exists=True, dir_okay=False, readable=True, help="Check this raw payload's hash first."),
    ] = None,
    cacert: CaOpt = None,
) -> None:
    """Acknowledge a transfer fetched with --raw: the relay then deletes the payload."""

    party = Party.load(as_)
    with party_client(server, party, cacert) as client:
        acknowledge(party, client, transfer_id, SystemClock(), payload_file=file)
    ui.out.print(f"receipt sent for {transfer_id}", markup=False)


BatchOpt = Annotated[
    bool,
    typer.Option("--batch", help='Per batch (one send): "n of m delivered", and how many wait, were refused, expired.'),
]
BatchIdOpt = Annotated[
    str | None,
    typer.Option("--batch-id", help="Only the batches whose id begins with this (as fetch and --batch print it)."),
]


def receipts(
    as_: AsOpt,
    server: ServerOpt,
    batch: BatchOpt = False,
    batch_id: BatchIdOpt = None,
    json_out: JsonOpt = False,
    cacert: CaOpt = None,
) -> None:
    """The sender's transfers and their recipients' signed receipts or refusals, verified; with --batch, per batch."""

    ui.json_output.enabled = json_out
    party = Party.load(as_)
    with party_client(server, party, cacert) as client:
        items, problems = verified_outbox(party, client, SystemClock())
    if batch_id is not None:
        items = in_batches(items, batch_id)
        if not items:
            raise UsageError(f"no batch whose id begins with {batch_id!r}", hint="labrelay receipts --batch lists them")
    tallies = batches_of(items) if batch else []
    for tallied in tallies:
        ui.json_output.say(tallied.line())
    if not batch or batch_id is not None:
        for item in items:
            ui.json_output.say(("  " if batch else "") + item.line())
    for problem in problems:
        ui.err.print(f"labrelay: refused: {problem}", markup=False)
    doc = {"command": "receipts", "transfers": [i.as_dict() for i in items], "problems": problems}
    if batch:
        doc["batches"] = [t.as_dict() for t in tallies]
    if problems:
        error = IntegrityError(f"{len(problems)} receipt(s) or refusal(s) failed verification")
        ui.json_output.emit(doc, ui.exit_code_for(error))
        raise error
    ui.json_output.emit(doc)
