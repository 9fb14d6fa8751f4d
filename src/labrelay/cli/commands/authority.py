"""``labrelay authority``: the directory authority's key, and what it signs: revocations, policies, withdrawals."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from labrelay.cli import options, ui
from labrelay.cli.commands.common import CaOpt, ServerOpt
from labrelay.client.keystore import Authority
from labrelay.clock import SystemClock
from labrelay.domain.names import AUTHORITY_KEYID
from labrelay.domain.timeutil import parse_duration


def authority_init(auth_dir: Annotated[Path, typer.Argument(help="Directory to create.")]) -> None:
    """Create the directory authority's key: AUTH_DIR/authority.key (0600) and AUTH_DIR/authority.pub."""

    authority = Authority.init(auth_dir)
    ui.out.print(
        f"authority key created in {auth_dir}; public key: {authority.path / 'authority.pub'}",
        markup=False,
    )


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
