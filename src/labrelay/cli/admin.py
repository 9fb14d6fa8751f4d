"""``labrelay admin``: the operator's commands: retention proof and reaper on a relay's data directory (running or
stopped), and the kill switch — freeze, unfreeze, lock, unlock, revoke, quarantine — signed by an admin party and
sent through the API (``--server``) or applied to the data directory directly (``--data``) when the API is down.

``labrelay audit``: verify the audit log (``--data``), export it as NDJSON, and check a party's kept checkpoints
against a running relay."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from labrelay.cli import options, ui
from labrelay.cli.printable import printable_json
from labrelay.clock import SystemClock
from labrelay.domain.audit import Checkpoint
from labrelay.errors import AuditTampered, RetentionViolation, UsageError

DataOpt = Annotated[Path, typer.Option("--data", help="The relay's data directory.")]
MaybeData = Annotated[
    Path | None, typer.Option("--data", help="Apply to this relay data directory directly (when the API is down).")
]
MaybeServer = Annotated[str | None, typer.Option("--server", envvar="LABRELAY_SERVER", help="The relay's URL.")]
AdminAs = Annotated[Path, typer.Option("--as", help="The admin party's directory (DIR/NAME), whose key signs.")]
CaOpt = Annotated[Path | None, typer.Option("--cacert", envvar="LABRELAY_CA_BUNDLE", help="CA to trust for TLS.")]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="A short code for the audit trail, e.g. incident-42.")]


def _command(
    action: str,
    target: str | None,
    reason: str | None,
    as_: Path,
    server: str | None,
    data: Path | None,
    cacert: Path | None,
) -> None:
    """Sign one admin command with the admin party's key; send it, or apply it to the data directory."""
    from labrelay.client.keystore import Party  # noqa: PLC0415 - only the commands that sign need it
    from labrelay.crypto.envelopes import sign_envelope  # noqa: PLC0415 - only the commands that sign need it
    from labrelay.domain.admin import AdminAction, AdminCommand  # noqa: PLC0415 - only the commands that sign need it

    if (server is None) == (data is None):
        raise UsageError("give exactly one of --server URL (through the API) or --data DATA_DIR (directly)")
    party = Party.load(as_)
    now = SystemClock().now()
    if data is not None:
        from labrelay.config import load_settings  # noqa: PLC0415 - only the relay's commands read its settings
        from labrelay.operations import admin_direct, relay_verify_key  # noqa: PLC0415 - the relay's stack loads only for the command that needs it

        relay = relay_verify_key(load_settings(data)).b64
        command = AdminCommand.new(AdminAction(action), target, reason, now, relay)
        envelope = sign_envelope(command.payload(), party.signing_key, party.name)
        result = admin_direct(data, envelope, SystemClock()).as_dict()
    else:
        assert server is not None  # noqa: S101 - checked above
        with options.relay_client(server, party.name, party.signing_key, cacert) as client:
            relay = client.audit_checkpoint().relay_key  # the command is bound to this relay
            command = AdminCommand.new(AdminAction(action), target, reason, now, relay)
            result = client.admin_command(sign_envelope(command.payload(), party.signing_key, party.name))
    changed = "done" if result["changed"] else "no change (already so)"
    ui.out.print(f"{action}{' ' + target if target else ''}: {changed}", markup=False)
    for tid in result.get("quarantined", []):
        ui.out.print(f"quarantined {tid}", markup=False)


def _relay_command(action: str, doc: str) -> Callable[..., None]:
    def command(
        as_: AdminAs, server: MaybeServer = None, data: MaybeData = None, reason: ReasonOpt = None, cacert: CaOpt = None
    ) -> None:
        _command(action, None, reason, as_, server, data, cacert)

    command.__doc__ = doc
    return command


def _target_command(action: str, what: str, doc: str) -> Callable[..., None]:
    metavar = "TRANSFER_ID" if action == "quarantine" else "NAME"

    def command(
        target: str,
        as_: AdminAs,
        server: MaybeServer = None,
        data: MaybeData = None,
        reason: ReasonOpt = None,
        cacert: CaOpt = None,
    ) -> None:
        _command(action, target, reason, as_, server, data, cacert)

    # Annotations are strings here (PEP 563) and a string cannot name this closure's ``what``: give typer the object.
    command.__annotations__["target"] = Annotated[str, typer.Argument(help=what, metavar=metavar)]
    command.__doc__ = doc
    return command


RELAY_ACTIONS = (
    (
        "freeze",
        "Freeze the relay: from the next request on, no upload and no download; only audit reads and "
        "admin commands go through.",
    ),
    ("unfreeze", "Lift a freeze."),
)
"""The kill switch's relay-wide commands: (action, help)."""

TARGET_ACTIONS = (
    (
        "revoke",
        "The party to revoke on this relay.",
        "Refuse the party's next request and quarantine its pending "
        "transfers (sent or to receive). The directory authority's revocation (labrelay authority revoke) makes it "
        "permanent everywhere.",
    ),
    ("lock", "The party to lock.", "Refuse the party's requests until unlocked (what a detection rule does)."),
    ("unlock", "The party to unlock.", "Lift a lock or an admin revocation (not the authority's revocation)."),
    (
        "quarantine",
        "The transfer to hold.",
        "Hold one transfer: never served or acknowledged again; still deleted at its deadline.",
    ),
)
"""The kill switch's commands on one party or transfer: (action, what the argument is, help)."""


def register_admin(app: typer.Typer) -> None:
    admin_app = typer.Typer(
        help="Operate a relay: retention proof, reaper, and the kill switch (freeze, revoke, quarantine).",
        no_args_is_help=True,
    )
    app.add_typer(admin_app, name="admin")
    audit_app = typer.Typer(help="The audit log: verify, export, check a party's checkpoints.", no_args_is_help=True)
    app.add_typer(audit_app, name="audit")
    for action, doc in RELAY_ACTIONS:
        admin_app.command(action)(_relay_command(action, doc))
    for action, what, doc in TARGET_ACTIONS:
        admin_app.command(action)(_target_command(action, what, doc))
    admin_app.command("status")(status)
    audit_app.command("verify")(audit_verify)
    audit_app.command("export")(audit_export)
    audit_app.command("check")(audit_check)
    admin_app.command("retention-check")(retention_check)
    admin_app.command("passkeys")(passkeys)
    admin_app.command("reap")(reap)


def status(
    as_: AdminAs,
    server: Annotated[str, typer.Option("--server", envvar="LABRELAY_SERVER", help="The relay's URL.")],
    cacert: CaOpt = None,
) -> None:
    """Frozen or not, locked and revoked parties, quarantined transfers, recent alerts (JSON)."""
    from labrelay.client.keystore import Party  # noqa: PLC0415 - only the commands that sign need it

    party = Party.load(as_)
    with options.relay_client(server, party.name, party.signing_key, cacert) as client:
        ui.print_lines(ui.out, json.dumps(client.admin_status(), indent=2))


def audit_verify(
    data: DataOpt,
    checkpoints: Annotated[
        list[Path] | None,
        typer.Option("--checkpoints", help="A party's checkpoints.json (repeatable): what the relay signed."),
    ] = None,
    relay_key: Annotated[
        Path | None,
        typer.Option("--relay-key", help="The relay's public key as published (PEM); default DATA_DIR/relay.pub."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Verify the audit log: the hash chain, the signed head and anchor, and checkpoints clients hold. Names
    the first bad record. Reads only; works on a stopped relay. Exit 0 if it holds, 3 otherwise."""
    from labrelay.crypto.keys import load_verify_key_file  # noqa: PLC0415 - only this command needs it
    from labrelay.operations import audit_verify as run_verify  # noqa: PLC0415 - the relay's stack loads only for the command that needs it

    pinned = load_verify_key_file(relay_key) if relay_key else None
    report = run_verify(data, SystemClock(), _load_checkpoints(checkpoints or []), pinned)
    if as_json:
        ui.print_lines(ui.out, json.dumps(report.as_dict(), indent=2))
    else:
        ui.out.print(
            f"records {report.first_seq or '-'}..{report.last_seq or '-'} ({report.links} verified), "
            f"client checkpoints checked: {report.checkpoints_checked}",
            markup=False,
        )
        for seq, problem in report.problems:
            ui.out.print(f"FAIL record {seq if seq is not None else '-'}: {problem}", markup=False)
    if not report.ok:
        raise AuditTampered(
            f"audit log does not verify; first bad record: {report.first_bad_seq}",
            hint="keep a copy of the database as it is (evidence) and see docs/audit.md",
        )
    ui.err.print("audit log verifies", markup=False)


def audit_export(
    data: MaybeData = None,
    as_: Annotated[Path | None, typer.Option("--as", help="An admin party, to export through the API.")] = None,
    server: MaybeServer = None,
    after: Annotated[int, typer.Option(min=0, help="Only records after this sequence number.")] = 0,
    out: Annotated[Path | None, typer.Option("--out", help="Write here instead of stdout.")] = None,
    cacert: CaOpt = None,
) -> None:
    """The audit log as NDJSON, one record per line with its hashes (for a SIEM)."""
    import sys  # noqa: PLC0415 - only this command writes to stdout directly

    sink = out.open("w", encoding="utf-8") if out else sys.stdout
    try:
        if data is not None:
            from labrelay.operations import audit_export as run_export  # noqa: PLC0415 - the relay's stack loads only for the command that needs it

            for doc in run_export(data, after):
                sink.write(json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n")
        elif as_ is not None and server is not None:
            from labrelay.client.keystore import Party  # noqa: PLC0415 - only the commands that sign need it

            party = Party.load(as_)
            with options.relay_client(server, party.name, party.signing_key, cacert) as client:
                # Up to the head as of now: each export request is itself audited, so the log keeps growing.
                until = client.audit_checkpoint().seq
                while after < until and (chunk := client.audit_export(after)):
                    for line in chunk.decode("utf-8").splitlines():
                        seq = json.loads(line)["seq"]
                        if seq > until:
                            break
                        sink.write((line if out else printable_json(line)) + "\n")  # stdout may be a terminal
                        after = seq
        else:
            raise UsageError("give --data DATA_DIR, or --as ADMIN_DIR with --server URL")
    finally:
        if out:
            sink.close()


def audit_check(
    as_: Annotated[Path, typer.Option("--as", help="The party's directory, with its checkpoints.json.")],
    server: Annotated[str, typer.Option("--server", envvar="LABRELAY_SERVER", help="The relay's URL.")],
    cacert: CaOpt = None,
) -> None:
    """Check that the relay's audit log still holds every record it signed to this party. Exit 3 if the
    relay rewrote its history."""
    from labrelay.client.checkpoints import CHECKPOINTS_FILE, CheckpointBook  # noqa: PLC0415 - only this command needs it
    from labrelay.client.history import check_history  # noqa: PLC0415 - only this command needs it
    from labrelay.client.keystore import Party  # noqa: PLC0415 - only the commands that sign need it

    party = Party.load(as_)
    book = CheckpointBook(party.path / CHECKPOINTS_FILE)
    with options.relay_client(server, party.name, party.signing_key, cacert, book) as client:
        result = check_history(client, book, SystemClock())
    ui.out.print(
        f"checked {result.checked} checkpoint(s), {result.pruned} pruned by retention; the relay's log holds them",
        markup=False,
    )


def retention_check(
    data: DataOpt,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Prove that nothing outlives its deadline: no payload past it, no epoch key past its epoch, no orphan.
    Reads only; works on a stopped relay. Exit 0 when every check holds, 3 otherwise."""
    from labrelay.operations import retention_report  # noqa: PLC0415 - the relay's stack loads only for the command that needs it

    report = retention_report(data, SystemClock())
    if as_json:
        ui.print_lines(ui.out, json.dumps(report.as_dict(), indent=2))
    else:
        for finding in report.findings:
            mark = "ok  " if finding.ok else "FAIL"
            ui.out.print(f"{mark} {finding.check}: {finding.detail}", markup=False)
            for item in finding.items:
                ui.out.print(f"       {item}", markup=False)
        oldest = report.oldest
        ui.out.print(
            f"payloads on the relay: {report.payloads}"
            + (
                f"; oldest {oldest['transfer_id']}, {oldest['age']} old, deadline {oldest['deadline']}"
                if oldest
                else ""
            ),
            markup=False,
        )
    failures = report.failures()
    if failures:
        raise RetentionViolation(
            "retention check failed: " + "; ".join(f"{f.check}: {f.detail}" for f in failures),
            hint="docs/retention.md says what each check means and what to do",
        )


def passkeys(
    name: Annotated[str, typer.Argument(help="The party whose console passkeys to list or remove.")],
    data: DataOpt,
    remove: Annotated[bool, typer.Option("--remove", help="Unbind them all and end its sessions.")] = False,
) -> None:
    """List a party's console passkeys; --remove unbinds them (a lost or stolen authenticator) and ends its
    console sessions. The party can then register a new one with its signing key (lock or revoke it to keep
    it out). Audited as console:passkey-remove."""
    from labrelay.operations import console_passkeys  # noqa: PLC0415 - the relay's stack loads only for the command that needs it

    held = console_passkeys(data, name, SystemClock(), remove=remove)
    verb = "removed" if remove else "bound"
    for credential in held:
        ui.out.print(f"{verb} {credential[:16]}…", markup=False)
    ui.out.print(f"{name}: {len(held)} passkey(s) {verb}", markup=False)


def reap(data: DataOpt) -> None:
    """Run one reaper pass now: expire transfers past their deadline, delete their bytes and whatever a
    crash left, destroy epoch keys whose epoch has ended. Safe while the relay runs."""
    from labrelay.operations import reap_once  # noqa: PLC0415 - the relay's stack loads only for the command that needs it

    result = reap_once(data, SystemClock())
    ui.out.print(
        f"expired {result['expired']}, repaired {result['repaired']}, epoch keys destroyed "
        f"{result['keys_destroyed']}, leftovers removed {result['leftovers']}",
        markup=False,
    )


def _load_checkpoints(paths: list[Path]) -> list[Checkpoint]:
    """Checkpoints from parties' checkpoints.json files (every relay in them; the verifier keeps the ones that
    name this relay's key and reports the others' signatures as not this relay's)."""
    from labrelay.client.checkpoints import CheckpointBook  # noqa: PLC0415 - only audit verify needs it

    found: list[Checkpoint] = []
    for path in paths:
        if not path.is_file():
            raise UsageError(f"{path} not found")
        book = CheckpointBook(path)
        for url in book.urls():
            held = book.book(url)
            if held is not None:
                found.extend(held.all())
    return found
