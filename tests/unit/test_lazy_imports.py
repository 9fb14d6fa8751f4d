"""The relay and the commands that do not read lab results never load the record-processing stack.

polars, polars-hash, hl7 and Faker add about 30 MB of resident memory and a noticeable start-up time; the relay
never needs them (the import contracts forbid it) and neither do fetch, receipts or directory. Measured by the
memory benchmark; kept here so that a stray module-level import cannot bring them back unnoticed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("polars", "polars_hash", "hl7", "faker")


def loaded_after(statement: str) -> list[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return loaded


def test_the_cli_and_the_relay_start_without_the_record_stack() -> None:
    assert loaded_after("import labrelay.cli.main, labrelay.runtime, labrelay.operations") == []


def test_routing_does_load_it() -> None:
    """The check above can fail: importing the routed send does bring polars in."""
    assert "polars" in loaded_after("import labrelay.client.routed")


# What a run of the CLI may load before its command's work starts (decision 0018): ``--version`` nothing but the
# standard library; a fetch its own modules, never another command's, nor pydantic (Typer's coercion), httpx's own
# command line, rich's progress bars (not on a terminal) or the record stack.
CLI_RUN = """
import sys, json
from labrelay.cli.main import main
try:
    main({argv!r})
except SystemExit:
    pass
print(json.dumps(sorted(m for m in {modules!r} if m in sys.modules)))
"""
ANY_COMMAND = ("typer", "rich", "httpx", "cryptography", "pydantic", "labrelay.client.api", "labrelay.cli.app")
NOT_FOR_FETCH = (
    "pydantic",
    "click",  # httpx's command line; Typer bundles its own Click
    "pygments",
    "rich.progress",
    "rich.console",  # stdout and stderr are no terminal here: lines are written without rich (cli/ui.py Output)
    "polars",
    "labrelay.client.send",
    "labrelay.client.routed",
    "labrelay.cli.commands.send",
    "labrelay.cli.admin",
    "labrelay.cli.breach",
    "labrelay.cli.demo",
    "labrelay.relay",
    "labrelay.storage",
)


def cli_loaded(argv: list[str], modules: tuple[str, ...]) -> list[str]:
    code = CLI_RUN.format(argv=argv, modules=modules)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return loaded


def test_version_is_answered_before_any_dependency_loads() -> None:
    assert cli_loaded(["--version"], ANY_COMMAND) == []
    assert cli_loaded(["-q", "--version"], ANY_COMMAND) == []


def test_a_fetch_loads_only_what_fetching_needs(tmp_path: Path) -> None:
    argv = [
        "--quiet",
        "fetch",
        "--as",
        str(tmp_path / "none"),
        "--server",
        "http://127.0.0.1:9",
        "--out",
        str(tmp_path),
    ]
    assert cli_loaded(argv, NOT_FOR_FETCH) == []
    # the check can fail: the command ran (its client loaded), and the full command table does load the others
    assert cli_loaded(argv, ("labrelay.client.api",)) == ["labrelay.client.api"]
    assert "labrelay.cli.commands.send" in cli_loaded(["--help"], NOT_FOR_FETCH)
