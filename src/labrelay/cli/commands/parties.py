"""``labrelay party``: a party's keys, made, rotated, retired, enrolled (in one step, or offline: request, then
register what the authority signed; docs/enrolment.md) and shown; ``labrelay directory``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from labrelay.cli import ui
from labrelay.cli.commands.common import AsOpt, CaOpt, ServerOpt, party_client, warn_overruled
from labrelay.client import enrolment
from labrelay.client.keystore import Authority, Party
from labrelay.client.trust import TrustedDirectory
from labrelay.clock import SystemClock
from labrelay.domain import identifiers
from labrelay.domain.identifiers import Identifier
from labrelay.domain.parties import Role, is_pq_recipient, key_kind, short_key
from labrelay.domain.timeutil import parse_duration, to_rfc3339
from labrelay.errors import SecurityError, UsageError
from labrelay.jsonfile import write_json_atomic

FinessOpt = Annotated[
    str | None,
    typer.Option("--finess", metavar="9-CHARS", help="A lab's FINESS (recommended for labs; e.g. 750712184)."),
]
OrganisationOpt = Annotated[
    str | None,
    typer.Option(
        "--organisation", metavar="ID", help="A recipient's (or admin's, DPO's) organisation: SIREN or SIRET."
    ),
]


def identifier_of(finess: str | None, organisation: str | None) -> Identifier | None:
    """The identifier ``--finess`` or ``--organisation`` gives (one at most; ``UsageError`` when malformed)."""
    if finess is not None and organisation is not None:
        raise UsageError("give --finess (a lab) or --organisation (any other party), not both")
    if finess is not None:
        return identifiers.finess(finess)
    return identifiers.organisation(organisation) if organisation is not None else None


def party_new(
    name: Annotated[str, typer.Argument(help="Party name: lower-case letters, digits, hyphens (e.g. ars-11).")],
    role: Annotated[str, typer.Option(help="lab, recipient, admin or dpo.")],
    authority: Annotated[Path, typer.Option("--authority", help="AUTH_DIR/authority.pub to pin.")],
    out: Annotated[Path, typer.Option("--out", help="Parent directory; the party goes in OUT/NAME.")],
    region: Annotated[str | None, typer.Option(help="INSEE region code (e.g. 11), for regional parties.")] = None,
    classic: Annotated[
        bool,
        typer.Option(
            "--classic",
            help="A classic X25519 age key, for tools older than age 1.3 (default: hybrid post-quantum, "
            "ML-KEM-768 + X25519). A policy with require_pq refuses it.",
        ),
    ] = False,
) -> None:
    """Generate a party's keys on this machine: an age identity (hybrid post-quantum) and an Ed25519 signing
    key."""

    party = Party.create(out, name, Role.parse(role), region, authority, SystemClock().now(), classic=classic)
    ui.out.print(f"party {party.name} created in {party.path}", markup=False)
    ui.out.print(f"  age key:       {key_kind(party.age_recipient)}", markup=False)
    ui.out.print(f"  age recipient: {party.age_recipient}", markup=False)
    ui.out.print(f"  signing key:   {party.signing_public}", markup=False)


def party_rotate(
    party_dir: Annotated[Path, typer.Argument(help="The recipient's directory (DIR/NAME).")],
    authority: Annotated[Path, typer.Option("--authority", help="The authority's directory (AUTH_DIR).")],
    server: ServerOpt,
    valid_for: Annotated[str, typer.Option(help="Validity of the new signed entry (e.g. 365d).")] = "365d",
    pq: Annotated[bool, typer.Option("--pq", help="Move to a hybrid post-quantum key (ML-KEM-768 + X25519).")] = False,
    classic: Annotated[
        bool, typer.Option("--classic", help="Rotate to a classic X25519 key, for tools older than age 1.3.")
    ] = False,
    cacert: CaOpt = None,
) -> None:
    """Replace a recipient's age key with a new one of the same kind (--pq: hybrid post-quantum; --classic:
    X25519): a new identity, signed and registered; the old one is kept only until every payload sealed to it is
    past its deadline, then destroyed (by fetch or party retire)."""
    from labrelay.client.rotation import rotate  # noqa: PLC0415 - only this command needs it

    if pq and classic:
        raise UsageError("--pq and --classic contradict each other", hint="give one of them (the default is --pq)")
    party = Party.load(party_dir)
    auth = Authority.load(authority)
    with party_client(server, party, cacert) as client:
        kind = True if classic else (False if pq else None)
        result = rotate(party, auth, client, SystemClock().now(), parse_duration(valid_for), classic=kind)
    ui.out.print(
        f"{party.name} now receives at a {key_kind(result.new_recipient)} key {short_key(result.new_recipient)}",
        markup=False,
    )
    for old in result.retired:
        ui.out.print(f"  retired {short_key(old)}: kept until {result.destroy_after}", markup=False)
    for old, claimed in result.overclaimed.items():
        ui.warn(
            f"the relay claims payloads sealed to {old} until {claimed}, longer than any relay may keep one: it is "
            "kept until the date above only"
        )


def party_retire(
    party_dir: Annotated[Path, typer.Argument(help="The recipient's directory (DIR/NAME).")],
    server: ServerOpt,
    cacert: CaOpt = None,
) -> None:
    """Destroy retired age identities whose payloads are all past their deadline (fetch does it too)."""
    from labrelay.client.rotation import retire_due, retired_status  # noqa: PLC0415 - only this command needs it

    party = Party.load(party_dir)
    with party_client(server, party, cacert) as client:
        destroyed = retire_due(party, client, SystemClock().now())
    for gone in destroyed:
        ui.out.print(f"destroyed retired identity {short_key(gone.recipient)}", markup=False)
    warn_overruled(destroyed)
    for key in retired_status(party):
        if not key.get("destroyed_at"):
            ui.out.print(f"kept {short_key(key['age_recipient'])} until {key['destroy_after']}", markup=False)
    if not retired_status(party):
        ui.out.print("no retired identity", markup=False)


def party_enroll(
    party_dir: Annotated[Path, typer.Argument(help="The party's directory (DIR/NAME).")],
    authority: Annotated[Path, typer.Option("--authority", help="The authority's directory (AUTH_DIR).")],
    server: ServerOpt,
    valid_for: Annotated[str, typer.Option(help="Validity of the signed entry (e.g. 365d).")] = "365d",
    finess: FinessOpt = None,
    organisation: OrganisationOpt = None,
    cacert: CaOpt = None,
) -> None:
    """In one step, with the authority's key at hand (the demo, tests): have the authority sign the party's entry,
    and register it with the relay. An offline authority uses party request, authority sign, party register."""

    party = Party.load(party_dir)
    identifier = identifier_of(finess, organisation)
    for warning in identifier.warnings() if identifier else []:
        ui.warn(warning)
    auth = Authority.load(authority)
    if party.role is Role.LAB:  # a lab holding another key is refused before anything is signed or written
        party.check_pseudonym_key(auth.pseudonym_key())
    envelope = auth.sign_entry(party, SystemClock().now(), parse_duration(valid_for), identifier=identifier)
    if party.role is Role.LAB:  # labs pseudonymise for SpF with the authority's key; recipients never get it
        party.save_pseudonym_key(auth.pseudonym_key())
    party.save_entry(envelope)
    with party_client(server, party, cacert) as client:
        result = client.register_entry(envelope)
    ui.out.print(f"{party.name} enrolled (entry {result.get('serial')})", markup=False)


def party_request(
    party_dir: Annotated[Path, typer.Argument(help="The party's directory (DIR/NAME).")],
    out: Annotated[Path, typer.Option("--out", help="The request to write (REQUEST.json), for the authority.")],
    finess: FinessOpt = None,
    organisation: OrganisationOpt = None,
) -> None:
    """Write the party's enrolment request, signed with its own key, for the authority to sign offline."""

    party = Party.load(party_dir)
    identifier = identifier_of(finess, organisation)
    request = enrolment.request(party, identifier, SystemClock().now())
    for warning in identifier.warnings() if identifier else []:
        ui.warn(warning)
    if party.role is Role.LAB and identifier is None:
        ui.warn(f"{party.name} is a lab without a FINESS (--finess): recommended, so that recipients know which lab")
    write_json_atomic(out, request, mode=0o644)
    ui.out.print(f"enrolment request for {party.name} written to {out}", markup=False)
    ui.out.print(f"  identifier:    {identifier or '-'}", markup=False)
    ui.out.print(f"  age recipient: {party.age_recipient}", markup=False)
    ui.out.print(f"  signing key:   {party.signing_public}", markup=False)
    ui.out.print("next: the authority runs `labrelay authority sign` on it, offline", markup=False)


def party_register(
    entry_file: Annotated[Path, typer.Argument(help="ENTRY.json, as `labrelay authority sign` wrote it.")],
    server: ServerOpt,
    party_dir: Annotated[
        Path | None,
        typer.Option("--party", help="The party's directory: sign with its key, and install the entry there."),
    ] = None,
    carrier: Annotated[
        Path | None,
        typer.Option("--as", help="An administrator's directory, to carry another party's entry to the relay."),
    ] = None,
    cacert: CaOpt = None,
) -> None:
    """Carry an authority-signed entry to the relay (which accepts only what the authority signed). With --party,
    check that it is that party's own, then install it there (with a lab's pseudonym key, unsealed)."""

    signer_dir = party_dir or carrier
    if signer_dir is None or (party_dir is not None and carrier is not None):
        raise UsageError(
            "say who signs the request to the relay: --party PARTY_DIR (the entry's own party) or --as ADMIN_DIR",
            hint="--party also installs the entry in the party's directory",
        )
    entry_file_doc = enrolment.read_entry_file(entry_file)
    signer = Party.load(signer_dir)
    checked = enrolment.check_for_party(signer, entry_file_doc) if party_dir is not None else None
    with party_client(server, signer, cacert) as client:
        result = client.register_entry(entry_file_doc.entry)
    ui.out.print(f"{result.get('name')} registered with the relay (entry {result.get('serial')})", markup=False)
    if checked is not None:
        enrolment.install(signer, checked)
        key = ", with its pseudonym key" if checked.pseudonym_key else ""
        ui.out.print(f"entry installed in {signer.path}{key}", markup=False)


def party_show(
    party_dir: Annotated[Path, typer.Argument(help="The party's directory (DIR/NAME).")],
) -> None:
    """Print a party's public keys and its signed entry's validity."""

    party = Party.load(party_dir)
    ui.out.print(f"name:          {party.name}", markup=False)
    ui.out.print(f"role:          {party.role.value}", markup=False)
    ui.out.print(f"region:        {party.region or '-'}", markup=False)
    ui.out.print(f"age key:       {key_kind(party.age_recipient)}", markup=False)
    ui.out.print(f"age recipient: {party.age_recipient}", markup=False)
    ui.out.print(f"signing key:   {party.signing_public}", markup=False)
    entry = party.entry()
    ui.out.print(f"identifier:    {(entry.identifier if entry else None) or '-'}", markup=False)
    if entry is None:
        ui.out.print("entry:         not enrolled", markup=False)
    else:
        ui.out.print(
            f"entry:         valid {to_rfc3339(entry.not_before)} → {to_rfc3339(entry.not_after)}",
            markup=False,
        )


def directory(as_: AsOpt, server: ServerOpt, cacert: CaOpt = None) -> None:
    """List the parties in force, as verified against the pinned authority key."""

    party = Party.load(as_)
    with party_client(server, party, cacert) as client:
        trusted = TrustedDirectory(party.authority, client.directory(), SystemClock().now())
    entries = trusted.in_force()
    for entry in entries:
        ui.out.print(
            f"{entry.name:24} {entry.role.value:9} {entry.region or '-':3} until {to_rfc3339(entry.not_after)}"
            f"  {key_kind(entry.age_recipient):12}  {entry.identifier or '-'}",
            markup=False,
        )
    classic = [e.name for e in entries if not is_pq_recipient(e.age_recipient)]
    if classic:
        ui.warn(
            f"{len(classic)} of {len(entries)} parties still have a classic (X25519) age key: {', '.join(classic)}; "
            "each moves to a hybrid post-quantum key with labrelay party rotate --pq"
        )
    for name, why in sorted(trusted.untrusted.items()):
        ui.err.print(f"UNTRUSTED {name}: {why}", markup=False)
    if trusted.untrusted:
        raise SecurityError("the relay served directory entries the pinned authority did not sign")
