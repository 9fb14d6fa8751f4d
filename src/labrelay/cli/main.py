"""``labrelay``: the command line for labs, recipients, the directory authority and relay operators.

Exit codes (scripts can trust them): 0 success; 1 operational failure (relay unreachable, disk full …);
2 usage error; 3 refused by a security check (bad signature, tampered payload, unknown or revoked key …).
Each failure prints one line saying what and why; tracebacks only with ``--verbose`` or LABRELAY_DEBUG=1.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import NoReturn

from labrelay import __version__

# The root command's options (labrelay.cli.app): flags, and those followed by a value.
ROOT_FLAGS = frozenset({"--quiet", "-q", "--verbose", "-v"})
ROOT_VALUED = frozenset({"--retries", "--config"})
ROOT_OPTIONS = ROOT_FLAGS | ROOT_VALUED
COMPLETION = "_LABRELAY_COMPLETE"  # set by the shell when it asks Click for completions


def asks_version(args: list[str]) -> bool:
    """``labrelay [-q] [-v] --version``: answered before Typer, rich or any client module loads."""
    return "--version" in args and all(arg in ROOT_FLAGS or arg == "--version" for arg in args)


def command_named(args: list[str]) -> str | None:
    """The command (or group) a run of ``labrelay ARGS`` names, when it can be told before parsing: the first word
    after the root options. None (build every command) for help, completion, an unknown word or option."""
    from labrelay.cli.commands import names  # noqa: PLC0415 - the table only, no command module

    if os.environ.get(COMPLETION):
        return None
    index = 0
    while index < len(args):
        arg = args[index]
        if arg in ROOT_VALUED:
            index += 2
        elif arg in ROOT_FLAGS or arg.startswith(tuple(f"{name}=" for name in ROOT_VALUED)):
            index += 1
        elif arg.startswith("-"):
            return None
        else:
            return arg if arg in names() else None
    return None


class Terminated(BaseException):
    """SIGTERM (a service manager stopping us, a cron timeout): unwind like Ctrl-C, so that nothing half-written
    stays behind."""


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise Terminated(signum)


def main(argv: list[str] | None = None) -> NoReturn:
    """Run the CLI. Usage errors exit 2 (Typer's own and ours); every other error is mapped here, once. Each call
    starts from the default options and output state, so that it can be called more than once in one process."""
    args = sys.argv[1:] if argv is None else argv
    if asks_version(args):
        sys.stdout.write(f"labrelay {__version__}\n")
        sys.exit(0)
    from labrelay.cli import options, ui  # noqa: PLC0415 - rich loads only for a command

    options.reset()
    ui.json_output.reset()
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        code = _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)
    sys.exit(code)


def _run(args: list[str]) -> int:
    import typer  # noqa: PLC0415 - not for --version

    from labrelay import errors  # noqa: PLC0415 - loaded after the --version answer
    from labrelay.cli import config_file, options, ui  # noqa: PLC0415 - rich loads with ui
    from labrelay.cli.app import build_app  # noqa: PLC0415 - with the command this run names, alone
    from labrelay.cli.coercion import install  # noqa: PLC0415 - imports Typer

    install()  # plain option values skip Typer's pydantic coercion
    named = command_named(args)
    ui.json_output.command = named
    command = typer.main.get_command(build_app(named))
    try:
        config = config_file.config_for(args)
        options.use_config(config.path if config else None)
        defaults = config_file.default_map(command, config) if config else None
        code = command.main(args=args, prog_name="labrelay", standalone_mode=False, default_map=defaults)
        if code == ui.EXIT_INTERRUPTED:  # Typer turns Ctrl-C (KeyboardInterrupt) into a silent Exit(130)
            raise KeyboardInterrupt
    except typer.exceptions.TyperException as exc:  # a usage error found while parsing: --json is not parsed yet
        name = getattr(exc, "option_name", None)
        if name in ROOT_OPTIONS:  # ``labrelay send … --retries 0``: a common slip
            ctx = getattr(exc, "ctx", None)
            where = f"labrelay {name}{' N' if name == '--retries' else ''} {getattr(ctx, 'info_name', 'COMMAND')} …"
            exc.message = f"{name} is an option of labrelay itself: put it before the command ({where})"
        exc.show()  # type: ignore[attr-defined]  # every TyperException typer raises is a ClickException
        exit_code = int(getattr(exc, "exit_code", ui.EXIT_USAGE))
        ui.json_output.enabled = "--json" in args
        ui.json_output.fail(errors.UsageError(str(exc)), exit_code)
        return exit_code
    except errors.LabrelayError as exc:
        if _debug():
            raise
        ui.report(exc)
        return ui.exit_code_for(exc)
    except (typer.Abort, KeyboardInterrupt, Terminated) as exc:
        what = "terminated" if isinstance(exc, Terminated) else "interrupted"
        ui.err.print(f"labrelay: {what}")
        code = ui.EXIT_TERMINATED if isinstance(exc, Terminated) else ui.EXIT_INTERRUPTED
        ui.json_output.fail(errors.OperationalError(f"{what} before the end"), code)
        return code
    except Exception as exc:
        if _debug():
            raise
        ui.err.print(f"labrelay: internal error ({type(exc).__name__}); rerun with --verbose for details", markup=False)
        ui.json_output.fail(errors.OperationalError(f"internal error ({type(exc).__name__})"))
        return ui.EXIT_OPERATIONAL
    return code if isinstance(code, int) else 0


def _debug() -> bool:
    """--verbose, or LABRELAY_DEBUG set when the error came before the root command read its options."""
    from labrelay.cli import options  # noqa: PLC0415 - loaded by then; kept out of the --version path

    return options.debug() or bool(os.environ.get("LABRELAY_DEBUG"))
