"""``labrelay``: the command line for labs, recipients, the directory authority and relay operators.

Exit codes (scripts can trust them): 0 success; 1 operational failure (relay unreachable, disk full …);
2 usage error; 3 refused by a security check (bad signature, tampered payload, unknown or revoked key …).
Each failure prints one line saying what and why; tracebacks only with ``--verbose`` or LABRELAY_DEBUG=1.
"""

from __future__ import annotations

import os
import signal
import sys
from datetime import date
from pathlib import Path
from types import FrameType
from typing import Annotated, NoReturn

import typer

from labrelay import __version__, errors
from labrelay.cli import config_file, options, ui
from labrelay.cli.commands import register_commands
from labrelay.cli.options import DEFAULT_RETRIES

app = typer.Typer(
    name="labrelay",
    help="End-to-end encrypted relay for medical-lab results. The relay only ever holds ciphertext.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


ROOT_OPTIONS = frozenset({"--retries", "--quiet", "-q", "--verbose", "-v", "--config"})


def _version(value: bool) -> None:
    if value:
        ui.out.print(f"labrelay {__version__}")
        raise typer.Exit


@app.callback()
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
            help="Retries when the relay is unreachable or busy, with exponential back-off (4: about 8 s in all; "
            "0: fail at once).",
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


register_commands(app)


@app.command("synth")
def synth(
    count: Annotated[int, typer.Argument(min=0, help="Number of records.")],
    out: Annotated[Path, typer.Option("--out", help="File to write.")],
    fmt: Annotated[
        str, typer.Option("--format", help="csv (the template), hl7 (ORU^R01) or fhir (NDJSON of Bundles).")
    ] = "csv",
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same file).")] = 1,
    defects: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Fraction of records given one defect, each listed in OUT.defects.csv."),
    ] = 0.0,
    today: Annotated[str | None, typer.Option(help="Reference day YYYY-MM-DD for sample dates.")] = None,
) -> None:
    """Write COUNT synthetic lab results: realistic French identities, none real (Faker fr_FR, La Poste base)."""
    from labrelay.synthetic.generator import FORMATS, write_file  # noqa: PLC0415 - Faker loads slowly

    if fmt not in FORMATS:
        raise errors.UsageError(f"unknown format {fmt!r}", hint="csv, hl7 or fhir")
    day = date.fromisoformat(today) if today else date.today()  # noqa: DTZ011 - a calendar day is wanted
    written, injected = write_file(out, count, fmt=fmt, seed=seed, today=day, defects=defects)
    extra = f", {injected} with a defect (listed in {out}.defects.csv)" if defects else ""
    ui.out.print(f"wrote {written} synthetic records to {out} ({fmt}){extra}", markup=False)


class Terminated(BaseException):
    """SIGTERM (a service manager stopping us, a cron timeout): unwind like Ctrl-C, so that nothing half-written
    stays behind."""


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise Terminated(signum)


def main(argv: list[str] | None = None) -> NoReturn:
    """Run the CLI. Usage errors exit 2 (Typer's own and ours); every other error is mapped here, once. Each call
    starts from the default options and output state, so that it can be called more than once in one process."""
    options.reset()
    ui.json_output.reset()
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        code = _run(sys.argv[1:] if argv is None else argv)
    finally:
        signal.signal(signal.SIGTERM, previous)
    sys.exit(code)


def _run(args: list[str]) -> int:
    command = typer.main.get_command(app)
    try:
        config = config_file.config_for(args)
        options.use_config(config.path if config else None)
        defaults = config_file.default_map(command, config) if config else None
        code = command.main(args=args, prog_name="labrelay", standalone_mode=False, default_map=defaults)
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
        ui.json_output.fail(errors.OperationalError(f"{what} before the end"), 143 if what == "terminated" else 130)
        return 143 if isinstance(exc, Terminated) else 130
    except Exception as exc:
        if _debug():
            raise
        ui.err.print(f"labrelay: internal error ({type(exc).__name__}); rerun with --verbose for details", markup=False)
        ui.json_output.fail(errors.OperationalError(f"internal error ({type(exc).__name__})"))
        return ui.EXIT_OPERATIONAL
    return code if isinstance(code, int) else 0


def _debug() -> bool:
    """--verbose, or LABRELAY_DEBUG set when the error came before the root command read its options."""
    return options.debug() or bool(os.environ.get("LABRELAY_DEBUG"))
