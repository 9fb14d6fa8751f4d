"""The commands, one module per area. Each parses its arguments, calls a use case, prints a result; errors go up to
``main``. ``COMMANDS`` is the command table: every name, in the order ``labrelay --help`` lists them, with the
module that holds it. ``register_commands`` imports a module only when one of its commands is registered, and a run
of ``labrelay COMMAND …`` registers COMMAND alone (decision 0018): ``labrelay fetch`` never loads what ``send``,
``admin`` or ``demo`` need."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import typer

_CMD = "labrelay.cli.commands."

GROUPS: dict[str, str] = {
    "authority": "The directory authority: its key signs every party entry. Keep it offline.",
    "server": "Create and upgrade a relay's data directory.",
    "party": "Parties: labs, recipients, admins, DPOs, each a pair of keys.",
}

# (group or None, name, module, function): every command, in the order ``labrelay --help`` lists them.
COMMANDS: tuple[tuple[str | None, str, str, str], ...] = (
    ("authority", "init", _CMD + "authority", "authority_init"),
    ("authority", "sign", _CMD + "authority", "authority_sign"),
    ("authority", "revoke", _CMD + "authority", "authority_revoke"),
    ("authority", "publish-policy", _CMD + "authority", "authority_publish_policy"),
    ("authority", "withdraw-policy", _CMD + "authority", "authority_withdraw_policy"),
    ("server", "init", _CMD + "server", "server_init"),
    ("server", "upgrade", _CMD + "server", "server_upgrade"),
    (None, "serve", _CMD + "server", "serve"),
    (None, "worker", _CMD + "server", "worker"),
    ("party", "new", _CMD + "parties", "party_new"),
    ("party", "rotate", _CMD + "parties", "party_rotate"),
    ("party", "retire", _CMD + "parties", "party_retire"),
    ("party", "enroll", _CMD + "parties", "party_enroll"),
    ("party", "request", _CMD + "parties", "party_request"),
    ("party", "register", _CMD + "parties", "party_register"),
    ("party", "show", _CMD + "parties", "party_show"),
    (None, "directory", _CMD + "parties", "directory"),
    (None, "send", _CMD + "send", "send"),
    (None, "validate", _CMD + "validate", "validate"),
    (None, "resume", _CMD + "send", "resume"),
    (None, "fetch", _CMD + "fetch", "fetch"),
    (None, "receipt", _CMD + "fetch", "receipt"),
    (None, "receipts", _CMD + "fetch", "receipts"),
    (None, "agent", _CMD + "agent", "agent"),
)

# Names registered by a module's own function (each a group of sub-commands), after the table, in this order.
REGISTRARS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("admin", "audit"), "labrelay.cli.admin", "register_admin"),
    (("breach",), "labrelay.cli.breach", "register_breach"),
)
DEMO = ("demo", "labrelay.cli.demo", "demo_command")
SYNTH = ("synth", _CMD + "synth", "synth")


def names() -> frozenset[str]:
    """Every name ``labrelay NAME`` accepts (a command or a group)."""
    table = {group or name for group, name, _, _ in COMMANDS}
    return frozenset(table | {n for names, _, _ in REGISTRARS for n in names} | {DEMO[0], SYNTH[0]})


def _function(module: str, attribute: str) -> Any:
    return getattr(importlib.import_module(module), attribute)


def register_commands(app: typer.Typer, only: str | None = None) -> None:
    """Register every command on APP, or, with ONLY, just the command (or group) of that name."""
    import typer  # noqa: PLC0415 - the entry point answers --version before typer loads

    groups: dict[str, typer.Typer] = {}
    for group_name, help_text in GROUPS.items():
        if only in (None, group_name):
            groups[group_name] = typer.Typer(help=help_text, no_args_is_help=True)
            app.add_typer(groups[group_name], name=group_name)
    for group, name, module, attribute in COMMANDS:
        if group is not None:
            if group in groups:
                groups[group].command(name)(_function(module, attribute))
        elif only in (None, name):
            app.command(name)(_function(module, attribute))
    for registered, module, attribute in REGISTRARS:
        if only is None or only in registered:
            _function(module, attribute)(app)
    for name, module, attribute in (DEMO, SYNTH):
        if only in (None, name):
            app.command(name)(_function(module, attribute))
