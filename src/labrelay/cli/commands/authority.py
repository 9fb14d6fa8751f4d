"""``labrelay authority``: the directory authority's key, and what it signs: entries (``sign``, offline),
revocations, policies, withdrawals."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from labrelay.cli import options, ui
from labrelay.cli.commands.common import CaOpt, ServerOpt
from labrelay.client import enrolment
from labrelay.client.keystore import Authority
from labrelay.clock import SystemClock
from labrelay.domain.names import AUTHORITY_KEYID
from labrelay.domain.parties import Role
from labrelay.domain.timeutil import parse_duration, to_rfc3339
from labrelay.errors import UntrustedEntry, UsageError
from labrelay.jsonfile import read_json, write_json_atomic


def authority_init(auth_dir: Annotated[Path, typer.Argument(help="Directory to create.")]) -> None:
    """Create the directory authority's key: AUTH_DIR/authority.key (0600) and AUTH_DIR/authority.pub."""

    authority = Authority.init(auth_dir)
    ui.out.print(
        f"authority key created in {auth_dir}; public key: {authority.path / 'authority.pub'}",
        markup=False,
    )


def authority_sign(
    request: Annotated[Path, typer.Argument(help="REQUEST.json, as `labrelay party request` wrote it.")],
    authority: Annotated[Path, typer.Option("--authority", help="The authority's directory (AUTH_DIR).")],
    out: Annotated[Path, typer.Option("--out", help="ENTRY.json to write, for anyone to carry to the relay.")],
    valid_for: Annotated[str, typer.Option(help="Validity of the signed entry (e.g. 365d).")] = "365d",
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Sign even keys of a revoked or replaced entry, or a request older than the name's newest entry or "
            "revocation (refused otherwise): only when you know why.",
        ),
    ] = False,
) -> None:
    """Sign a party's enrolment request, offline (no relay, no network): checks its signature by the party's own
    key, its names, keys and identifier, and what this authority signed for that name before; prints what it signs,
    then writes ENTRY.json (a lab's pseudonym key sealed to the lab's age key inside it)."""

    try:
        doc = read_json(request)
    except FileNotFoundError:
        raise UsageError(f"{request} not found") from None
    except ValueError as exc:
        raise UsageError(f"{request} is not JSON: {exc}") from exc
    req = enrolment.read_request(doc)
    auth = Authority.load(authority)
    now = SystemClock().now()
    entry = enrolment.prepare(auth, req, now, parse_duration(valid_for))
    refusal = enrolment.reissue_refusal(auth, req)
    if refusal is not None and not force:
        raise UntrustedEntry(
            f"enrolment request refused: {refusal}",
            hint=f"have {req.name} make a new request (with new keys if these were revoked or replaced), "
            "or sign with --force if you know why",
        )
    if refusal is not None:
        ui.err.print(f"labrelay: WARNING: --force: signing {req.name} although {refusal}", markup=False)
    for warning in _warnings(auth, req):
        ui.warn(warning)
    # Everything signed is printed before anything is signed or written (issued.jsonl, ENTRY.json).
    ui.out.print(f"signing the entry of {req.name}:", markup=False)
    for label, value in (
        ("role", req.role.value),
        ("region", req.region or "-"),
        ("identifier", str(req.identifier or "-")),
        ("age recipient", req.age_recipient),
        ("signing key", req.signing_key),
        ("requested", to_rfc3339(req.created)),
        ("valid", f"{to_rfc3339(entry.not_before)} → {to_rfc3339(entry.not_after)}"),
        ("serial", entry.serial),
    ):
        ui.out.print(f"  {label + ':':15}{value}", markup=False)
    if entry.role is Role.LAB:
        ui.out.print(f"  {'pseudonym key:':15}sealed to {req.age_recipient} (only the lab opens it)", markup=False)
    write_json_atomic(out, enrolment.seal(auth, entry, now), mode=0o644)
    ui.out.print(f"signed, written to {out}", markup=False)


def _warnings(auth: Authority, req: enrolment.EnrolmentRequest) -> list[str]:
    """What the authority should look at before the entry leaves: never a refusal (those are raised)."""
    found = req.identifier.warnings() if req.identifier else []
    if req.role is Role.LAB and req.identifier is None:
        found.append(f"{req.name} is a lab without a FINESS (recommended: --finess at `party request`)")
    keys = {(p.get("signing_key"), p.get("age_recipient")) for p in auth.issued_entries(req.name)}
    if keys and (req.signing_key, req.age_recipient) not in keys:
        found.append(f"this authority signed {req.name} before with other keys: the new entry replaces them")
    return found


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
    with options.relay_client(server, AUTHORITY_KEYID, auth.key, cacert) as client:
        client.register_revocation(envelope)
    ui.out.print(f"{name} revoked", markup=False)


def authority_publish_policy(
    policy: Annotated[Path | None, typer.Argument(help="Policy TOML (default: the shipped default policy).")] = None,
    authority: Annotated[Path, typer.Option("--authority", help="The authority's directory (AUTH_DIR).")] = Path(),
    server: ServerOpt = "",
    valid_for: Annotated[
        str, typer.Option(help="Validity of the signed policy (e.g. 365d); labs refuse it afterwards.")
    ] = "365d",
    cacert: CaOpt = None,
) -> None:
    """Sign a routing policy and register it with the relay; labs route under the newest one (highest issue)
    and refuse any older one from then on."""
    from labrelay.client.policy import default_policy_text, relay_policy_issue  # noqa: PLC0415 - only this command needs it

    auth = Authority.load(authority)
    text = policy.read_text(encoding="utf-8") if policy else default_policy_text()
    validity = parse_duration(valid_for)
    with options.relay_client(server, AUTHORITY_KEYID, auth.key, cacert) as client:
        envelope = auth.sign_policy(
            text, SystemClock().now(), validity, after_issue=relay_policy_issue(client, auth.public)
        )
        result = client.register_policy(envelope)
    issue = envelope["payload"]["issue"]
    ui.out.print(f"policy {result.get('version')} (issue {issue}) published", markup=False)


def authority_withdraw_policy(
    version: Annotated[str, typer.Argument(help="Policy version to withdraw (every issue of it).")],
    authority: Annotated[Path, typer.Option("--authority", help="The authority's directory (AUTH_DIR).")],
    server: ServerOpt,
    reason: Annotated[str, typer.Option(help="Why (kept in the signed withdrawal).")] = "withdrawn by the authority",
    cacert: CaOpt = None,
) -> None:
    """Sign a withdrawal of policy VERSION and register it: the relay refuses new transfers routed under it, and
    labs refuse to route under it (publish the policy in force after it)."""

    auth = Authority.load(authority)
    envelope = auth.sign_policy_withdrawal(version, reason, SystemClock().now())
    with options.relay_client(server, AUTHORITY_KEYID, auth.key, cacert) as client:
        client.register_policy_withdrawal(envelope)
    ui.out.print(f"policy {version} withdrawn", markup=False)
