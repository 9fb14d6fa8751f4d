"""The commands, one module per area. Each parses its arguments, calls a use case, prints a result; errors go up to
``main``. ``register_commands`` is the command table: every name, in the order ``labrelay --help`` lists them."""

from __future__ import annotations

import typer

from labrelay.cli.admin import register_admin
from labrelay.cli.breach import register_breach
from labrelay.cli.commands import agent, authority, fetch, parties, send, server, validate
from labrelay.cli.demo import demo_command


def register_commands(app: typer.Typer) -> None:
    authority_app = typer.Typer(
        help="The directory authority: its key signs every party entry. Keep it offline.",
        no_args_is_help=True,
    )
    server_app = typer.Typer(help="Create and upgrade a relay's data directory.", no_args_is_help=True)
    party_app = typer.Typer(help="Parties: labs, recipients, admins, DPOs, each a pair of keys.", no_args_is_help=True)
    app.add_typer(authority_app, name="authority")
    app.add_typer(server_app, name="server")
    app.add_typer(party_app, name="party")

    authority_app.command("init")(authority.authority_init)
    authority_app.command("sign")(authority.authority_sign)
    authority_app.command("revoke")(authority.authority_revoke)
    authority_app.command("publish-policy")(authority.authority_publish_policy)
    authority_app.command("withdraw-policy")(authority.authority_withdraw_policy)

    server_app.command("init")(server.server_init)
    server_app.command("upgrade")(server.server_upgrade)
    app.command("serve")(server.serve)
    app.command("worker")(server.worker)

    party_app.command("new")(parties.party_new)
    party_app.command("rotate")(parties.party_rotate)
    party_app.command("retire")(parties.party_retire)
    party_app.command("enroll")(parties.party_enroll)
    party_app.command("request")(parties.party_request)
    party_app.command("register")(parties.party_register)
    party_app.command("show")(parties.party_show)
    app.command("directory")(parties.directory)

    app.command("send")(send.send)
    app.command("validate")(validate.validate)
    app.command("resume")(send.resume)
    app.command("fetch")(fetch.fetch)
    app.command("receipt")(fetch.receipt)
    app.command("receipts")(fetch.receipts)
    app.command("agent")(agent.agent)

    register_admin(app)
    register_breach(app)
    app.command("demo")(demo_command)
