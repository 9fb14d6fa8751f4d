"""The ``labrelay`` Typer application: the root command's options and the command table
(labrelay.cli.commands). Built per run by ``main``, with only the command the run names (decision 0018)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from labrelay import __version__
from labrelay.cli import options, ui
from labrelay.cli.commands import register_commands
from labrelay.cli.options import DEFAULT_RETRIES

HELP = "End-to-end encrypted relay for medical-lab results. The relay only ever holds ciphertext."


def _version(value: bool) -> None:
    if value:
        ui.out.print(f"labrelay {__version__}")
        raise typer.Exit


def _root(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", envvar="LABRELAY_DEBUG", help="Show tracebacks on errors.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", envvar="LABRELAY_QUIET", help="No progress output.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    retries: Annotated[
        int,
        typer.Option(
            "--retries",
            envvar="LABRELAY_RETRIES",
            min=0,
            help="Retries when the relay is unreachable, with exponential back-off (4: about 8 s in all; 0: fail at "
            "once). A busy relay (429) is asked again when it says, for about two minutes with 4.",
        ),
    ] = DEFAULT_RETRIES,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar="LABRELAY_CONFIG",
            help="Client configuration file (server, CA bundle, party, agent); default: labrelay.toml beside the "
            "--as party's directory. Flags override it.",
        ),
    ] = None,
) -> None:
    options.set_options(debug=verbose, quiet=quiet, retries=retries, config=config)


def build_app(only: str | None = None) -> typer.Typer:
    """The application with every command, or with ONLY (a command or group name) alone."""
    app = typer.Typer(
        name="labrelay",
        help=HELP,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=True,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(_root)
    register_commands(app, only)
    return app
