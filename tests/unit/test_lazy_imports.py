"""The relay and the commands that do not read lab results never load the record-processing stack.

polars, polars-hash, hl7 and Faker add about 30 MB of resident memory and a noticeable start-up time; the relay
never needs them (the import contracts forbid it) and neither do fetch, receipts or directory. Measured by the
memory benchmark; kept here so that a stray module-level import cannot bring them back unnoticed.
"""

from __future__ import annotations

import json
import subprocess
import sys

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
