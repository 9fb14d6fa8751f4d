"""Shared fixtures: real relay processes on port 0, enrolled parties, the CLI as a subprocess, synthetic batches."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from labrelay.cli.process import RelayProcess
from labrelay.client.api import RelayClient
from labrelay.client.keystore import Authority, Party
from labrelay.client.policy import default_policy_text
from labrelay.clock import SystemClock
from labrelay.domain.names import AUTHORITY_KEYID
from labrelay.domain.parties import Role
from labrelay.runtime import init_data_dir
from labrelay.synthetic.generator import write_csv_file

VECTORS = Path(__file__).parent / "vectors"
REPO = Path(__file__).resolve().parents[1]


def load_vector(name: str) -> dict:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


# ------------------------------------------------------------------ CLI


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


def run_cli(
    *args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 180
) -> CliResult:
    """``labrelay ARGS`` in a child process, as an operator or a script would run it."""
    full_env = {**os.environ, "LABRELAY_QUIET": "1", **(env or {})}
    full_env.pop("LABRELAY_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "labrelay", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=timeout,
        check=False,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli(tmp_path: Path):
    def go(*args: str | Path, **kwargs) -> CliResult:
        kwargs.setdefault("cwd", tmp_path)
        return run_cli(*args, **kwargs)

    return go


# ------------------------------------------------------------------ relay processes


class RelayServer(RelayProcess):
    """``labrelay serve`` on a free port (labrelay.cli.process), with its log beside its data directory."""

    def __init__(self, data: Path, extra: tuple[str, ...] = ()) -> None:
        super().__init__(data, data.parent / f"{data.name}.log", extra)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def relay_factory(tmp_path: Path) -> Iterator:
    started: list[RelayServer] = []

    def make(data: Path, *extra: str) -> RelayServer:
        server = RelayServer(data, tuple(extra))
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


# ------------------------------------------------------------------ a world of parties


@dataclass
class World:
    root: Path
    authority: Authority
    relay: RelayServer
    parties: dict[str, Party] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.relay.url

    @property
    def pub(self) -> Path:
        return self.authority.path / "authority.pub"

    @property
    def auth_dir(self) -> Path:
        return self.authority.path

    @property
    def parties_dir(self) -> Path:
        return self.root / "parties"

    @property
    def payload_dir(self) -> Path:
        return self.relay.data / "payloads"

    def party_dir(self, name: str) -> Path:
        return self.parties[name].path

    def client(self, name: str) -> RelayClient:
        party = self.parties[name]
        return RelayClient(self.url, party.name, party.signing_key, SystemClock(), retries=0)

    def add(
        self,
        name: str,
        role: Role,
        region: str | None = None,
        *,
        enroll: bool = True,
        valid_for: timedelta = timedelta(days=365),
    ) -> Party:
        party = Party.create(self.parties_dir, name, role, region, self.pub, datetime.now(UTC))
        if enroll:
            envelope = self.authority.sign_entry(party, datetime.now(UTC), valid_for)
            party.save_entry(envelope)
            if role is Role.LAB:
                party.save_pseudonym_key(self.authority.pseudonym_key())
            with RelayClient(self.url, party.name, party.signing_key, SystemClock(), retries=0) as client:
                client.register_entry(envelope)
        self.parties[name] = party
        return party


def make_world(root: Path, relay_factory, *relay_args: str, settings: dict[str, str] | None = None) -> World:
    """An authority, a running relay (``settings`` overriding relay.toml lines), a lab, cnam, ars-11 and a DPO."""
    authority = Authority.init(root / "authority")
    init_data_dir(root / "relay", authority.path / "authority.pub")
    if settings:
        config = root / "relay" / "relay.toml"
        lines = [line for line in config.read_text().splitlines() if line.split(" = ")[0] not in settings]
        config.write_text("\n".join([*lines, *(f"{k} = {v}" for k, v in settings.items())]) + "\n")
    relay = relay_factory(root / "relay", *relay_args)
    world = World(root=root, authority=authority, relay=relay)
    with RelayClient(relay.url, AUTHORITY_KEYID, authority.key, SystemClock(), retries=0) as client:
        client.register_policy(authority.sign_policy(default_policy_text(), datetime.now(UTC)))
    world.add("lab-paris-01", Role.LAB)
    world.add("cnam", Role.RECIPIENT)
    world.add("ars-11", Role.RECIPIENT, "11")
    world.add("dpo", Role.DPO)  # the lab's DPO: the breach ledger of every routed send is sealed to it
    return world


@pytest.fixture
def world(tmp_path: Path, relay_factory) -> World:
    """An authority, a running relay, a lab and two recipients, all enrolled."""
    return make_world(tmp_path / "world", relay_factory)


@pytest.fixture
def batch(tmp_path: Path) -> Path:
    """A synthetic batch of 300 lab results (CSV template)."""
    path = tmp_path / "results.csv"
    write_csv_file(path, 300, seed=7, today=date.today())  # noqa: DTZ011 - a calendar day
    return path


def sent_ids(out: str) -> dict[str, str]:
    """recipient → transfer id, from ``labrelay send`` output (routed or --as-is)."""
    found = {}
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 4 and words[0] == "sent" and len(words[1]) == 36:
            name = words[words.index("to") + 1].rstrip(":")
            found[name] = words[1]
    return found


def positives_in(batch: Path) -> int:
    with batch.open(encoding="utf-8", newline="") as fh:
        return sum(1 for row in csv.DictReader(fh) if row["resultat"] == "POSITIF")


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
