"""The operator's use cases on a relay's data directory: create and upgrade it, run the worker, reap, check
retention, verify and export the audit log, run an admin command or manage console passkeys without the API.

Each opens what it needs and closes it again: ``opened`` for the database's stores alone (read-only checks, on a
running or a stopped relay), ``running`` for the relay wired as ``labrelay serve`` wires it (commands that act
through its services, audited as through the API). The CLI calls these; ``labrelay.runtime`` does the wiring.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from labrelay.clock import SystemClock
from labrelay.config import RelaySettings, check_database_url, load_settings, render_config
from labrelay.crypto.keys import SigningKey, VerifyKey, load_verify_key_file
from labrelay.domain.audit import Checkpoint, verify_chain
from labrelay.errors import LabrelayError, UsageError
from labrelay.ports import Clock
from labrelay.relay.audit_check import AuditCheck, AuditReport
from labrelay.relay.audit_export import link_doc
from labrelay.relay.control import CommandResult
from labrelay.relay.retention import RetentionReport
from labrelay.runtime import (
    Relay,
    engine_for,
    open_relay,
    payload_store_for,
    relay_signing_key,
    retention_check_for,
    worker_for,
)
from labrelay.storage import migrate
from labrelay.storage.keystore import FileKeyStore
from labrelay.storage.sql.stores import SqlStores


@contextmanager
def _engine(settings: RelaySettings) -> Iterator[Engine]:
    """The engine of the settings' database, disposed of on leaving the block."""
    engine = engine_for(settings)
    try:
        yield engine
    finally:
        engine.dispose()


@dataclass(frozen=True)
class Opened:
    """A data directory opened for an operator's command: its settings and its database's stores."""

    settings: RelaySettings
    sql: SqlStores


@contextmanager
def opened(data_dir: Path, *, require_head: bool = True) -> Iterator[Opened]:
    """The settings and stores of ``data_dir``, closed on leaving the block. ``require_head``: refuse a schema
    older or newer than this code's (off for reading the audit log, which any version's schema holds alike: an
    export from an old copy is evidence too)."""
    settings = load_settings(data_dir)
    with _engine(settings) as engine:
        if require_head:
            migrate.require_head(engine)
        yield Opened(settings, SqlStores.on(engine))


@contextmanager
def running(data_dir: Path, clock: Clock) -> Iterator[Relay]:
    """The relay of ``data_dir``, wired as ``labrelay serve`` wires it, closed on leaving the block."""
    relay = open_relay(load_settings(data_dir), clock)
    try:
        yield relay
    finally:
        relay.close()


def _write_private(path: Path, data: bytes) -> None:
    """A new file readable by its owner only (0600, whatever the umask)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def init_data_dir(data_dir: Path, authority_pub: Path, *, database_url: str = "") -> RelaySettings:
    """Create a relay data directory (mode 0700): settings (relay.toml, 0600), pinned authority key, database,
    payload directory. With ``database_url`` (PostgreSQL, never with a password), the schema is created there; the
    other scaled settings (S3, background worker) are edited in relay.toml afterwards (docs/deployment.md)."""
    check_database_url(database_url)  # before anything is written: a password never reaches relay.toml
    authority = load_verify_key_file(authority_pub)  # refuse anything that is not an Ed25519 public key
    if data_dir.exists() and any(data_dir.iterdir()):
        raise UsageError(f"{data_dir} exists and is not empty; refusing to initialise over it")
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    settings = RelaySettings(data_dir.resolve(), database_url=database_url)
    _write_private(settings.config_file, render_config(settings).encode("utf-8"))
    settings.authority_key_file.write_bytes(authority.to_pem())
    settings.payload_dir.mkdir(mode=0o700)
    settings.key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    relay_signing_key(settings)
    with _engine(settings) as engine:
        migrate.upgrade(engine)
    return settings


def upgrade_data_dir(data_dir: Path) -> str:
    """Bring the database's schema to this code's head; return it."""
    with _engine(load_settings(data_dir)) as engine:
        return migrate.upgrade(engine)


def policy_refusal(data_dir: Path) -> str | None:
    """Why no routing policy is in force on this relay (none registered, the latest one withdrawn, expired, or
    signed before policies carried an issue), or None."""
    with running(data_dir, SystemClock()) as relay:
        policies = relay.services.policies
        try:
            return policies.in_force_refusal(policies.latest())
        except LabrelayError as exc:
            return exc.message


def relay_verify_key(settings: RelaySettings) -> VerifyKey:
    """The public key of the relay's checkpoints, without touching the private one (for auditors)."""
    if settings.relay_pub_file.exists():
        return VerifyKey.from_pem(settings.relay_pub_file.read_bytes())
    if settings.relay_key_file.exists():
        return SigningKey.load(settings.relay_key_file).public
    raise UsageError(f"{settings.data_dir} has no relay key (relay.pub); start the relay once to create it")


def run_worker(data_dir: Path, clock: Clock, stop: threading.Event, *, tick: float = 0.5) -> None:
    """``labrelay worker``: campaign for leadership; while leading, run the reaper, detection and the checkpointer
    until ``stop`` is set."""
    with running(data_dir, clock) as relay:
        try:
            worker_for(relay, clock, tick=tick).run(stop)
        finally:
            relay.alerts.close()


def reap_once(data_dir: Path, clock: Clock) -> dict[str, Any]:
    """One reaper pass over a relay's data directory (for a stopped relay, or from cron)."""
    with running(data_dir, clock) as relay:
        result = relay.services.reaper.run_once()
    return {
        "expired": result.expired,
        "repaired": result.repaired,
        "keys_destroyed": len(result.keys_destroyed),
        "leftovers": len(result.leftovers),
    }


def console_passkeys(data_dir: Path, party: str, clock: Clock, *, remove: bool) -> list[str]:
    """The console passkeys bound to ``party`` (credential ids); with ``remove``, unbind them all and end the
    party's console sessions (a lost or stolen authenticator). Audited."""
    with running(data_dir, clock) as relay:
        console = relay.services.console
        assert console is not None  # noqa: S101 - open_relay always wires it
        return console.remove_passkeys(party, via="data") if remove else console.passkeys(party)


def admin_direct(data_dir: Path, envelope: Mapping[str, Any], clock: Clock) -> CommandResult:
    """Run a signed admin command on the data directory itself, for when the API is down. Same checks, same
    audit events, same effect on the next request as through the API."""
    with running(data_dir, clock) as relay:
        return relay.services.control.execute(envelope, caller=None, via="data")


def retention_report(data_dir: Path, clock: Clock) -> RetentionReport:
    """The retention check of a relay's data directory, running or stopped. Reads only."""
    with opened(data_dir) as db:
        keys = FileKeyStore(db.settings.key_dir, create=False)
        payloads = payload_store_for(db.settings, keys, db.sql.db)
        return retention_check_for(db.settings, db.sql.transfers, payloads, keys, clock).run()


def audit_verify(
    data_dir: Path, clock: Clock, held: Sequence[Checkpoint] = (), relay_key: VerifyKey | None = None
) -> AuditReport:
    """``labrelay audit verify``: the chain, the signed head and anchor, and checkpoints clients hold. Reads only.
    ``relay_key``: the relay's key as published out of band (default: DATA_DIR/relay.pub, which whoever controls
    the data directory controls too)."""
    with opened(data_dir) as db:
        key = relay_key or relay_verify_key(db.settings)
        return AuditCheck(log=db.sql.audit, relay_key=key, clock=clock).run(held)


def audit_export(data_dir: Path, after: int = 0) -> Iterator[dict[str, Any]]:
    """Every audit link after ``after``, as the NDJSON documents a SIEM receives."""
    with opened(data_dir, require_head=False) as db:
        for rec in db.sql.audit.links(after):
            yield link_doc(rec)


def audit_summary(data_dir: Path) -> dict[str, Any]:
    """Walk the audit chain of a relay's data directory (running or stopped): counts and the first bad link."""
    with opened(data_dir, require_head=False) as db:
        report = verify_chain(db.sql.audit.links())
        counts = db.sql.audit.count_events()
    return {
        "records": report.links,
        "chain_ok": report.ok,
        "head": report.head,
        "first_bad_seq": report.first_bad_seq,
        "problem": report.problem,
        "by_event": dict(sorted(counts.items())),
    }
