"""The commands. Each parses its arguments, calls a use case, prints a result; errors go up to ``main``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from labrelay.cli import ui
from labrelay.client.api import RelayClient
from labrelay.client.checkpoints import CHECKPOINTS_FILE, CheckpointBook
from labrelay.client.fetch import acknowledge, fetch_all
from labrelay.client.keystore import Authority, Party
from labrelay.client.receipts import verified_outbox
from labrelay.client.send import pending, send_file, upload
from labrelay.client.trust import TrustedDirectory
from labrelay.clock import SystemClock
from labrelay.crypto.keys import SigningKey
from labrelay.domain.names import AUTHORITY_KEYID
from labrelay.domain.parties import Role
from labrelay.domain.timeutil import parse_duration, to_rfc3339
from labrelay.errors import IntegrityError, OperationalError, SecurityError, Unreadable, UsageError

if TYPE_CHECKING:  # polars loads only for the commands that read lab results
    from labrelay.batch.pipeline import Summary
    from labrelay.client.routed import RoutedSend

AsOpt = Annotated[Path, typer.Option("--as", help="The party's directory (DIR/NAME), holding its keys.")]
ServerOpt = Annotated[str, typer.Option("--server", envvar="LABRELAY_SERVER", help="The relay's URL.")]
CaOpt = Annotated[
    Path | None,
    typer.Option(
        "--cacert",
        envvar="LABRELAY_CA_BUNDLE",
        help="CA certificate(s) to trust for the relay's TLS certificate.",
    ),
]


def _quiet() -> bool:
    return bool(os.environ.get("LABRELAY_QUIET"))


def _retire_after_fetch(party: Party, client: RelayClient) -> list[str]:
    """After a (decrypting) fetch, destroy retired identities nothing needs any more."""
    from labrelay.client.rotation import RETIRED_FILE, retire_due  # noqa: PLC0415

    if not (party.path / RETIRED_FILE).exists():
        return []
    return retire_due(party, client, SystemClock().now())


def _client(server: str, keyid: str, key: SigningKey, cacert: Path | None) -> RelayClient:
    return RelayClient(server, keyid, key, SystemClock(), ca_bundle=cacert)


def _party_client(server: str, party: Party, cacert: Path | None) -> RelayClient:
    """A party's client keeps the relay's signed audit checkpoints in the party's directory."""
    book = CheckpointBook(party.path / CHECKPOINTS_FILE)
    return RelayClient(server, party.name, party.signing_key, SystemClock(), ca_bundle=cacert, checkpoints=book)


def _print_summary(summary: Summary) -> None:
    state = "reconciled" if summary.reconciled else "NOT RECONCILED"
    ui.out.print(
        f"{summary.input_format}: read {summary.read}, accepted {summary.accepted}, rejected "
        f"{summary.rejected}, held for review {summary.held} ({state})",
        markup=False,
    )
    if summary.ignored_columns:
        ui.out.print("ignored columns (never sent): " + ", ".join(summary.ignored_columns), markup=False)


def _print_routed(routed: RoutedSend) -> None:
    _print_summary(routed.summary)
    by_name = {item.recipient: item for item in routed.sent}
    for name, count in sorted(routed.summary.per_recipient.items()):
        item = by_name.get(name)
        where = f"{item.transfer_id} ({item.size} bytes)" if item else "nothing to send"
        ui.out.print(f"sent {where} to {name}: {count} records", markup=False)
    ui.out.print(
        f"policy {routed.summary.policy_version}; rejection report {routed.rejections}; "
        f"held for review {routed.review}",
        markup=False,
    )


def register_commands(app: typer.Typer) -> None:  # noqa: PLR0915 - the command table, in one place
    authority_app = typer.Typer(
        help="The directory authority: its key signs every party entry. Keep it offline.",
        no_args_is_help=True,
    )
    server_app = typer.Typer(help="Create and upgrade a relay's data directory.", no_args_is_help=True)
    party_app = typer.Typer(help="Parties: labs, recipients, admins, DPOs, each a pair of keys.", no_args_is_help=True)
    app.add_typer(authority_app, name="authority")
    app.add_typer(server_app, name="server")
    app.add_typer(party_app, name="party")

    # ------------------------------------------------------------ authority

    @authority_app.command("init")
    def authority_init(auth_dir: Annotated[Path, typer.Argument(help="Directory to create.")]) -> None:
        """Create the directory authority's key: AUTH_DIR/authority.key (0600) and AUTH_DIR/authority.pub."""

        authority = Authority.init(auth_dir)
        ui.out.print(
            f"authority key created in {auth_dir}; public key: {authority.path / 'authority.pub'}",
            markup=False,
        )

    @authority_app.command("revoke")
    def authority_revoke(
        name: Annotated[str, typer.Argument(help="Party to revoke.")],
        authority: Annotated[Path, typer.Option("--authority", help="The authority's directory (AUTH_DIR).")],
        server: ServerOpt,
        reason: Annotated[str, typer.Option(help="Why (kept in the signed revocation).")] = "revoked by the authority",
        cacert: CaOpt = None,
    ) -> None:
        """Sign a revocation of NAME and register it: its next request is refused, and clients refuse it."""

        auth = Authority.load(authority)
        envelope = auth.sign_revocation(name, reason, SystemClock().now())
        with _client(server, AUTHORITY_KEYID, auth.key, cacert) as client:
            client.register_revocation(envelope)
        ui.out.print(f"{name} revoked", markup=False)

    @authority_app.command("publish-policy")
    def authority_publish_policy(
        policy: Annotated[
            Path | None, typer.Argument(help="Policy TOML (default: the shipped default policy).")
        ] = None,
        authority: Annotated[Path, typer.Option("--authority", help="The authority's directory (AUTH_DIR).")] = Path(),
        server: ServerOpt = "",
        cacert: CaOpt = None,
    ) -> None:
        """Sign a routing policy and register it with the relay; labs route under the latest one."""
        from labrelay.client.policy import default_policy_text  # noqa: PLC0415

        auth = Authority.load(authority)
        text = policy.read_text(encoding="utf-8") if policy else default_policy_text()
        envelope = auth.sign_policy(text, SystemClock().now())
        with _client(server, AUTHORITY_KEYID, auth.key, cacert) as client:
            result = client.register_policy(envelope)
        ui.out.print(f"policy {result.get('version')} published", markup=False)

    # ------------------------------------------------------------ server

    @server_app.command("init")
    def server_init(
        data_dir: Annotated[Path, typer.Argument(help="The relay's data directory, to create.")],
        authority: Annotated[Path, typer.Option("--authority", help="AUTH_DIR/authority.pub to pin.")],
        database_url: Annotated[
            str, typer.Option(help="PostgreSQL URL (postgresql+psycopg://USER@HOST/DB); default: SQLite in DATA_DIR.")
        ] = "",
    ) -> None:
        """Create a relay data directory: settings, pinned authority key, database, payload directory."""
        from labrelay.runtime import init_data_dir  # noqa: PLC0415

        settings = init_data_dir(data_dir, authority, database_url=database_url)
        ui.out.print(
            f"relay data directory ready: {settings.data_dir} (settings in {settings.config_file})",
            markup=False,
        )

    @server_app.command("upgrade")
    def server_upgrade(
        data: Annotated[Path, typer.Option("--data", help="The relay's data directory.")],
    ) -> None:
        """Bring the relay's database schema up to this version's."""
        from labrelay.runtime import upgrade_data_dir  # noqa: PLC0415

        ui.out.print(f"schema at {upgrade_data_dir(data)}", markup=False)

    @app.command("serve")
    def serve(
        data: Annotated[Path, typer.Option("--data", help="The relay's data directory.")],
        host: Annotated[str, typer.Option(help="Address to listen on. Off loopback, TLS is required.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(min=0, max=65535, help="Port; 0 picks a free one.")] = 8000,
        tls_cert: Annotated[Path | None, typer.Option(help="TLS certificate chain (PEM).")] = None,
        tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM, 0600).")] = None,
        ready_file: Annotated[Path | None, typer.Option(help="Write {url, pid} here once listening.")] = None,
        alert_webhook: Annotated[
            str | None, typer.Option(help="URL that receives each alert as a JSON POST (overrides alert_webhook).")
        ] = None,
    ) -> None:
        """Run the relay."""
        from labrelay.cli.logging import configure_logging  # noqa: PLC0415
        from labrelay.config import load_settings  # noqa: PLC0415
        from labrelay.crypto.keys import check_private_permissions  # noqa: PLC0415
        from labrelay.http.server import check_listen, run  # noqa: PLC0415
        from labrelay.runtime import open_relay  # noqa: PLC0415

        check_listen(host, tls_cert, tls_key)
        if tls_key is not None:
            check_private_permissions(tls_key)
        configure_logging()
        relay = open_relay(load_settings(data), SystemClock(), alert_webhook=alert_webhook or "")
        try:
            run(relay.app(), host=host, port=port, tls_cert=tls_cert, tls_key=tls_key, ready_file=ready_file)
        finally:
            relay.close()

    @app.command("worker")
    def worker(
        data: Annotated[Path, typer.Option("--data", help="The relay's data directory (same settings as serve).")],
    ) -> None:
        """Run the relay's background jobs (reaper, detection, audit checkpoints) for every replica. Start one or
        more; one leads (a PostgreSQL advisory lock, or a file lock on the embedded default), the others wait
        and take over if it stops. Stops cleanly on SIGTERM or Ctrl-C."""
        import signal  # noqa: PLC0415
        import threading  # noqa: PLC0415

        from labrelay.cli.logging import configure_logging  # noqa: PLC0415
        from labrelay.runtime import run_worker  # noqa: PLC0415

        configure_logging()
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        ui.out.print(f"labrelay worker for {data} started", markup=False)
        run_worker(data, SystemClock(), stop)
        ui.out.print("labrelay worker stopped", markup=False)

    # ------------------------------------------------------------ parties

    @party_app.command("new")
    def party_new(
        name: Annotated[str, typer.Argument(help="Party name: lower-case letters, digits, hyphens (e.g. ars-11).")],
        role: Annotated[str, typer.Option(help="lab, recipient, admin or dpo.")],
        authority: Annotated[Path, typer.Option("--authority", help="AUTH_DIR/authority.pub to pin.")],
        out: Annotated[Path, typer.Option("--out", help="Parent directory; the party goes in OUT/NAME.")],
        region: Annotated[str | None, typer.Option(help="INSEE region code (e.g. 11), for regional parties.")] = None,
    ) -> None:
        """Generate a party's keys on this machine: an age identity and an Ed25519 signing key."""

        party = Party.create(out, name, Role.parse(role), region, authority, SystemClock().now())
        ui.out.print(f"party {party.name} created in {party.path}", markup=False)
        ui.out.print(f"  age recipient: {party.age_recipient}", markup=False)
        ui.out.print(f"  signing key:   {party.signing_public}", markup=False)

    @party_app.command("rotate")
    def party_rotate(
        party_dir: Annotated[Path, typer.Argument(help="The recipient's directory (DIR/NAME).")],
        authority: Annotated[Path, typer.Option("--authority", help="The authority's directory (AUTH_DIR).")],
        server: ServerOpt,
        valid_for: Annotated[str, typer.Option(help="Validity of the new signed entry (e.g. 365d).")] = "365d",
        cacert: CaOpt = None,
    ) -> None:
        """Replace a recipient's age key: a new identity, signed and registered; the old one is kept only until
        every payload sealed to it is past its deadline, then destroyed (by fetch or party retire)."""
        from labrelay.client.rotation import rotate  # noqa: PLC0415

        party = Party.load(party_dir)
        auth = Authority.load(authority)
        with _party_client(server, party, cacert) as client:
            result = rotate(party, auth, client, SystemClock().now(), parse_duration(valid_for))
        ui.out.print(f"{party.name} now receives at {result.new_recipient}", markup=False)
        for old in result.retired:
            ui.out.print(f"  retired {old}: kept until {result.destroy_after}", markup=False)

    @party_app.command("retire")
    def party_retire(
        party_dir: Annotated[Path, typer.Argument(help="The recipient's directory (DIR/NAME).")],
        server: ServerOpt,
        cacert: CaOpt = None,
    ) -> None:
        """Destroy retired age identities whose payloads are all past their deadline (fetch does it too)."""
        from labrelay.client.rotation import retire_due, retired_status  # noqa: PLC0415

        party = Party.load(party_dir)
        with _party_client(server, party, cacert) as client:
            destroyed = retire_due(party, client, SystemClock().now())
        for recipient in destroyed:
            ui.out.print(f"destroyed retired identity {recipient}", markup=False)
        for key in retired_status(party):
            if not key.get("destroyed_at"):
                ui.out.print(f"kept {key['age_recipient']} until {key['destroy_after']}", markup=False)
        if not retired_status(party):
            ui.out.print("no retired identity", markup=False)

    @party_app.command("enroll")
    def party_enroll(
        party_dir: Annotated[Path, typer.Argument(help="The party's directory (DIR/NAME).")],
        authority: Annotated[Path, typer.Option("--authority", help="The authority's directory (AUTH_DIR).")],
        server: ServerOpt,
        valid_for: Annotated[str, typer.Option(help="Validity of the signed entry (e.g. 365d).")] = "365d",
        cacert: CaOpt = None,
    ) -> None:
        """Have the authority sign the party's entry, and register it with the relay."""

        party = Party.load(party_dir)
        auth = Authority.load(authority)
        envelope = auth.sign_entry(party, SystemClock().now(), parse_duration(valid_for))
        party.save_entry(envelope)
        if party.role is Role.LAB:  # labs pseudonymise for SpF with the authority's key; recipients never get it
            party.save_pseudonym_key(auth.pseudonym_key())
        with _party_client(server, party, cacert) as client:
            result = client.register_entry(envelope)
        ui.out.print(f"{party.name} enrolled (entry {result.get('serial')})", markup=False)

    @party_app.command("show")
    def party_show(
        party_dir: Annotated[Path, typer.Argument(help="The party's directory (DIR/NAME).")],
    ) -> None:
        """Print a party's public keys and its signed entry's validity."""

        party = Party.load(party_dir)
        ui.out.print(
            f"name:          {party.name}\nrole:          {party.role.value}\n"
            f"region:        {party.region or '-'}\nage recipient: {party.age_recipient}\n"
            f"signing key:   {party.signing_public}",
            markup=False,
        )
        entry = party.entry()
        if entry is None:
            ui.out.print("entry:         not enrolled", markup=False)
        else:
            ui.out.print(
                f"entry:         valid {to_rfc3339(entry.not_before)} → {to_rfc3339(entry.not_after)}",
                markup=False,
            )

    @app.command("directory")
    def directory(as_: AsOpt, server: ServerOpt, cacert: CaOpt = None) -> None:
        """List the parties in force, as verified against the pinned authority key."""

        party = Party.load(as_)
        with _party_client(server, party, cacert) as client:
            trusted = TrustedDirectory(party.authority, client.directory(), SystemClock().now())
        for entry in trusted.in_force():
            ui.out.print(
                f"{entry.name:24} {entry.role.value:9} {entry.region or '-':3} until {to_rfc3339(entry.not_after)}",
                markup=False,
            )
        for name, why in sorted(trusted.untrusted.items()):
            ui.err.print(f"UNTRUSTED {name}: {why}", markup=False)
        if trusted.untrusted:
            raise SecurityError("the relay served directory records the pinned authority did not sign")

    # ------------------------------------------------------------ transfers

    @app.command("send")
    def send(
        file: Annotated[
            Path,
            typer.Argument(help="The file to send: lab results (CSV, HL7 v2, FHIR), or any document with --as-is."),
        ],
        as_: AsOpt,
        server: ServerOpt,
        to: Annotated[
            list[str] | None,
            typer.Option(
                "--to", help="Send only to these recipients (repeatable). Without it, to every recipient of the policy."
            ),
        ] = None,
        ttl: Annotated[str, typer.Option(help="Deadline: 30s, 15m, 12h, 7d. The relay caps it.")] = "7d",
        as_is: Annotated[
            bool,
            typer.Option("--as-is", help="Send the file unparsed (no validation, no routing) to the --to recipients."),
        ] = False,
        input_format: Annotated[str, typer.Option("--format", help="auto, csv, hl7 or fhir.")] = "auto",
        dpo: Annotated[
            str | None,
            typer.Option("--dpo", help="The DPO whose key seals the breach ledger (default: the only one enrolled)."),
        ] = None,
        ledger_retention: Annotated[
            str, typer.Option(help="How long the breach ledger of this batch is kept (default 365d, like the audit).")
        ] = "365d",
        cacert: CaOpt = None,
    ) -> None:
        """Validate, route and minimise lab results under the signed policy, seal one payload per recipient, upload.

        Records that fail validation go to a rejection report and records nobody can take yet to a review file,
        both in the lab's directory; the counts always add up. With --as-is, FILE is sealed and sent as it is.
        """
        party = Party.load(as_)
        lifetime = parse_duration(ttl)
        if not file.is_file():
            raise UsageError(f"{file} is not a readable file")
        if as_is and not to:
            raise UsageError("--as-is needs at least one --to recipient")
        try:
            with (
                _party_client(server, party, cacert) as client,
                ui.TerminalProgress(_quiet()) as progress,
            ):
                if not as_is:
                    from labrelay.client.routed import send_results  # noqa: PLC0415 - loads polars

                    try:
                        routed = send_results(
                            party,
                            client,
                            file,
                            lifetime,
                            SystemClock(),
                            restrict=to,
                            input_format=input_format,
                            progress=progress,
                            dpo=dpo,
                            ledger_retention=parse_duration(ledger_retention),
                        )
                    except Unreadable as exc:
                        if not to:
                            raise Unreadable(
                                exc.message, hint="to send another kind of document unparsed, use --as-is --to NAME"
                            ) from exc
                        ui.err.print(
                            f"labrelay: {file} is not a lab-results file ({exc.message}); sending it unparsed "
                            "to the --to recipients, as --as-is would",
                            markup=False,
                        )
                    else:
                        _print_routed(routed)
                        return
                sent = send_file(party, client, file, to or [], lifetime, SystemClock(), progress=progress)
        except OperationalError as exc:
            if exc.hint is None and pending(party):  # sealed, not (all) uploaded: nothing to redo but the upload
                raise type(exc)(
                    exc.message,
                    hint=f"the sealed payloads are kept; finish with: labrelay resume --as {as_} --server {server}",
                ) from exc
            raise
        for item in sent:
            ui.out.print(f"sent {item.transfer_id} to {item.recipient} ({item.size} bytes)", markup=False)

    @app.command("validate")
    def validate(
        file: Annotated[Path, typer.Argument(help="A lab-results file: CSV template, HL7 v2 ORU^R01 or FHIR.")],
        report: Annotated[
            Path | None, typer.Option("--report", help="Write the rejection report (record,field,reason) here.")
        ] = None,
        policy: Annotated[
            Path | None,
            typer.Option("--policy", help="Policy whose LOINC set applies (default: the shipped default policy)."),
        ] = None,
        input_format: Annotated[str, typer.Option("--format", help="auto, csv, hl7 or fhir.")] = "auto",
        summary_json: Annotated[Path | None, typer.Option("--summary", help="Write the counts as JSON here.")] = None,
    ) -> None:
        """Check every record with the same rules as send, and send nothing. Rejections are findings: exit 0 when
        the file was read, 1 when it could not be read at all."""
        from labrelay.client.validate import validate_file  # noqa: PLC0415 - polars loads only when needed

        from labrelay.client.policy import default_policy_text  # noqa: PLC0415
        from labrelay.domain.policy import parse_policy  # noqa: PLC0415

        rules = parse_policy(policy.read_text(encoding="utf-8") if policy else default_policy_text())
        today = SystemClock().now().date()
        if report is None:
            summary = validate_file(file, rules, today=today, input_format=input_format)
        else:
            with report.open("w", encoding="utf-8", newline="") as out:
                summary = validate_file(file, rules, today=today, report=out, input_format=input_format)
        _print_summary(summary)
        if report is not None:
            ui.out.print(f"rejection report: {report}", markup=False)
        if summary_json is not None:
            summary_json.write_text(json.dumps(summary.as_dict(), indent=2) + "\n", encoding="utf-8")

    @app.command("resume")
    def resume(as_: AsOpt, server: ServerOpt, cacert: CaOpt = None) -> None:
        """Finish uploads that an earlier send could not complete."""

        party = Party.load(as_)
        todo = pending(party)
        if not todo:
            ui.out.print("nothing to resume", markup=False)
            return
        with (
            _party_client(server, party, cacert) as client,
            ui.TerminalProgress(_quiet()) as progress,
        ):
            for state in todo:
                item = upload(party, client, state, progress)
                ui.out.print(f"sent {item.transfer_id} to {item.recipient} ({item.size} bytes)", markup=False)

    @app.command("fetch")
    def fetch(
        as_: AsOpt,
        server: ServerOpt,
        out: Annotated[Path, typer.Option("--out", help="Directory to write payloads into.")],
        raw: Annotated[
            bool,
            typer.Option(
                "--raw",
                help="Write each payload as received (OUT/<id>.age, a "
                "standard age file) with its manifest; no receipt.",
            ),
        ] = False,
        cacert: CaOpt = None,
    ) -> None:
        """Fetch what waits for this party: verify, download, check, decrypt, write, acknowledge."""

        party = Party.load(as_)
        with (
            _party_client(server, party, cacert) as client,
            ui.TerminalProgress(_quiet()) as progress,
        ):
            report = fetch_all(party, client, out, SystemClock(), raw=raw, progress=progress)
            destroyed = [] if raw else _retire_after_fetch(party, client)
        for recipient in destroyed:
            ui.out.print(f"destroyed retired identity {recipient}: no payload sealed to it remains", markup=False)
        for item in report.fetched:
            count = f", {item.records} records" if item.records is not None else ""
            if item.again:
                ui.out.print(
                    f"{item.transfer_id} was already received ({item.path}); acknowledged again, not decrypted again",
                    markup=False,
                )
                continue
            ack = "acknowledged" if item.acknowledged else "not acknowledged (--raw)"
            ui.out.print(f"fetched {item.transfer_id} from {item.sender} → {item.path}{count}; {ack}", markup=False)
        for transfer_id, exc in report.refused:
            ui.err.print(f"labrelay: {ui.kind_of(exc)}: {transfer_id}: {exc.diagnostics()}", markup=False)
        if not report.fetched and not report.refused:
            ui.out.print("nothing waiting", markup=False)
        if report.refused:
            raise typer.Exit(max(ui.exit_code_for(e) for _, e in report.refused))

    @app.command("receipt")
    def receipt(
        transfer_id: Annotated[str, typer.Argument(help="The transfer to acknowledge.")],
        as_: AsOpt,
        server: ServerOpt,
        file: Annotated[Path | None, typer.Option("--file", help="Check this raw payload's hash first.")] = None,
        cacert: CaOpt = None,
    ) -> None:
        """Acknowledge a transfer fetched with --raw: the relay then deletes the payload."""

        party = Party.load(as_)
        with _party_client(server, party, cacert) as client:
            acknowledge(party, client, transfer_id, SystemClock(), payload_file=file)
        ui.out.print(f"receipt sent for {transfer_id}", markup=False)

    @app.command("receipts")
    def receipts(as_: AsOpt, server: ServerOpt, cacert: CaOpt = None) -> None:
        """The sender's transfers and their recipients' signed receipts, verified."""

        party = Party.load(as_)
        with _party_client(server, party, cacert) as client:
            items, problems = verified_outbox(party, client, SystemClock())
        for item in items:
            ui.out.print(item.line(), markup=False)
        for problem in problems:
            ui.err.print(f"labrelay: refused: {problem}", markup=False)
        if problems:
            raise IntegrityError(f"{len(problems)} receipt(s) or refusal(s) failed verification")

    from labrelay.cli.admin import register_admin  # noqa: PLC0415
    from labrelay.cli.breach import register_breach  # noqa: PLC0415
    from labrelay.cli.demo import demo_command  # noqa: PLC0415 - the demo imports the whole relay

    register_admin(app)
    register_breach(app)

    app.command("demo")(demo_command)
