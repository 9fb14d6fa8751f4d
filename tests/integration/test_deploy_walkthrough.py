"""docs/deployment.md's walkthrough, "A lab and a recipient, from nothing to a running agent", followed as written.

Every ``<!-- walkthrough: HOST -->`` block of that section runs in order, in bash (``set -euo pipefail``), against
a real relay started on the authority's published key. Each host gets a directory of its own; files that travel
between hosts (``authority.pub``, requests, signed entries) sit in one shared working directory, as on the USB key
the doc speaks of. The only changes are the ones the doc itself lists for a test machine: the host's own paths, the
venv's ``labrelay`` in place of ``runuser … /opt/labrelay/bin/labrelay``, no owner on ``install``, the test relay's
URL, and no systemd line. At the end the trial batch is in the lab's ``sent/`` and its CNAM share in CNAM's inbox,
and both signed entries carry the identifier the authority checked.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from labrelay.operations import init_data_dir
from tests.support.world import REPO, RelayServer

DOC = REPO / "docs" / "deployment.md"
SECTION = "### A lab and a recipient, from nothing to a running agent"
HOST_PATHS = ("/etc/labrelay", "/var/lib/labrelay-agent", "/srv/labrelay")
RUNUSER = "runuser -u labrelay-agent -- /opt/labrelay/bin/labrelay"
BLOCK = re.compile(r"^<!-- walkthrough: (\w+) -->\n```sh\n(.*?)^```", flags=re.MULTILINE | re.DOTALL)


def walkthrough() -> list[tuple[str, str]]:
    """The section's (host, script) blocks, in order."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.index("\n## ", start)
    blocks = BLOCK.findall(text[start:end])
    assert len(blocks) >= 8, "docs/deployment.md: the walkthrough's blocks are marked <!-- walkthrough: HOST -->"
    return blocks


def for_test_machine(script: str, host: Path, url: str) -> str:
    """The doc's block with the changes the doc lists for a test machine, and nothing else."""
    lines = []
    for original in script.splitlines():
        if original.startswith(("systemctl ", "journalctl ")):
            continue
        line = original.replace(RUNUSER, "labrelay").replace("-o labrelay-agent -g labrelay-agent ", "")
        for path in HOST_PATHS:
            line = line.replace(path, f"{host}{path}")
        lines.append(line.replace("https://relay.example.fr", url))
    return "\n".join(lines) + "\n"


def run_block(script: str, cwd: Path, index: int, host: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABRELAY_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # as_agent is defined once per host in the doc; each block here is a new shell on that host
    prelude = 'set -euo pipefail\nas_agent() { labrelay "$@"; }\n'
    result = subprocess.run(
        ["bash", "-c", prelude + script], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, (
        f"walkthrough block {index} ({host}) exit {result.returncode}\n--- script\n{script}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    return result.stdout + result.stderr


def test_the_walkthrough_works_as_written(tmp_path: Path) -> None:
    carried = tmp_path / "carried"  # what travels between hosts, and the authority's machine
    carried.mkdir()
    blocks = walkthrough()
    first_host, first = blocks[0]
    assert first_host == "authority"
    assert "authority init" in first
    run_block(first, carried, 0, first_host)
    init_data_dir(tmp_path / "relay", carried / "authority.pub")
    relay = RelayServer(tmp_path / "relay")
    url = relay.start()
    output: dict[str, str] = {}
    try:
        for index, (host, script) in enumerate(blocks[1:], start=1):
            root = tmp_path / "hosts" / host
            root.mkdir(parents=True, exist_ok=True)
            output[f"{index}:{host}"] = run_block(for_test_machine(script, root, url), carried, index, host)
    finally:
        relay.stop()

    lab = tmp_path / "hosts" / "lab"
    sent = lab / "srv/labrelay/outbox/sent"
    assert (sent / "trial.csv").is_file(), sorted(p.name for p in (lab / "srv/labrelay/outbox").rglob("*"))
    report = json.loads((sent / "trial.csv.report.json").read_text())
    assert report["already_sent"] is False
    assert report["records"] == 200
    inbox = tmp_path / "hosts" / "recipient" / "srv/labrelay/inbox"
    delivered = list(inbox.glob("*.csv"))
    assert len(delivered) == 1, sorted(p.name for p in inbox.iterdir())
    with delivered[0].open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows, "CNAM's share of the trial batch is empty"
    assert {row["batch_id"] for row in rows} == {report["batch_id"]}
    assert report["transfers"]["cnam"], report
    entries = {name: json.loads((carried / f"{name}.entry.json").read_text()) for name in ("cnam", "lab-paris-01")}
    assert "100000009" in json.dumps(entries["cnam"])
    assert "750000002" in json.dumps(entries["lab-paris-01"])


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("systemctl enable --now labrelay-agent.service", None),
        (f'as_agent() {{ {RUNUSER} "$@"; }}', 'as_agent() { labrelay "$@"; }'),
        (
            "install -d -o labrelay-agent -g labrelay-agent -m 0700 /srv/labrelay",
            "install -d -m 0700 HOST/srv/labrelay",
        ),
        ("x --server https://relay.example.fr", "x --server URL"),
    ],
)
def test_only_the_listed_changes_are_made(line: str, expected: str | None) -> None:
    changed = for_test_machine(line, Path("HOST"), "URL").strip()
    assert changed == (expected or "")
