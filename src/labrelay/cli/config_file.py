"""How ``labrelay.toml`` fills a command's options.

The file is found before the command line is parsed — ``labrelay --config FILE`` or ``LABRELAY_CONFIG``, else
``labrelay.toml`` beside the ``--as`` party's directory — and becomes Click's ``default_map``: a value from the file
counts only where the command line and the option's environment variable said nothing (Click's own order:
command line, environment, default map, default). It fills what a command requires (``--server``, ``--as``) and
``--cacert`` wherever a command talks to a relay; an option a command leaves optional (``validate --as``, which
turns a local check into a preview on the relay) is never filled behind the user's back.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labrelay.client.config import ClientConfig, find_config

ROOT_VALUED = frozenset({"--config", "--retries"})


def config_for(args: Sequence[str]) -> ClientConfig | None:
    """The configuration a run of ``labrelay ARGS`` follows, if any. A ``--config`` that names no readable file is
    a usage error (exit 2), never ignored."""
    explicit = _root_config(args)
    if explicit is None and os.environ.get("LABRELAY_CONFIG"):
        explicit = Path(os.environ["LABRELAY_CONFIG"])
    return find_config(explicit, _party_dir(args))


def _root_config(args: Sequence[str]) -> Path | None:
    """``--config FILE`` among the root options (those before the command's name)."""
    index = 0
    while index < len(args) and args[index].startswith("-"):
        arg = args[index]
        if arg.startswith("--config="):
            return Path(arg.split("=", 1)[1])
        if arg in ROOT_VALUED:
            if arg == "--config" and index + 1 < len(args):
                return Path(args[index + 1])
            index += 1
        index += 1
    return None


def _party_dir(args: Sequence[str]) -> Path | None:
    """The ``--as`` party's directory, as written on the command line."""
    for index, arg in enumerate(args):
        if arg.startswith("--as="):
            return Path(arg.split("=", 1)[1])
        if arg == "--as" and index + 1 < len(args):
            return Path(args[index + 1])
    return None


def default_map(command: Any, config: ClientConfig) -> dict[str, Any]:
    """Click's default map for COMMAND and every sub-command, from the file. (Typer bundles its own Click: commands
    are recognised by their attributes, not by class.)"""
    subcommands = getattr(command, "commands", None)
    if isinstance(subcommands, dict):
        return {name: default_map(sub, config) for name, sub in subcommands.items()}
    params = {param.name: param for param in command.params}
    values: dict[str, Any] = {}
    server, party = params.get("server"), params.get("as_")
    if config.server and server is not None and server.required:
        values["server"] = config.server
    if config.cacert and server is not None and "cacert" in params:
        values["cacert"] = str(config.cacert)
    if config.party and party is not None and party.required:
        values["as_"] = str(config.party)
    return values
