"""``labrelay party``: a party's keys, made, rotated, retired, enrolled and shown; ``labrelay directory``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from labrelay.cli import ui
from labrelay.cli.commands.common import AsOpt, CaOpt, ServerOpt, party_client, warn_overruled
from labrelay.client.keystore import Authority, Party
from labrelay.client.trust import TrustedDirectory
from labrelay.clock import SystemClock
from labrelay.domain.parties import Role
from labrelay.domain.timeutil import parse_duration, to_rfc3339
from labrelay.errors import SecurityError


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


def party_rotate(
    party_dir: Annotated[Path, typer.Argument(help="The recipient's directory (DIR/NAME).")],
    authority: Annotated[Path, typer.Option("--authority", help="The authority's directory (AUTH_DIR).")],
    server: ServerOpt,
    valid_for: Annotated[str, typer.Option(help="Validity of the new signed entry (e.g. 365d).")] = "365d",
    cacert: CaOpt = None,
) -> None:
    """Replace a recipient's age key: a new identity, signed and registered; the old one is kept only until
    every payload sealed to it is past its deadline, then destroyed (by fetch or party retire)."""
    from labrelay.client.rotation import rotate  # noqa: PLC0415 - only this command needs it

    party = Party.load(party_dir)
    auth = Authority.load(authority)
    with party_client(server, party, cacert) as client:
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
        ui.out.print(f"destroyed retired identity {gone.recipient}", markup=False)
    warn_overruled(destroyed)
    for key in retired_status(party):
        if not key.get("destroyed_at"):
            ui.out.print(f"kept {key['age_recipient']} until {key['destroy_after']}", markup=False)
    if not retired_status(party):
        ui.out.print("no retired identity", markup=False)


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
    with party_client(server, party, cacert) as client:
        result = client.register_entry(envelope)
    ui.out.print(f"{party.name} enrolled (entry {result.get('serial')})", markup=False)


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


def directory(as_: AsOpt, server: ServerOpt, cacert: CaOpt = None) -> None:
    """List the parties in force, as verified against the pinned authority key."""

    party = Party.load(as_)
    with party_client(server, party, cacert) as client:
        trusted = TrustedDirectory(party.authority, client.directory(), SystemClock().now())
    for entry in trusted.in_force():
        ui.out.print(
            f"{entry.name:24} {entry.role.value:9} {entry.region or '-':3} until {to_rfc3339(entry.not_after)}",
            markup=False,
        )
    for name, why in sorted(trusted.untrusted.items()):
        ui.err.print(f"UNTRUSTED {name}: {why}", markup=False)
    if trusted.untrusted:
        raise SecurityError("the relay served directory entries the pinned authority did not sign")
