"""Relay processes on port 0, a world of enrolled parties on either deployment, the CLI in-process (``call_cli``) or
as a child process (``run_cli``), and the small readers of their output that many tests share."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from labrelay.cli.main import main as cli_main
from labrelay.client.api import RelayClient
from labrelay.client.keystore import Authority, Party
from labrelay.client.policy import default_policy_text
from labrelay.clock import SystemClock
from labrelay.config import load_settings
from labrelay.domain.names import AUTHORITY_KEYID, new_id
from labrelay.domain.parties import Role
from labrelay.operations import init_data_dir
from labrelay.ports import PayloadStore
from labrelay.runtime import engine_for, payload_store_for
from labrelay.storage.keystore import FileKeyStore
from labrelay.storage.sql.engine import Database
from tests.support.processes import RelayProcess
from tests.support.scaled import ReplicaSet

if TYPE_CHECKING:
    from tests.support.pgserver import PostgresServer
    from tests.support.s3server import S3Server

VECTORS = Path(__file__).parents[1] / "vectors"
CI = os.environ.get("LABRELAY_CI") == "1"
REPO = Path(__file__).resolve().parents[2]


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
    """``labrelay ARGS`` in a child process, as an operator or a script would run it: for the tests whose subject
    is the process boundary (exit codes, what reaches stdout and stderr, signals, the demo end to end)."""
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


# ------------------------------------------------------------------ relay processes


class RelayServer(RelayProcess):
    """``labrelay serve`` on a free port (tests.support.processes), with its log beside its data directory."""

    def __init__(self, data: Path, extra: tuple[str, ...] = ()) -> None:
        super().__init__(data, data.parent / f"{data.name}.log", extra)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class RelayFactory:
    """Starts relays for one test and stops them after it: one process on the embedded default, or a replica set
    (two replicas and a worker behind a balancer) when the data directory is configured for the scaled setup."""

    def __init__(self) -> None:
        self.started: list[RelayServer | ReplicaSet] = []

    def __call__(self, data: Path, *extra: str) -> RelayServer | ReplicaSet:
        server: RelayServer | ReplicaSet
        if 'background = "worker"' in (data / "relay.toml").read_text():
            server = ReplicaSet(data)
        else:
            server = RelayServer(data, tuple(extra))
        server.start()
        self.started.append(server)
        return server

    def close(self) -> None:
        for server in self.started:
            if isinstance(server, ReplicaSet):
                server.close()
            else:
                server.stop()


@dataclass(frozen=True)
class Scaled:
    """Where a scaled relay keeps its metadata and payloads."""

    database_url: str
    s3_endpoint: str
    s3_bucket: str
    postgres: PostgresServer
    s3: S3Server

    def copy_to(self, dest: Path) -> None:
        """Everything the relay keeps outside its data directory: a pg_dump and every object of the bucket."""
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "database.sql").write_bytes(self.postgres.dump(self.database_url))
        client = self.s3.client()
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.s3_bucket):
                for obj in page.get("Contents", []):
                    body = client.get_object(Bucket=self.s3_bucket, Key=obj["Key"])["Body"].read()
                    (dest / obj["Key"].replace("/", "__")).write_bytes(body)
        finally:
            client.close()

    def settings(self) -> dict[str, str]:
        return {
            "database_url": f'"{self.database_url}"',
            "payload_store": '"s3"',
            "s3_endpoint": f'"{self.s3_endpoint}"',
            "s3_bucket": f'"{self.s3_bucket}"',
            "background": '"worker"',
            "reaper_interval": '"2s"',
            "checkpoint_interval": '"2s"',
        }


def scaled_backing(request: pytest.FixtureRequest) -> Scaled:
    postgres = request.getfixturevalue("postgres")
    s3 = request.getfixturevalue("s3_server")
    s3.start()  # a fault test may have left the session's server stopped
    return Scaled(postgres.create_database(migrated=True), s3.endpoint, s3.create_bucket(), postgres, s3)


# ------------------------------------------------------------------ a world of parties


@dataclass
class World:
    root: Path
    authority: Authority
    relay: RelayServer | ReplicaSet
    parties: dict[str, Party] = field(default_factory=dict)
    scaled: Scaled | None = None

    def db(self, query: str, **params: object) -> list[tuple]:
        """Run SQL on the relay's database, whichever it is (SQLite or PostgreSQL): what a test reads behind the
        relay's back, or what an attacker with database access changes. Named parameters (``:name``)."""
        engine = engine_for(load_settings(self.relay.data))
        try:
            with engine.begin() as conn:
                result = conn.execute(text(query), params)
                return [tuple(r) for r in result] if result.returns_rows else []
        finally:
            engine.dispose()

    def flip_stored_byte(self, transfer_id: str) -> None:
        """Change one byte of a stored payload behind the relay's back (in the file, or in an S3 chunk object)."""
        if self.scaled is None:
            stored = self.relay.data / "payloads" / f"{transfer_id}.payload"
            raw = bytearray(stored.read_bytes())
            raw[len(raw) // 2] ^= 0x01
            stored.write_bytes(bytes(raw))
            return
        client = self.scaled.s3.client()
        try:
            listed = client.list_objects_v2(Bucket=self.scaled.s3_bucket, Prefix=f"parts/{transfer_id}/")
            key = next(o["Key"] for o in listed["Contents"] if not o["Key"].endswith("/header"))
            raw = bytearray(client.get_object(Bucket=self.scaled.s3_bucket, Key=key)["Body"].read())
            raw[len(raw) // 2] ^= 0x01
            client.put_object(Bucket=self.scaled.s3_bucket, Key=key, Body=bytes(raw))
        finally:
            client.close()

    def stored(self) -> list[str]:
        """Transfer ids with bytes in the relay's payload store (a directory, or the S3 bucket)."""
        settings = load_settings(self.relay.data)
        engine = engine_for(settings)
        try:
            keys = FileKeyStore(settings.key_dir, create=False)
            return list(payload_store_for(settings, keys, Database(engine)).ids())
        finally:
            engine.dispose()

    def copy_relay(self, dest: Path) -> Path:
        """A complete copy of the relay, as a thief would take it: its data directory, its logs, and at scale the
        database dump and every object of the bucket."""
        shutil.copytree(self.relay.data, dest / "data")
        for i, log in enumerate(p for p in self.root.glob("*.log")):
            shutil.copy(log, dest / f"{i}-{log.name}")
        if self.scaled is not None:
            self.scaled.copy_to(dest / "outside")
        return dest

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
        classic: bool = False,
    ) -> Party:
        party = Party.create(self.parties_dir, name, role, region, self.pub, datetime.now(UTC), classic=classic)
        if enroll:
            envelope = self.authority.sign_entry(party, datetime.now(UTC), valid_for)
            party.save_entry(envelope)
            if role is Role.LAB:
                party.save_pseudonym_key(self.authority.pseudonym_key())
            with RelayClient(self.url, party.name, party.signing_key, SystemClock(), retries=0) as client:
                client.register_entry(envelope)
        self.parties[name] = party
        return party

    def allow_classic_keys(self) -> None:
        """Publish the shipped policy without ``require_pq`` (a new version and issue): classic X25519 keys may then
        be enrolled, sealed to and fetched, as for interoperability with tools older than age 1.3."""
        text = default_policy_text().replace("require_pq = true", "require_pq = false")
        text = text.replace('version = "fr-covid-2026.3"', 'version = "fr-covid-2026.3-classic"')
        with RelayClient(self.url, AUTHORITY_KEYID, self.authority.key, SystemClock(), retries=0) as client:
            client.register_policy(self.authority.sign_policy(text, datetime.now(UTC)))


def manifest_payload(sender: Party, recipient: Party, policy_version: str | None, **over: object) -> dict[str, Any]:
    """A manifest's payload written by hand, for a test that plays a client skipping its own checks (or an older
    one): whatever the relay must refuse on its own. Sign it with ``sender.sign``."""
    now = datetime.now(UTC)
    payload: dict[str, Any] = {
        "type": "transfer-manifest",
        "v": 1,
        "transfer_id": new_id(),
        "batch_id": new_id(),
        "sender": sender.name,
        "recipient": recipient.name,
        "recipient_key": recipient.age_recipient,
        "size": 4096,
        "sha256": "0" * 64,
        "record_count": 1,
        "media_type": "text/csv",
        "created": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "deadline": (now + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "policy_version": policy_version,
    }
    return {**payload, **over}


def write_settings(data: Path, settings: dict[str, str]) -> None:
    """Replace lines of a relay's relay.toml (values written as TOML wants them: ``'"30s"'``, ``"5"``)."""
    config = data / "relay.toml"
    lines = [line for line in config.read_text().splitlines() if line.split(" = ")[0] not in settings]
    config.write_text("\n".join([*lines, *(f"{k} = {v}" for k, v in settings.items())]) + "\n")


def make_world(
    root: Path,
    relay_factory,
    *relay_args: str,
    settings: dict[str, str] | None = None,
    scaled: Scaled | None = None,
    existing: tuple[Path, Authority] | None = None,
) -> World:
    """An authority, a running relay (``settings`` overriding relay.toml lines), a lab, cnam, ars-11 and a DPO.
    With ``scaled``: PostgreSQL, S3, two replicas and a worker instead of the embedded default. With ``existing``:
    a data directory and authority already made (ROOT/relay)."""
    authority = existing[1] if existing is not None else Authority.init(root / "authority")
    if scaled is not None:
        settings = {**scaled.settings(), **(settings or {})}
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "labrelay-test")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "labrelay-test")
    if existing is None:
        database_url = scaled.database_url if scaled else ""
        init_data_dir(root / "relay", authority.path / "authority.pub", database_url=database_url)
    if settings:
        write_settings(root / "relay", settings)
    relay = relay_factory(root / "relay", *relay_args)
    world = World(root=root, authority=authority, relay=relay, scaled=scaled)
    with RelayClient(relay.url, AUTHORITY_KEYID, authority.key, SystemClock(), retries=0) as client:
        client.register_policy(authority.sign_policy(default_policy_text(), datetime.now(UTC)))
    world.add("lab-paris-01", Role.LAB)
    world.add("cnam", Role.RECIPIENT)
    world.add("ars-11", Role.RECIPIENT, "11")
    world.add("dpo", Role.DPO)  # the lab's DPO: the breach ledger of every routed send is sealed to it
    return world


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


def relay_store(world: World) -> PayloadStore:
    """The relay's own payload store, keys included: what an attacker who owns the relay (A2) can use."""
    settings = load_settings(world.relay.data)
    url = settings.database_url
    # The store outlives this call: on PostgreSQL, no pooled connection that would be left open when it is dropped.
    engine = create_engine(url, poolclass=NullPool) if url.startswith("postgresql") else engine_for(settings)
    return payload_store_for(settings, FileKeyStore(settings.key_dir), Database(engine))


def swap_one_byte(world: World, transfer_id: str) -> None:
    """An attacker who owns the relay, keys included, replaces a payload with one byte changed, wrapped properly:
    the relay serves it; only the recipient's check against the sender's signed hash can tell."""
    store = relay_store(world)
    data = bytearray(b"".join(store.open(transfer_id)))
    data[len(data) // 2] ^= 0x01
    store.delete(transfer_id)
    store.begin(transfer_id, datetime.now(UTC) + timedelta(days=1))
    writer = store.writer(transfer_id, 0)
    writer.write(bytes(data))
    writer.commit()
    store.publish(transfer_id)


_CLI_LOCK = threading.Lock()


def call_cli(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> CliResult:
    """``labrelay ARGS`` in this process (``labrelay.cli.main.main(argv)``), its output captured: for tests whose
    subject is what a command does, not the process around it (about a second saved per command). ``--quiet`` as
    ``run_cli`` sets LABRELAY_QUIET; ``env``, for the tests of environment variables, is set around the call only.
    One call at a time: the CLI's options and stdout are the process's."""
    out, err = io.StringIO(), io.StringIO()
    code: int = 0
    saved = dict(os.environ)
    with _CLI_LOCK, contextlib.chdir(cwd or Path.cwd()), redirect_stdout(out), redirect_stderr(err):
        os.environ.pop("LABRELAY_DEBUG", None)
        os.environ.update(env or {})
        try:
            cli_main(["--quiet", *map(str, args)])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            os.environ.clear()
            os.environ.update(saved)
    return CliResult(code, out.getvalue(), err.getvalue())
