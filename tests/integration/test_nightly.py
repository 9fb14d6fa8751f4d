"""The scripts of docs/running-nightly.md, run as cron would run them, round after round, against a relay that is
killed and restarted at random meanwhile (the hour of the issue, compressed): every record ends up delivered exactly
once to each recipient the policy gives it, and every exit code says something a script can act on."""

from __future__ import annotations

import json
import os
import random  # noqa: TID251 - seeded: when to pull the plug, not a key
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from labrelay.domain.parties import Role
from labrelay.synthetic.generator import write_file
from tests.support.world import REPO, RelayServer, World, make_world

SCRIPTS = REPO / "docs" / "examples"
ROUNDS = int(os.environ.get("LABRELAY_NIGHTLY_ROUNDS", "10"))
FILES = 6


class Chaos:
    """Kills the relay (SIGKILL) at random moments and starts it again on the same port, until stopped: mostly at
    once (the client's retries ride that out), sometimes after longer than the client waits (the run fails, exit 1,
    and the next run must finish what it left)."""

    def __init__(self, world: World, relay_factory, seed: int) -> None:
        self.world = world
        self.factory = relay_factory  # stops every relay started here when the test ends
        self.port = int(world.url.rsplit(":", 1)[1])
        self.random = random.Random(seed)
        self.stop = threading.Event()
        self.restarts = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.random.uniform(1.5, 5.0)):
            self.world.relay.kill()
            long = self.random.random() < 0.4
            time.sleep(self.random.uniform(8.0, 12.0) if long else self.random.uniform(0.0, 1.5))
            self._start()
            self.restarts += 1

    def _start(self) -> None:
        relay = RelayServer(self.world.relay.data, ("--port", str(self.port)))
        self.factory.started.append(relay)
        relay.start()
        self.world.relay = relay

    def __enter__(self) -> Chaos:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        if not self.world.relay.running():
            self._start()


def run_script(name: str, env: dict[str, str]) -> int:
    full = {**os.environ, "LABRELAY": f"{sys.executable} -m labrelay", "LABRELAY_QUIET": "1", **env}
    full.pop("LABRELAY_DEBUG", None)
    proc = subprocess.run(
        ["bash", str(SCRIPTS / name)], env=full, capture_output=True, text=True, timeout=600, check=False
    )
    assert "Traceback" not in proc.stderr
    assert "internal error" not in proc.stderr, proc.stderr
    return proc.returncode


def logged(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_the_nightly_scripts_deliver_every_record_exactly_once_through_relay_restarts(
    tmp_path: Path, relay_factory
) -> None:
    world = make_world(tmp_path / "world", relay_factory)
    world.add("spf", Role.RECIPIENT)
    exports, inboxes = tmp_path / "exports", tmp_path / "inboxes"
    exports.mkdir()
    made = tmp_path / "made"
    made.mkdir()
    sources = []
    for i in range(FILES):  # the LIS's nightly exports, dropped over the rounds
        path = made / f"results-{i:02d}.csv"
        write_file(path, 300, seed=100 + i, today=date.today(), defects=0.02)  # noqa: DTZ011 - a calendar day
        sources.append(path)
    lab_env = {"LABRELAY_AS": str(world.party_dir("lab-paris-01")), "LABRELAY_SERVER": world.url}
    lab_env["EXPORTS"] = str(exports)
    codes: Counter[tuple[str, int]] = Counter()
    with Chaos(world, relay_factory, seed=16) as chaos:
        for round_ in range(ROUNDS):
            if round_ < FILES:
                shutil.copy(sources[round_], exports / sources[round_].name)
            if round_ % 4 == 3:  # an operator drops an export that was sent already
                shutil.copy(sources[0], exports / sources[0].name)
            codes["send", run_script("labrelay-send-exports.sh", lab_env)] += 1
            for name in ("cnam", "spf", "ars-11"):
                env = {"LABRELAY_AS": str(world.party_dir(name)), "LABRELAY_SERVER": world.url}
                env["INBOX"] = str(inboxes / name)
                codes[f"fetch {name}", run_script("labrelay-fetch.sh", env)] += 1
        assert chaos.restarts >= 2, "the relay was never restarted: the test proves nothing"
    # The relay stays up now: the next runs converge, as the next nights would.
    for _ in range(2):
        assert run_script("labrelay-send-exports.sh", lab_env) == 0
        for name in ("cnam", "spf", "ars-11"):
            env = {"LABRELAY_AS": str(world.party_dir(name)), "LABRELAY_SERVER": world.url}
            env["INBOX"] = str(inboxes / name)
            assert run_script("labrelay-fetch.sh", env) == 0

    # Every exit code means something a script can act on: 0, or 1 (try again) while the relay was down; and some
    # runs did fail, so the next ones had to finish what they left.
    assert {code for (_, code) in codes} <= {0, 1}, codes
    assert any(code == 1 for (_, code) in codes), codes
    for entry in logged(exports / "labrelay.jsonl") + [
        e for n in ("cnam", "spf") for e in logged(inboxes / n / "labrelay.jsonl")
    ]:
        if not entry["ok"]:  # a failed command (error), or a run that finished with some items left for the next
            problems = [entry["error"]] if "error" in entry else []
            problems += [*entry.get("stuck", []), *entry.get("failed", []), *entry.get("refused", [])]
            assert problems, entry
            assert {p["code"] for p in problems} <= {"unavailable", "busy", "storage-full", "conflict"}, entry
    assert sorted(p.name for p in (exports / "sent").iterdir()) == sorted(p.name for p in sources)
    assert not list((exports / "refused").iterdir())

    # Each source reached each recipient exactly once: one batch per source, every routed record in it.
    lab_batches = {}
    for record in (world.party_dir("lab-paris-01") / "batches").glob("*.json"):
        batches = json.loads(record.read_text())["batches"]
        assert len(batches) == 1, "a source was made into two batches"
        lab_batches[batches[0]["batch_id"]] = batches[0]["summary"]
    assert len(lab_batches) == FILES
    for name in ("cnam", "spf", "ars-11"):
        frames = [pl.read_csv(p, infer_schema=False) for p in (inboxes / name).glob("*.csv")]
        rows = pl.concat(frames, how="diagonal") if frames else pl.DataFrame({"batch_id": []})
        per_batch = dict(rows.group_by("batch_id").len().iter_rows())
        expected = {b: s["per_recipient"].get(name, 0) for b, s in lab_batches.items()}
        assert per_batch == {b: n for b, n in expected.items() if n}, name
        person = {"cnam": ["nir"], "spf": ["pseudonyme"], "ars-11": ["nom", "prenom", "date_naissance"]}[name]
        test = pl.struct(*person, "date_prelevement", "date_validation", "code_loinc")
        assert rows.select(test.is_duplicated().sum()).item() == 0, f"{name} received a record twice"
    assert world.stored() == []  # everything delivered, nothing left on the relay


@pytest.mark.parametrize(
    ("script", "folder"), [("labrelay-send-exports.sh", "EXPORTS"), ("labrelay-fetch.sh", "INBOX")]
)
def test_a_script_run_from_crons_path_says_labrelay_is_not_found(tmp_path: Path, script: str, folder: str) -> None:
    """cron's PATH is /usr/bin:/bin, where the installed labrelay is not: the script says so and exits 2 (set up
    wrong), instead of exit 127, a Python traceback from reading an empty document and blank lines in its log."""
    env = {
        "PATH": "/usr/bin:/bin",
        "LABRELAY_AS": str(tmp_path / "party"),
        "LABRELAY_SERVER": "http://127.0.0.1:9",
        folder: str(tmp_path),
    }
    proc = subprocess.run(["bash", str(SCRIPTS / script)], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "labrelay not found" in proc.stderr
    assert "set LABRELAY to its full path" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "labrelay.jsonl").exists()
