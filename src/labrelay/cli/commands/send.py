"""``labrelay send`` (validate, route, minimise, seal and upload a batch, or a document as-is) and ``labrelay resume``
(finish the uploads a send could not complete); the summaries they print, which ``labrelay validate`` shares."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from labrelay.cli import options, ui
from labrelay.cli.commands.common import AsOpt, CaOpt, JsonOpt, ServerOpt, WaitOpt, party_client, wait_seconds
from labrelay.client.api import RelayClient
from labrelay.client.keystore import Party
from labrelay.client.lock import party_lock
from labrelay.client.progress import Progress, Stopwatch
from labrelay.client.send import SendOutcome, pending, send_file
from labrelay.clock import SystemClock
from labrelay.domain.timeutil import parse_duration
from labrelay.errors import OperationalError, UsageError

if TYPE_CHECKING:  # polars loads only for the commands that read lab results
    from labrelay.batch.pipeline import Summary
    from labrelay.client.routed import HeldSend, RoutedSend, SendOptions
    from labrelay.client.send import RejectLimit


def print_summary(summary: Summary) -> None:
    state = "reconciled" if summary.reconciled else "NOT RECONCILED"
    ui.json_output.say(
        f"{summary.input_format}: read {summary.read}, accepted {summary.accepted}, rejected "
        f"{summary.rejected}, held for review {summary.held} ({state})"
    )
    if summary.ignored_columns:
        ui.json_output.say("ignored columns (never sent): " + ", ".join(summary.ignored_columns))
    if summary.missing_columns:
        ui.json_output.say("optional columns left out (read as empty): " + ", ".join(summary.missing_columns))


def print_held(summary: Summary, hypothetical: bool = False) -> None:
    from labrelay.client.routed import held_line  # noqa: PLC0415 - loads polars

    for name, count in sorted(summary.held_for.items()):
        line = held_line(name, count.records, count.positives)
        if hypothetical:
            line = line.replace(" not enrolled", "")
        ui.json_output.say(line)


def _print_outcome(outcome: SendOutcome, *, unparsed: bool = False) -> None:
    for item in outcome.sent:
        ui.json_output.say(f"sent {item.transfer_id} ({item.size} bytes) to {item.recipient}")
    if outcome.already:
        total = len(outcome.transfers)
        ui.json_output.say(
            f"already sent as batch {outcome.batch_id} ({outcome.delivered} of {total} delivered)"
            + (f"; finished {len(outcome.sent)} interrupted upload(s)" if outcome.sent else "")
        )
    elif unparsed:
        ui.json_output.say(
            f"batch {outcome.batch_id}: sent unparsed (not validated, not minimised), as the policy allows"
        )


def _print_routed(routed: RoutedSend, as_: Path, server: str) -> None:
    if routed.already or routed.summary is None:
        _print_outcome(routed)
        return
    summary = routed.summary
    print_summary(summary)
    by_name = {item.recipient: item for item in routed.sent}
    for name, count in sorted(summary.per_recipient.items()):
        item = by_name.get(name)
        where = f"{item.transfer_id} ({item.size} bytes)" if item else "nothing"
        ui.json_output.say(f"sent {where} to {name}: {count} records")
    print_held(summary)
    if any(name for name in summary.held_for):
        ui.json_output.say(
            "held shares went to every other recipient the policy gives them; once the missing ones are enrolled: "
            f"labrelay send --held {routed.batch_id[:8]} --as {as_} --server {server}"
        )
    ui.json_output.say(
        f"batch {routed.batch_id}; policy {summary.policy_version}; rejection report {routed.rejections}; "
        f"held for review {routed.review}"
    )


def _print_held_send(result: HeldSend) -> None:
    if result.delivered is not None:
        ui.json_output.say(f"held shares of batch {result.original}:")
        _print_routed(result.delivered, Path(), "")
    for name, count in sorted(result.remaining.items()):
        ui.json_output.say(f"still held: {name or 'residence no ARS covers'}: {count} records")


FileArg = Annotated[
    Path | None,
    typer.Argument(help="The file to send: lab results (CSV, HL7 v2, FHIR), or any document with --as-is."),
]
ToOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--to", help="Send only to these recipients (repeatable). Without it, to every recipient of the policy."
    ),
]
TtlOpt = Annotated[str, typer.Option(help="Deadline: 30s, 15m, 12h, 7d; at most the relay's maximum.")]
AsIsOpt = Annotated[
    bool,
    typer.Option(
        "--as-is",
        help="Send the file unparsed (no validation, no routing) to the --to recipients, if the policy lets "
        "them receive unparsed documents.",
    ),
]
AgainOpt = Annotated[
    bool, typer.Option("--again", help="Send a file that was sent before again, as a new batch, on purpose.")
]
HeldOpt = Annotated[
    str | None,
    typer.Option("--held", metavar="BATCH", help="Deliver a batch's held shares to the recipients enrolled since."),
]
MaxRejectedOpt = Annotated[
    str | None,
    typer.Option("--max-rejected", metavar="N|P%", help="Send nothing (exit 1) if more records are rejected."),
]
FailOnHeldOpt = Annotated[
    bool, typer.Option("--fail-on-held", help="Send nothing (exit 1) if any record would be held for review.")
]
InputFormatOpt = Annotated[str, typer.Option("--format", help="auto, csv, hl7 or fhir.")]
DpoOpt = Annotated[
    str | None,
    typer.Option("--dpo", help="The DPO whose key seals the breach ledger (default: the only one enrolled)."),
]
LedgerRetentionOpt = Annotated[
    str, typer.Option(help="How long the breach ledger of this batch is kept (default 365d, like the audit).")
]


def send(
    as_: AsOpt,
    server: ServerOpt,
    file: FileArg = None,
    to: ToOpt = None,
    ttl: TtlOpt = "7d",
    as_is: AsIsOpt = False,
    again: AgainOpt = False,
    held: HeldOpt = None,
    max_rejected: MaxRejectedOpt = None,
    fail_on_held: FailOnHeldOpt = False,
    input_format: InputFormatOpt = "auto",
    dpo: DpoOpt = None,
    ledger_retention: LedgerRetentionOpt = "365d",
    json_out: JsonOpt = False,
    wait: WaitOpt = None,
    cacert: CaOpt = None,
) -> None:
    """Validate, route and minimise lab results under the signed policy, seal one payload per recipient, upload.

    Records that fail validation go to a rejection report and shares nobody can take yet to a review file, both
    in the lab's directory; the counts always add up. A file sent before is not sent again: its batch is
    finished instead (--again makes a new one). A file that is not lab results is refused unless --as-is.
    Exit 0: sent (or already sent); 1: nothing sent (every record rejected, a threshold crossed, relay down);
    2: usage (not a results file, bad option); 3: refused by a security check.
    """
    from labrelay.client.send import RejectLimit, tidy  # noqa: PLC0415 - only this command needs it

    ui.json_output.enabled = json_out
    watch = Stopwatch()
    party = Party.load(as_)
    lifetime = parse_duration(ttl)
    limit = RejectLimit.parse(max_rejected) if max_rejected is not None else None
    _check_send_arguments(file, to, as_is, held)
    with (
        party_lock(party.path, party.name, "send", wait=wait_seconds(wait)),
        party_client(server, party, cacert) as client,
        ui.TerminalProgress(options.quiet() or json_out) as progress,
    ):
        tidy(party)
        try:
            if held is not None or not as_is:
                send_options = _routed_options(
                    lifetime, to, input_format, dpo, ledger_retention, again, limit, fail_on_held
                )
                records = _send_routed(party, client, file, held, send_options, progress, as_, server)
            else:
                assert file is not None  # noqa: S101 - checked by _check_send_arguments
                outcome = send_file(
                    party, client, file, to or [], lifetime, SystemClock(), progress=progress, again=again
                )
                _print_outcome(outcome, unparsed=True)
                records = 0
                ui.json_output.emit({"command": "send", "unparsed": True, **outcome.as_dict()})
        except OperationalError as exc:
            if exc.hint is None and pending(party):  # sealed, not (all) uploaded: nothing to redo but the upload
                raise type(exc)(
                    exc.message,
                    hint=f"the sealed payloads are kept; finish with: labrelay resume --as {as_} --server {server}",
                ) from exc
            raise
    if not json_out and not options.quiet():
        ui.err.print(watch.line(records), markup=False)


def _check_send_arguments(file: Path | None, to: list[str] | None, as_is: bool, held: str | None) -> None:
    """What to send: a FILE (a batch, or a document with --as-is and --to), or a batch's held shares (--held)."""
    if held is not None:
        if file is not None or as_is:
            raise UsageError("--held BATCH delivers a batch's held shares: give no FILE and no --as-is")
    elif file is None:
        raise UsageError("no file to send", hint="labrelay send FILE --as PARTY --server URL")
    elif not file.is_file():
        what = "is a directory, not a results file" if file.is_dir() else "is not a readable file"
        raise UsageError(f"{file} {what}")
    if as_is and not to:
        raise UsageError("--as-is needs at least one --to recipient")


def _routed_options(
    lifetime: timedelta,
    to: list[str] | None,
    input_format: str,
    dpo: str | None,
    ledger_retention: str,
    again: bool,
    limit: RejectLimit | None,
    fail_on_held: bool,
) -> SendOptions:
    """The routed send's options, from the command's."""
    from labrelay.client.routed import SendOptions  # noqa: PLC0415 - loads polars

    return SendOptions(
        ttl=lifetime,
        restrict=to,
        input_format=input_format,
        dpo=dpo,
        ledger_retention=parse_duration(ledger_retention),
        again=again,
        max_rejected=limit,
        fail_on_held=fail_on_held,
    )


def _send_routed(
    party: Party,
    client: RelayClient,
    file: Path | None,
    held: str | None,
    send_options: SendOptions,
    progress: Progress,
    as_: Path,
    server: str,
) -> int:
    """Send a batch under the policy (or deliver its held shares), print what went where; the records sent."""
    from labrelay.client.routed import send_held, send_results  # noqa: PLC0415 - loads polars

    if held is not None:
        result = send_held(party, client, held, SystemClock(), send_options, progress=progress)
        _print_held_send(result)
        ui.json_output.emit({"command": "send", **result.as_dict()})
        return result.delivered.records if result.delivered else 0
    assert file is not None  # noqa: S101 - checked by _check_send_arguments
    routed = send_results(party, client, file, SystemClock(), send_options, progress=progress)
    _print_routed(routed, as_, server)
    ui.json_output.emit({"command": "send", **routed.as_dict()})
    return routed.records


def resume(
    as_: AsOpt,
    server: ServerOpt,
    discard_id: Annotated[
        str | None,
        typer.Option("--discard", metavar="ID", help="Remove one pending upload (it will never be sent)."),
    ] = None,
    json_out: JsonOpt = False,
    wait: WaitOpt = None,
    cacert: CaOpt = None,
) -> None:
    """Finish uploads that an earlier send could not complete. One the relay refuses for good (a deadline over
    its maximum…) is reported and kept, the others go on; one past its deadline is removed."""
    from labrelay.client.send import discard, resume_all, tidy  # noqa: PLC0415 - only this command needs it

    ui.json_output.enabled = json_out
    watch = Stopwatch()
    party = Party.load(as_)
    with party_lock(party.path, party.name, "resume", wait=wait_seconds(wait)):
        tidy(party)
        if discard_id is not None:
            with party_client(server, party, cacert) as client:
                gone = discard(party, client, discard_id)
            ui.json_output.say(f"discarded {gone}: removed from the outbox, cancelled on the relay")
            ui.json_output.emit({"command": "resume", "discarded": gone})
            return
        if not pending(party):
            ui.json_output.say("nothing to resume")
            ui.json_output.emit({"command": "resume", "uploaded": [], "expired": [], "stuck": []})
            return
        with (
            party_client(server, party, cacert) as client,
            ui.TerminalProgress(options.quiet() or json_out) as progress,
        ):
            result = resume_all(party, client, SystemClock(), progress)
    for item in result.sent:
        ui.json_output.say(f"sent {item.transfer_id} to {item.recipient} ({item.size} bytes)")
    for transfer_id in result.expired:
        ui.json_output.say(f"removed {transfer_id}: its deadline passed before it could be uploaded")
    for transfer_id, exc in result.stuck:
        ui.err.print(
            f"labrelay: {ui.kind_of(exc)}: {transfer_id} cannot be uploaded: {exc.diagnostics()}; kept — remove "
            f"it with: labrelay resume --discard {transfer_id[:8]} --as {as_} --server {server}",
            markup=False,
        )
    code = max((ui.exit_code_for(e) for _, e in result.stuck), default=ui.EXIT_OK)
    ui.json_output.emit({"command": "resume", **result.as_dict()}, code)
    if not json_out and not options.quiet():
        ui.err.print(watch.line(len(result.sent), "uploads"), markup=False)
    if code:
        raise typer.Exit(code)
