"""``labrelay agent``: the lab's watched outbox and the recipient's continuous fetch, for the parties the
configuration file's ``[agent]`` table names (docs/agent.md)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from labrelay.cli import options
from labrelay.cli.commands.common import CaOpt
from labrelay.errors import UsageError


def agent(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar="LABRELAY_CONFIG",
            help="The configuration file (labrelay.toml) whose [agent] table says what to do.",
        ),
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="One pass over every party, then exit with the worst outcome's code.")
    ] = False,
    server: Annotated[
        str | None, typer.Option("--server", envvar="LABRELAY_SERVER", help="The relay's URL (overrides the file).")
    ] = None,
    cacert: CaOpt = None,
) -> None:
    """Run unattended: watch each lab's outbox and send what lands there exactly once, sorted into sent/ and
    failed/; fetch continuously for each recipient into its inbox, with an optional hook per file. JSON events on
    stdout, health and metrics on loopback; SIGTERM stops cleanly (exit 0)."""
    from labrelay.agent.runner import run_agent  # noqa: PLC0415 - only this command needs it
    from labrelay.agent.settings import agent_settings  # noqa: PLC0415 - beside it
    from labrelay.client.config import find_config  # noqa: PLC0415 - beside it

    explicit = config or options.current.config
    found = find_config(explicit, None)
    if found is None:
        raise UsageError(
            "labrelay agent needs a configuration file",
            hint="labrelay agent --config /etc/labrelay/labrelay.toml (or LABRELAY_CONFIG); see docs/agent.md",
        )
    settings = agent_settings(found)
    url = server or found.server
    if not url:
        raise UsageError(f"{found.path} names no server, and no --server was given")
    code = run_agent(settings, url, cacert or found.cacert, options.current.retries, sys.stdout, once=once)
    if code:
        raise typer.Exit(code)
