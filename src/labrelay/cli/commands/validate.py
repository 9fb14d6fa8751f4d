"""``labrelay validate``: every record checked with the same rules as send, counted where each would go; nothing
sent."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from labrelay.cli import options, ui
from labrelay.cli.commands.common import CaOpt, JsonOpt, party_client
from labrelay.cli.commands.send import print_held, print_summary
from labrelay.client.files import SafeDir
from labrelay.client.keystore import Party
from labrelay.client.progress import ProgressTask, Stopwatch
from labrelay.client.trust import TrustedDirectory
from labrelay.clock import SystemClock
from labrelay.domain.parties import Role
from labrelay.errors import UsageError

if TYPE_CHECKING:  # polars loads only for the commands that read lab results
    from labrelay.batch.csv_reader import Batch
    from labrelay.domain.policy import Policy


def _advance(task: ProgressTask) -> Callable[[Batch], None]:
    return lambda batch: task.advance(batch.read)


class _OutputFile:
    """A report the user asked for, written unnamed beside its final name and named once complete: a killed run
    leaves no partial file behind."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.dir = SafeDir.open(path.parent if str(path.parent) else Path(), create=False, check=False)
        self.file = self.dir.temp(0o600)
        self.text = io.TextIOWrapper(self.file.handle, encoding="utf-8", newline="", write_through=True)

    def __enter__(self) -> _OutputFile:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        with contextlib.suppress(ValueError):
            self.text.detach()
        try:
            if exc_type is None:
                self.file.replace(self.path.name)
            else:
                self.file.discard()
        finally:
            self.dir.close()


def _in_force(as_: Path, server: str, cacert: Path | None) -> tuple[Policy, set[str]]:
    """For a preview: the policy in force and the recipients enrolled under it. A national recipient not enrolled
    is said here: a send would refuse to start (validate has no --to, so the hint says what else can be done)."""
    from labrelay.client.policy import current_policy  # noqa: PLC0415 - only a preview needs it

    party = Party.load(as_)
    with party_client(server, party, cacert) as client:
        trusted = TrustedDirectory(party.authority, client.directory(), SystemClock().now())
        rules = current_policy(client, party.authority, party.path, SystemClock().now())
    enrolled = {e.name for e in trusted.in_force() if e.role is Role.RECIPIENT}
    absent = sorted(r.name for r in rules.recipients if not r.by_region and r.name not in enrolled)
    if absent:
        raise UsageError(
            f"policy {rules.version} sends to {', '.join(absent)}, which is not enrolled: a send would refuse "
            "to start until it is",
            hint=f"enrol {', '.join(absent)}; meanwhile `labrelay send FILE --to NAME …` sends to the others, and "
            "`labrelay validate FILE` without --as and --server checks the file alone",
        )
    return rules, enrolled


def validate(
    file: Annotated[Path, typer.Argument(help="A lab-results file: CSV template, HL7 v2 ORU^R01 or FHIR.")],
    report: Annotated[
        Path | None, typer.Option("--report", help="Write the rejection report (record,field,reason) here.")
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option("--policy", help="Policy to check against (default: the shipped default policy)."),
    ] = None,
    input_format: Annotated[str, typer.Option("--format", help="auto, csv, hl7 or fhir.")] = "auto",
    summary_json: Annotated[Path | None, typer.Option("--summary", help="Write the counts as JSON here.")] = None,
    as_: Annotated[
        Path | None,
        typer.Option("--as", help="With --server: preview under the policy and directory in force for this lab."),
    ] = None,
    server: Annotated[str | None, typer.Option("--server", help="The relay's URL (with --as: a preview).")] = None,
    json_out: JsonOpt = False,
    cacert: CaOpt = None,
) -> None:
    """Check every record with the same rules as send, count where each would go, and send nothing.
    Rejections are findings: exit 0 when the file was read, 2 when it is not a lab-results file."""
    from labrelay.client.validate import expected_records, validate_file  # noqa: PLC0415 - loads polars
    from labrelay.domain.policy import parse_policy  # noqa: PLC0415 - only this command needs it

    ui.json_output.enabled = json_out
    watch = Stopwatch()
    if (as_ is None) != (server is None):
        raise UsageError("a preview against a relay needs both --as LAB and --server URL")
    enrolled = None
    if as_ is not None and server is not None:
        rules, enrolled = _in_force(as_, server, cacert)
    else:
        from labrelay.client.policy import default_policy_text  # noqa: PLC0415 - only this command needs it

        rules = parse_policy(policy.read_text(encoding="utf-8") if policy else default_policy_text())
    today = SystemClock().now().date()
    with ui.TerminalProgress(options.quiet() or json_out) as progress:
        task = progress.task(f"validating {file.name}", expected_records(file), "records")
        if report is None:
            summary = validate_file(
                file, rules, today=today, input_format=input_format, enrolled=enrolled, on_batch=_advance(task)
            )
        else:
            with _OutputFile(report) as out:
                summary = validate_file(
                    file,
                    rules,
                    today=today,
                    report=out.text,
                    input_format=input_format,
                    enrolled=enrolled,
                    on_batch=_advance(task),
                )
        task.done()
    print_summary(summary)
    verb = "would send" if enrolled is not None else "under this policy, would go"
    for name, count in sorted(summary.per_recipient.items()):
        ui.json_output.say(f"{verb} to {name}: {count} records")
    print_held(summary, enrolled is None)
    if report is not None:
        ui.json_output.say(f"rejection report: {report}")
    if summary_json is not None:
        with _OutputFile(summary_json) as out:
            out.text.write(json.dumps(summary.as_dict(), indent=2) + "\n")
    ui.json_output.emit({"command": "validate", "preview": enrolled is not None, "summary": summary.as_dict()})
    if not json_out and not options.quiet():
        ui.err.print(watch.line(summary.read), markup=False)
