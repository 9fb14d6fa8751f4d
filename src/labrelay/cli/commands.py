"""The commands. Each parses its arguments, calls a use case, prints a result; errors go up to ``main``."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from labrelay.cli import options, ui
from labrelay.client.api import RelayClient
from labrelay.client.checkpoints import CHECKPOINTS_FILE, CheckpointBook
from labrelay.client.fetch import FetchReport, acknowledge, fetch_all
from labrelay.client.files import SafeDir
from labrelay.client.keystore import Authority, Party
from labrelay.client.lock import party_lock
from labrelay.client.progress import ProgressTask, Stopwatch
from labrelay.client.receipts import verified_outbox
from labrelay.client.send import SendOutcome, pending, send_file
from labrelay.client.trust import TrustedDirectory
from labrelay.clock import SystemClock
from labrelay.crypto.keys import SigningKey
from labrelay.domain.names import AUTHORITY_KEYID
from labrelay.domain.parties import Role
from labrelay.domain.timeutil import parse_duration, to_rfc3339
from labrelay.errors import IntegrityError, OperationalError, SecurityError, UsageError

if TYPE_CHECKING:  # polars loads only for the commands that read lab results
    from labrelay.batch.csv_reader import Batch
    from labrelay.batch.pipeline import Summary
    from labrelay.client.rotation import Destroyed
    from labrelay.client.routed import HeldSend, RoutedSend

AsOpt = Annotated[Path, typer.Option("--as", help="The party's directory (DIR/NAME), holding its keys.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout (also on failure).")]
WaitOpt = Annotated[
    str | None,
    typer.Option("--wait", metavar="DURATION", help="If another run for this party holds its lock, wait this long."),
]
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
    return options.quiet()


def _retire_after_fetch(party: Party, client: RelayClient) -> list[Destroyed]:
    """After a (decrypting) fetch, destroy retired identities nothing needs any more."""
    from labrelay.client.rotation import RETIRED_FILE, retire_due  # noqa: PLC0415

    if not (party.path / RETIRED_FILE).exists():
        return []
    return retire_due(party, client, SystemClock().now())


def _warn_overruled(destroyed: list[Destroyed]) -> None:
    """Say, once (the run that destroys it), that a retired identity was destroyed against the relay's word."""
    for gone in destroyed:
        note = gone.note()
        if note is not None:
            ui.err.print(f"labrelay: warning: {note}", markup=False)


def _client(server: str, keyid: str, key: SigningKey, cacert: Path | None) -> RelayClient:
    return options.relay_client(server, keyid, key, cacert)


def _party_client(server: str, party: Party, cacert: Path | None) -> RelayClient:
    """A party's client keeps the relay's signed audit checkpoints in the party's directory."""
    book = CheckpointBook(party.path / CHECKPOINTS_FILE)
    return options.relay_client(server, party.name, party.signing_key, cacert, book)


def _print_summary(summary: Summary) -> None:
    state = "reconciled" if summary.reconciled else "NOT RECONCILED"
    ui.json_output.say(
        f"{summary.input_format}: read {summary.read}, accepted {summary.accepted}, rejected "
        f"{summary.rejected}, held for review {summary.held} ({state})"
    )
    if summary.ignored_columns:
        ui.json_output.say("ignored columns (never sent): " + ", ".join(summary.ignored_columns))
    if summary.missing_columns:
        ui.json_output.say("optional columns left out (read as empty): " + ", ".join(summary.missing_columns))


def _print_held(summary: Summary, hypothetical: bool = False) -> None:
    from labrelay.client.routed import held_line  # noqa: PLC0415

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
    _print_summary(summary)
    by_name = {item.recipient: item for item in routed.sent}
    for name, count in sorted(summary.per_recipient.items()):
        item = by_name.get(name)
        where = f"{item.transfer_id} ({item.size} bytes)" if item else "nothing"
        ui.json_output.say(f"sent {where} to {name}: {count} records")
    _print_held(summary)
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


def _print_fetch(report: FetchReport) -> None:
    for item in report.fetched:
        if item.again:
            ui.json_output.say(
                f"{item.transfer_id} was already received ({item.path}); acknowledged again, not decrypted again"
            )
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


def _seconds(wait: str | None) -> float:
    return parse_duration(wait).total_seconds() if wait else 0.0


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
        valid_for: Annotated[
            str, typer.Option(help="Validity of the signed policy (e.g. 365d); labs refuse it afterwards.")
        ] = "365d",
        cacert: CaOpt = None,
    ) -> None:
        """Sign a routing policy and register it with the relay; labs route under the newest one (highest issue)
        and refuse any older one from then on."""
        from labrelay.client.policy import default_policy_text, relay_policy_issue  # noqa: PLC0415

        auth = Authority.load(authority)
        text = policy.read_text(encoding="utf-8") if policy else default_policy_text()
        validity = parse_duration(valid_for)
        with _client(server, AUTHORITY_KEYID, auth.key, cacert) as client:
            envelope = auth.sign_policy(
                text, SystemClock().now(), validity, after_issue=relay_policy_issue(client, auth.public)
            )
            result = client.register_policy(envelope)
        issue = envelope["payload"]["issue"]
        ui.out.print(f"policy {result.get('version')} (issue {issue}) published", markup=False)

    @authority_app.command("withdraw-policy")
    def authority_withdraw_policy(
        version: Annotated[str, typer.Argument(help="Policy version to withdraw (every issue of it).")],
        authority: Annotated[Path, typer.Option("--authority", help="The authority's directory (AUTH_DIR).")],
        server: ServerOpt,
        reason: Annotated[
            str, typer.Option(help="Why (kept in the signed withdrawal).")
        ] = "withdrawn by the authority",
        cacert: CaOpt = None,
    ) -> None:
        """Sign a withdrawal of policy VERSION and register it: the relay refuses new transfers routed under it, and
        labs refuse to route under it (publish the policy in force after it)."""

        auth = Authority.load(authority)
        envelope = auth.sign_policy_withdrawal(version, reason, SystemClock().now())
        with _client(server, AUTHORITY_KEYID, auth.key, cacert) as client:
            client.register_policy_withdrawal(envelope)
        ui.out.print(f"policy {version} withdrawn", markup=False)

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
        from labrelay.operations import init_data_dir  # noqa: PLC0415

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
        from labrelay.operations import policy_refusal, upgrade_data_dir  # noqa: PLC0415

        ui.out.print(f"schema at {upgrade_data_dir(data)}", markup=False)
        refusal = policy_refusal(data)
        if refusal is not None:  # say it now, not in tonight's failed sends (policies signed before issue 18)
            ui.err.print(
                f"warning: {refusal}: labs route nothing until the authority publishes the policy in force "
                "(labrelay authority publish-policy)",
                markup=False,
            )

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
        from labrelay.operations import run_worker  # noqa: PLC0415

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
        for old, claimed in result.overclaimed.items():
            ui.err.print(
                f"labrelay: warning: the relay claims payloads sealed to {old} until {claimed}, longer than any "
                "relay may keep one: it is kept until the date above only",
                markup=False,
            )

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
        for gone in destroyed:
            ui.out.print(f"destroyed retired identity {gone.recipient}", markup=False)
        _warn_overruled(destroyed)
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
        ui.out.print(f"name:          {party.name}", markup=False)
        ui.out.print(f"role:          {party.role.value}", markup=False)
        ui.out.print(f"region:        {party.region or '-'}", markup=False)
        ui.out.print(f"age recipient: {party.age_recipient}", markup=False)
        ui.out.print(f"signing key:   {party.signing_public}", markup=False)
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
        as_: AsOpt,
        server: ServerOpt,
        file: Annotated[
            Path | None,
            typer.Argument(help="The file to send: lab results (CSV, HL7 v2, FHIR), or any document with --as-is."),
        ] = None,
        to: Annotated[
            list[str] | None,
            typer.Option(
                "--to", help="Send only to these recipients (repeatable). Without it, to every recipient of the policy."
            ),
        ] = None,
        ttl: Annotated[str, typer.Option(help="Deadline: 30s, 15m, 12h, 7d; at most the relay's maximum.")] = "7d",
        as_is: Annotated[
            bool,
            typer.Option(
                "--as-is",
                help="Send the file unparsed (no validation, no routing) to the --to recipients, if the policy lets "
                "them receive unparsed documents.",
            ),
        ] = False,
        again: Annotated[
            bool, typer.Option("--again", help="Send a file that was sent before again, as a new batch, on purpose.")
        ] = False,
        held: Annotated[
            str | None,
            typer.Option(
                "--held", metavar="BATCH", help="Deliver a batch's held shares to the recipients enrolled since."
            ),
        ] = None,
        max_rejected: Annotated[
            str | None,
            typer.Option("--max-rejected", metavar="N|P%", help="Send nothing (exit 1) if more records are rejected."),
        ] = None,
        fail_on_held: Annotated[
            bool, typer.Option("--fail-on-held", help="Send nothing (exit 1) if any record would be held for review.")
        ] = False,
        input_format: Annotated[str, typer.Option("--format", help="auto, csv, hl7 or fhir.")] = "auto",
        dpo: Annotated[
            str | None,
            typer.Option("--dpo", help="The DPO whose key seals the breach ledger (default: the only one enrolled)."),
        ] = None,
        ledger_retention: Annotated[
            str, typer.Option(help="How long the breach ledger of this batch is kept (default 365d, like the audit).")
        ] = "365d",
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
        from labrelay.client.send import RejectLimit, tidy  # noqa: PLC0415

        ui.json_output.enabled = json_out
        watch = Stopwatch()
        party = Party.load(as_)
        lifetime = parse_duration(ttl)
        limit = RejectLimit.parse(max_rejected) if max_rejected is not None else None
        if held is not None:
            if file is not None or as_is:
                raise UsageError("--held BATCH delivers a batch's held shares: give no FILE and no --as-is")
        elif file is None:
            raise UsageError("no file to send", hint="labrelay send FILE --as PARTY --server URL")
        elif not file.is_file():
            raise UsageError(f"{file} is not a readable file")
        if as_is and not to:
            raise UsageError("--as-is needs at least one --to recipient")
        with (
            party_lock(party.path, party.name, "send", wait=_seconds(wait)),
            _party_client(server, party, cacert) as client,
            ui.TerminalProgress(_quiet() or json_out) as progress,
        ):
            tidy(party)
            try:
                if held is not None or not as_is:
                    from labrelay.client.routed import SendOptions, send_held, send_results  # noqa: PLC0415

                    options = SendOptions(
                        ttl=lifetime,
                        restrict=to,
                        input_format=input_format,
                        dpo=dpo,
                        ledger_retention=parse_duration(ledger_retention),
                        again=again,
                        max_rejected=limit,
                        fail_on_held=fail_on_held,
                    )
                    if held is not None:
                        result = send_held(party, client, held, SystemClock(), options, progress=progress)
                        _print_held_send(result)
                        records = result.delivered.records if result.delivered else 0
                        ui.json_output.emit({"command": "send", **result.as_dict()})
                    else:
                        assert file is not None  # noqa: S101 - checked above
                        routed = send_results(party, client, file, SystemClock(), options, progress=progress)
                        _print_routed(routed, as_, server)
                        records = routed.records
                        ui.json_output.emit({"command": "send", **routed.as_dict()})
                else:
                    assert file is not None  # noqa: S101 - checked above
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
        if not json_out and not _quiet():
            ui.err.print(watch.line(records), markup=False)

    @app.command("validate")
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
        from labrelay.domain.policy import parse_policy  # noqa: PLC0415

        ui.json_output.enabled = json_out
        watch = Stopwatch()
        if (as_ is None) != (server is None):
            raise UsageError("a preview against a relay needs both --as LAB and --server URL")
        enrolled = None
        if as_ is not None and server is not None:
            from labrelay.client.policy import current_policy  # noqa: PLC0415

            party = Party.load(as_)
            with _party_client(server, party, cacert) as client:
                trusted = TrustedDirectory(party.authority, client.directory(), SystemClock().now())
                rules = current_policy(client, party.authority, party.path, SystemClock().now())
            enrolled = {e.name for e in trusted.in_force() if e.role is Role.RECIPIENT}
        else:
            from labrelay.client.policy import default_policy_text  # noqa: PLC0415

            rules = parse_policy(policy.read_text(encoding="utf-8") if policy else default_policy_text())
        today = SystemClock().now().date()
        with ui.TerminalProgress(_quiet() or json_out) as progress:
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
        _print_summary(summary)
        verb = "would send" if enrolled is not None else "under this policy, would go"
        for name, count in sorted(summary.per_recipient.items()):
            ui.json_output.say(f"{verb} to {name}: {count} records")
        _print_held(summary, enrolled is None)
        if report is not None:
            ui.json_output.say(f"rejection report: {report}")
        if summary_json is not None:
            with _OutputFile(summary_json) as out:
                out.text.write(json.dumps(summary.as_dict(), indent=2) + "\n")
        ui.json_output.emit({"command": "validate", "preview": enrolled is not None, "summary": summary.as_dict()})
        if not json_out and not _quiet():
            ui.err.print(watch.line(summary.read), markup=False)

    @app.command("resume")
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
        from labrelay.client.send import discard, resume_all, tidy  # noqa: PLC0415

        ui.json_output.enabled = json_out
        watch = Stopwatch()
        party = Party.load(as_)
        with party_lock(party.path, party.name, "resume", wait=_seconds(wait)):
            tidy(party)
            if discard_id is not None:
                with _party_client(server, party, cacert) as client:
                    gone = discard(party, client, discard_id)
                ui.json_output.say(f"discarded {gone}: removed from the outbox, cancelled on the relay")
                ui.json_output.emit({"command": "resume", "discarded": gone})
                return
            if not pending(party):
                ui.json_output.say("nothing to resume")
                ui.json_output.emit({"command": "resume", "uploaded": [], "expired": [], "stuck": []})
                return
            with (
                _party_client(server, party, cacert) as client,
                ui.TerminalProgress(_quiet() or json_out) as progress,
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
        if not json_out and not _quiet():
            ui.err.print(watch.line(len(result.sent), "uploads"), markup=False)
        if code:
            raise typer.Exit(code)

    @app.command("fetch")
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
        from labrelay.client.formats import OUTPUT_FORMATS  # noqa: PLC0415

        ui.json_output.enabled = json_out
        if output_format not in OUTPUT_FORMATS:
            raise UsageError(f"unknown --format {output_format!r}", hint=f"one of {', '.join(OUTPUT_FORMATS)}")
        watch = Stopwatch()
        party = Party.load(as_)
        with (
            party_lock(party.path, party.name, "fetch", wait=_seconds(wait)),
            _party_client(server, party, cacert) as client,
            ui.TerminalProgress(_quiet() or json_out) as progress,
        ):
            report = fetch_all(
                party, client, out, SystemClock(), raw=raw, progress=progress, output_format=output_format
            )
            destroyed = [] if raw else _retire_after_fetch(party, client)
        for gone in destroyed:
            ui.json_output.say(f"destroyed retired identity {gone.recipient}: no payload sealed to it remains")
        _warn_overruled(destroyed)
        _print_fetch(report)
        code = max((ui.exit_code_for(e) for _, e in report.refused), default=ui.EXIT_OK)
        if report.failed:
            code = max(code, ui.EXIT_OPERATIONAL)
        ui.json_output.emit({"command": "fetch", "recipient": party.name, **report.as_dict()}, code)
        if not json_out and not _quiet():
            ui.err.print(watch.line(report.records), markup=False)
        if code:
            raise typer.Exit(code)

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
    def receipts(as_: AsOpt, server: ServerOpt, json_out: JsonOpt = False, cacert: CaOpt = None) -> None:
        """The sender's transfers and their recipients' signed receipts or refusals, verified."""

        ui.json_output.enabled = json_out
        party = Party.load(as_)
        with _party_client(server, party, cacert) as client:
            items, problems = verified_outbox(party, client, SystemClock())
        for item in items:
            ui.json_output.say(item.line())
        for problem in problems:
            ui.err.print(f"labrelay: refused: {problem}", markup=False)
        if problems:
            error = IntegrityError(f"{len(problems)} receipt(s) or refusal(s) failed verification")
            ui.json_output.emit(
                {"command": "receipts", "transfers": [i.as_dict() for i in items], "problems": problems},
                ui.exit_code_for(error),
            )
            raise error
        ui.json_output.emit({"command": "receipts", "transfers": [i.as_dict() for i in items], "problems": []})

    from labrelay.cli.admin import register_admin  # noqa: PLC0415
    from labrelay.cli.breach import register_breach  # noqa: PLC0415
    from labrelay.cli.demo import demo_command  # noqa: PLC0415 - the demo imports the whole relay

    register_admin(app)
    register_breach(app)

    app.command("demo")(demo_command)
